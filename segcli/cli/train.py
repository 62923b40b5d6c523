"""`segcli train`: resolve one experiment and hand it to the training core."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from segcli.cli.options import ClassesOpt, ConfigOpt, DatasetOpt, ExperimentOpt
from segcli.cli.output import stdout_console

EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C stop


def train(
    config: ConfigOpt,
    experiment: ExperimentOpt,
    dataset: DatasetOpt = None,
    classes: ClassesOpt = None,
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
) -> None:
    """Train one experiment: dataset check, Lightning training, W&B logging, checkpoints."""
    from segcli import env
    from segcli.config.loader import load_experiment_file, resolve_experiment

    env.load_env_file()
    overrides = {key: value for key, value in (("max_epochs", max_epochs), ("gpu", gpu)) if value is not None}
    resolved = resolve_experiment(load_experiment_file(config), experiment, config, overrides)
    dataset_root = env.dataset_path(dataset)
    class_names = env.class_names(classes)

    from segcli.training.run import RunOptions
    from segcli.training.run import train as run_training

    result = run_training(
        resolved,
        RunOptions(
            dataset=dataset_root,
            class_names=class_names,
            run_name=f"{config.stem}-{experiment}",
            experiment_name=experiment,
            config_file=config,
            output_dir=output_dir,
            offline=offline,
            overwrite=overwrite,
            force_cpu=cpu,
            progress=sys.stderr.isatty(),
            resume=resume,
            resume_from=resume_from,
        ),
    )
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
        per_class = Table(title="best epoch, per class (NaN: class absent from targets and predictions)")
        per_class.add_column("class")
        per_class.add_column("IoU", justify="right")
        per_class.add_column("Dice", justify="right")
        for name in class_names:
            per_class.add_row(name, _fmt(best.get(f"val/IoU/{name}")), _fmt(best.get(f"val/Dice/{name}")))
        console.print(per_class)
