"""What `segcli train` prints when training ends: a run's summary and per-class scores, a k-fold run's tables."""

from __future__ import annotations

import typer

from segcli.cli.common import EXIT_INTERRUPTED, duration, fmt, stdout_console


def report_run(result, class_names: list[str]) -> None:
    """A finished, already finished or stopped run, on the first process only; exit 130 when stopped."""
    if not result.primary:
        return
    if result.finished_before:
        stdout_console().print(
            f"run {result.run_name} already finished ({result.epochs_run} epochs); nothing to resume "
            f"(raise --max-epochs to train it further). Checkpoints: {result.run_dir}"
        )
        return
    print_run_summary(result, class_names)
    if result.interrupted:
        typer.echo(f"stopped at your request after epoch {result.epochs_run}; continue with --resume", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)


def print_run_summary(result, class_names: list[str]) -> None:
    """The run's table (epochs, best scores, averages, time, files, trackers), notes, and its per-class scores."""
    from rich.table import Table

    console = stdout_console()
    best = result.best_metrics
    table = Table(title=f"run {result.run_name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("epochs run", f"{result.epochs_run}" + (" (early stop)" if result.stopped_early else ""))
    if result.resumed_from is not None:
        table.add_row("resumed", f"after epoch {result.resumed_after}, from {result.resumed_from}")
    table.add_row("best epoch", "-" if result.best_epoch is None else str(result.best_epoch))
    table.add_row("best val/mIoU", fmt(best.get("val/mIoU")))
    table.add_row("best val/mDCC", fmt(best.get("val/mDCC")))
    if "val_ema/mIoU" in best:
        table.add_row("EMA val/mIoU (best epoch)", fmt(best.get("val_ema/mIoU")))
    first, last = result.average_epochs or (None, None)
    if result.average_metrics:
        span = "" if first is None else f" (epochs {first}-{last})" if first < last else f" (epoch {last})"
        table.add_row("average_model val/mIoU", fmt(result.average_metrics.get("val_avg/mIoU")) + span)
    table.add_row("parameters", f"{result.parameters:,}")
    table.add_row("time", duration(result.seconds))
    for name, path in result.checkpoints.items():
        table.add_row(name, str(path))
    if result.report_files:
        table.add_row("report", ", ".join(path.name for path in result.report_files))
    for label, where in result.trackers.items():
        table.add_row(label, where)
    console.print(table)
    if first is not None and first != result.average_start:
        console.print(
            f"note: average_model.pth averages epochs {first}-{last}: averaging had begun at epoch {first}, before "
            f"the run was extended; trained at once, the run would average from epoch {result.average_start} "
            "(`average.start_epoch`), so the two averages differ"
        )
    if result.wandb_mode == "offline" and result.wandb_dir:
        console.print(f"the W&B run is offline; upload it with: wandb sync {result.wandb_dir}")
    if best:
        _print_per_class(console, best, class_names, f"per class, best epoch ({result.best_epoch})")


def _print_per_class(console, scores: dict, class_names: list[str], title: str) -> None:
    from rich.table import Table

    absent = any(scores.get(f"val/IoU/{name}") != scores.get(f"val/IoU/{name}") for name in class_names)
    per_class = Table(title=title, caption="-: absent from targets and predictions (left out of the means)"
                      if absent else None)  # fmt: skip
    per_class.add_column("class")
    per_class.add_column("IoU", justify="right")
    per_class.add_column("Dice", justify="right")
    for name in class_names:
        per_class.add_row(name, fmt(scores.get(f"val/IoU/{name}")), fmt(scores.get(f"val/Dice/{name}")))
    console.print(per_class)


def print_folds(result, class_names: list[str]) -> None:
    """Each fold's best scores, their mean ± std, and per class over the folds."""
    from rich.table import Table

    if result.stopped is not None:  # Ctrl-C: the stopped fold's summary and what a single run says (exit 130)
        report_run(result.stopped, class_names)
    console = stdout_console()
    table = Table(title=f"k-fold {result.run_name}: best validation scores per fold")
    for column in ("fold", "run", "val images", "best val/mIoU", "best val/mDCC", "best epoch"):
        table.add_column(column)
    for fold in result.folds:
        table.add_row(str(fold.index), fold.run_name, str(fold.val_images), fmt(fold.metrics.get("val/mIoU")),
                      fmt(fold.metrics.get("val/mDCC")), str(fold.best_epoch or "-"))  # fmt: skip
    table.add_section()
    spread = {key: "{} ± {}".format(*map(fmt, result.summary[key])) for key in ("val/mIoU", "val/mDCC")}
    table.add_row("mean ± std", "", "", spread["val/mIoU"], spread["val/mDCC"], "")
    console.print(table)
    per_class = Table(title="per class over the folds (mean ± std of the best epochs)")
    for column in ("class", "IoU", "Dice"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name in class_names:
        cells = []
        for kind in ("IoU", "Dice"):
            mean, std = result.summary[f"val/{kind}/{name}"]
            cells.append(f"{fmt(mean)} ± {fmt(std)}")
        per_class.add_row(name, *cells)
    console.print(per_class)
    console.print(f"folds, their split and this summary: {result.folder}")
