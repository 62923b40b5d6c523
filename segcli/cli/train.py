"""`segcli train`: resolve one experiment and hand it to the training core."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from segcli.cli.options import ClassesOpt, ConfigOpt, DatasetOpt, ExperimentsOpt
from segcli.cli.output import stdout_console

EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C stop


def train(
    config: ConfigOpt,
    experiment: ExperimentsOpt,
    dataset: DatasetOpt = None,
    classes: ClassesOpt = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set", help="Override any resolved key, type-checked: --set lr=3e-4 --set model.encoder_name=resnet50."
        ),
    ] = None,
    gpu: Annotated[
        Optional[int], typer.Option(min=0, help="Train on cuda:N (overrides the experiment's `gpu`).")
    ] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even when a GPU is present.")] = False,
    max_epochs: Annotated[Optional[int], typer.Option(min=1, help="Override the experiment's max_epochs.")] = None,
    output_dir: Annotated[
        Path, typer.Option(help="Checkpoints go to OUTPUT_DIR/checkpoints/<run>, W&B files to OUTPUT_DIR/wandb.")
    ] = Path("."),
    offline: Annotated[
        bool, typer.Option("--offline", help="Keep the W&B run offline (`wandb sync` it later).")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue this run from its latest saved state (W&B run included).")
    ] = False,
    resume_from: Annotated[
        Optional[Path], typer.Option("--resume-from", help="Continue from this state file (state_latest.ckpt).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the checkpoints of an earlier run of the same name.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved experiment and the model summary; do not train.")
    ] = False,
) -> None:
    """Train experiments: dataset check, Lightning training, W&B logging, checkpoints.

    Repeat --experiment, or pass `--experiment all`, to run several one after another and compare them.
    """
    from segcli import env
    from segcli.config.loader import (
        expand_experiments,
        load_experiment_file,
        override_suffix,
        parse_overrides,
        resolve_experiment,
    )

    env.load_env_file()
    file = load_experiment_file(config)
    names = expand_experiments(file, experiment, config)
    overrides = parse_overrides(set_ or [])
    options_overrides = {key: value for key, value in (("max_epochs", max_epochs), ("gpu", gpu)) if value is not None}
    resolved = {name: resolve_experiment(file, name, config, {**overrides, **options_overrides}) for name in names}
    run_names = {name: f"{config.stem}-{name}{override_suffix(overrides)}" for name in names}
    if dry_run:
        _print_dry_run(resolved, run_names)
        return
    dataset_root = env.dataset_path(dataset)
    class_names = env.class_names(classes)

    from segcli.training.run import RunOptions
    from segcli.training.run import train as run_training

    def run_one(name: str):
        return run_training(
            resolved[name],
            RunOptions(
                dataset=dataset_root,
                class_names=class_names,
                run_name=run_names[name],
                experiment_name=name,
                config_file=config,
                output_dir=output_dir,
                offline=offline,
                overwrite=overwrite,
                force_cpu=cpu,
                progress=sys.stderr.isatty(),
                resume=resume,
                resume_from=resume_from,
                overrides=overrides,
            ),
        )

    if len(names) == 1:
        _report(run_one(names[0]), class_names)
        return
    _sweep(names, run_one, class_names)


def _report(result, class_names: list[str]) -> None:
    if not result.primary:
        return
    if result.finished_before:
        stdout_console().print(
            f"run {result.run_name} already finished ({result.epochs_run} epochs); nothing to resume. "
            f"Checkpoints: {result.run_dir}",
            highlight=False,
        )
        return
    _print_summary(result, class_names)
    if result.interrupted:
        typer.echo(f"stopped at your request after epoch {result.epochs_run}; continue with --resume", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)


def _sweep(names: list[str], run_one, class_names: list[str]) -> None:
    """Run each experiment; a failure is reported and the others still run. Exit 1 if any failed."""
    import traceback

    from segcli.errors import SegcliError

    rows = []
    for name in names:
        typer.echo(f"== experiment {name} ({len(rows) + 1}/{len(names)})", err=True)
        try:
            result = run_one(name)
        except SegcliError as exc:
            typer.echo(f"error: experiment {name}: {exc}", err=True)
            rows.append((name, None, f"failed: {str(exc).splitlines()[0]}"))
            continue
        except Exception:  # a bug in one run must not cost the others; its traceback is printed
            traceback.print_exc()
            rows.append((name, None, "failed: unexpected error (traceback above)"))
            continue
        if not result.primary:
            return
        _report(result, class_names)
        rows.append((name, result, "ok"))
    table = Table(title="sweep: best validation scores")
    for column in ("experiment", "run", "best val/mIoU", "best val/mDCC", "best epoch", "time", "status"):
        table.add_column(column)
    for name, result, status in rows:
        if result is None:
            table.add_row(name, "-", "-", "-", "-", "-", status)
            continue
        best = result.best_metrics
        epoch = "-" if result.best_epoch is None else str(result.best_epoch + 1)
        cells = (_fmt(best.get("val/mIoU")), _fmt(best.get("val/mDCC")), epoch, f"{result.seconds:.0f} s")
        table.add_row(name, result.run_name, *cells, status)
    stdout_console().print(table)
    if any(status != "ok" for _, _, status in rows):
        raise typer.Exit(1)


def _print_dry_run(resolved: dict, run_names: dict[str, str]) -> None:
    import yaml

    from segcli.models.registry import create_model, size_multiple

    console = stdout_console()
    for name, experiment in resolved.items():
        console.print(f"# run {run_names[name]}", highlight=False)
        console.print(yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False), highlight=False)
        # No download for a summary: the architecture alone gives the parameter count and size multiple.
        model = create_model(experiment.model.model_copy(update={"encoder_weights": None}))
        parameters = sum(p.numel() for p in model.parameters())
        console.print(
            f"# model: {experiment.model.arch} / {experiment.model.encoder_name}, {parameters:,} parameters, "
            f"input height and width must be multiples of {size_multiple(model)}",
            highlight=False,
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def _print_summary(result, class_names: list[str]) -> None:
    console = stdout_console()
    best = result.best_metrics
    table = Table(title=f"run {result.run_name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("epochs run", f"{result.epochs_run}" + (" (early stop)" if result.stopped_early else ""))
    table.add_row("best epoch", "-" if result.best_epoch is None else str(result.best_epoch + 1))
    table.add_row("best val/mIoU", _fmt(best.get("val/mIoU")))
    table.add_row("best val/mDCC", _fmt(best.get("val/mDCC")))
    table.add_row("parameters", f"{result.parameters:,}")
    table.add_row("time", f"{result.seconds:.0f} s")
    for name, path in result.checkpoints.items():
        table.add_row(name, str(path))
    if result.wandb_dir:
        hint = f"  (offline: `wandb sync {result.wandb_dir}`)" if result.wandb_mode == "offline" else ""
        table.add_row("W&B run", result.wandb_dir + hint)
    console.print(table)
    if best:
        per_class = Table(title="per class, best epoch", caption="NaN: absent from targets and predictions")
        per_class.add_column("class")
        per_class.add_column("IoU", justify="right")
        per_class.add_column("Dice", justify="right")
        for name in class_names:
            per_class.add_row(name, _fmt(best.get(f"val/IoU/{name}")), _fmt(best.get(f"val/Dice/{name}")))
        console.print(per_class)
