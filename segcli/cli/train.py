"""`segcli train`: resolve experiments and hand them to the training core; print progress and summaries."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from segcli.cli.common import (
    EXIT_PROBLEMS,
    ClassesOpt,
    ConfigOpt,
    DatasetOpt,
    ExperimentsOpt,
    OfflineOpt,
    TrackerOpt,
    duration,
    epoch_line,
    fmt,
    stdout_console,
)
from segcli.cli.train_summaries import print_folds, report_run


def train(
    config: ConfigOpt,
    experiment: ExperimentsOpt,
    dataset: DatasetOpt = None,
    classes: ClassesOpt = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override any resolved key, type-checked: --set lr=3e-4 --set model.encoder_name=resnet50.",
        ),
    ] = None,
    gpu: Annotated[
        Optional[int], typer.Option(min=0, metavar="N", help="Train on cuda:N (overrides the experiment's `gpu`).")
    ] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even when a GPU is present.")] = False,
    max_epochs: Annotated[
        Optional[int],
        typer.Option(min=1, metavar="N", help="Override max_epochs (with --resume: extend a finished run to N)."),
    ] = None,
    output_dir: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="Checkpoints go to DIR/checkpoints/<run>, W&B files to DIR/wandb, the MLflow store to DIR/mlflow.db.",
        ),
    ] = Path("."),
    tracker: TrackerOpt = None,
    offline: OfflineOpt = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue this run from its latest saved state (W&B run included).")
    ] = False,
    resume_from: Annotated[
        Optional[Path],
        typer.Option("--resume-from", metavar="STATE", help="Continue from this state file (state_latest.ckpt)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the checkpoints of an earlier run of the same name.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Run every check train makes and print the plan (experiment, model, data)."),
    ] = False,
    folds: Annotated[
        Optional[int],
        typer.Option(min=2, metavar="K", help="k-fold cross-validation: K runs, each validated on one fold."),
    ] = None,
    folds_from: Annotated[
        str,
        typer.Option(metavar="all|train", help="Split train+val (all) or only train into the folds."),
    ] = "all",
    fold_groups: Annotated[
        Optional[str],
        typer.Option(
            metavar="REGEX",
            help="Keep images whose file names share this match in one fold, e.g. '^[^_]+' for CamVid's sequences.",
        ),
    ] = None,
) -> None:
    """Train experiments: dataset check, Lightning training, tracking (W&B, MLflow, TensorBoard), checkpoints and
    a run report.

    Repeat --experiment, or pass `--experiment all`, to run several one after another and compare them.
    """
    from segcli.cli.common import tracker_override
    from segcli.config import env
    from segcli.config.loader import expand_experiments, load_experiment_file, parse_overrides, resolve_experiment
    from segcli.config.naming import run_name
    from segcli.errors import ConfigError

    file = load_experiment_file(config)
    names = expand_experiments(file, experiment, config)
    overrides = parse_overrides(set_ or [])
    options = (("max_epochs", max_epochs), ("gpu", gpu), ("tracker", tracker_override(tracker)))
    options_overrides = {key: value for key, value in options if value is not None}
    resolved = {name: resolve_experiment(file, name, config, {**overrides, **options_overrides}) for name in names}
    run_names = {name: run_name(config, name, overrides) for name in names}
    if folds_from not in ("all", "train"):
        raise ConfigError(f"--folds-from {folds_from}: use `all` (train+val pooled) or `train`")
    if folds is not None and len(names) > 1:
        raise ConfigError("--folds trains one experiment K times; name one experiment")
    inputs = env.data_inputs(dataset, classes)
    dataset_root, class_names = inputs.dataset, inputs.class_names

    from segcli.training.run import RunOptions
    from segcli.training.run import train as run_training

    show_warnings = _DatasetWarnings()

    def options_for(name: str) -> RunOptions:
        return RunOptions(
            dataset=dataset_root, class_names=class_names, run_name=run_names[name], experiment_name=name,
            config_file=config, output_dir=output_dir, offline=offline, overwrite=overwrite, force_cpu=cpu,
            progress=sys.stderr.isatty(), resume=resume, resume_from=resume_from, overrides=overrides,
            on_epoch=None if sys.stderr.isatty() else _print_epoch, on_stop_request=_print_stop_request,
            on_dataset_checked=show_warnings,
        )  # fmt: skip

    if dry_run:
        _print_dry_run(resolved, options_for, show_warnings)
        return
    if folds is not None:
        from segcli.training.folds import train_folds

        name = names[0]
        result = train_folds(resolved[name], options_for(name), folds=folds, source=folds_from, groups=fold_groups)
        print_folds(result, class_names)
        return

    if len(names) == 1:
        report_run(run_training(resolved[names[0]], options_for(names[0])), class_names)
        return
    _sweep(names, lambda name: run_training(resolved[name], options_for(name)), class_names)


class _DatasetWarnings:
    """Shows the dataset check's warnings on stderr, each once per command (a sweep or k-fold checks again per run)."""

    def __init__(self) -> None:
        self.shown: set = set()

    def __call__(self, report) -> None:
        from segcli.data.check_report import format_problems

        new = [problem for problem in report.warnings if problem not in self.shown]
        if new:
            sys.stderr.write(f"the dataset check warns (training goes on):\n{format_problems(new)}\n")
            sys.stderr.flush()
            self.shown.update(new)


def _print_epoch(row: dict[str, float], max_epochs: int) -> None:
    """One plain line per epoch when stderr is not a terminal (nohup, a cluster's log file)."""
    sys.stderr.write(epoch_line(row, max_epochs) + "\n")
    sys.stderr.flush()


def _print_stop_request() -> None:
    sys.stderr.write("\nstopping after this epoch (its state will be saved); press Ctrl-C again to abort now\n")


def _sweep(names: list[str], run_one, class_names: list[str]) -> None:
    """Run each experiment; a failure is reported and the others still run. Exit 1 if any failed."""
    from rich.table import Table

    from segcli.devices import is_primary_process
    from segcli.training.sweep import run_sweep

    primary = is_primary_process()

    def started(name: str, index: int, total: int) -> None:
        if primary:
            typer.echo(f"== experiment {name} ({index + 1}/{total})", err=True)

    def failed(name: str, message: str) -> None:
        if primary:
            typer.echo(message.rstrip(), err=True)

    outcomes = run_sweep(names, run_one, on_start=started, on_failure=failed)
    if not primary:
        return
    for outcome in outcomes:
        if outcome.result is not None:
            report_run(outcome.result, class_names)
    table = Table(title="sweep: best validation scores")
    for column in ("experiment", "run", "best val/mIoU", "best val/mDCC", "best epoch", "time", "status"):
        table.add_column(column)
    for outcome in outcomes:
        result = outcome.result
        if result is None:
            table.add_row(outcome.name, "-", "-", "-", "-", "-", f"failed: {outcome.error}")
            continue
        best = result.best_metrics
        epoch = "-" if result.best_epoch is None else str(result.best_epoch)
        cells = (fmt(best.get("val/mIoU")), fmt(best.get("val/mDCC")), epoch, duration(result.seconds))
        table.add_row(outcome.name, result.run_name, *cells, "ok")
    stdout_console().print(table)
    if any(outcome.result is None for outcome in outcomes):
        raise typer.Exit(EXIT_PROBLEMS)


def _print_dry_run(resolved: dict, options_for, show_warnings) -> None:
    import yaml

    from segcli.training.preflight import dry_run

    console = stdout_console()
    for name, experiment in resolved.items():
        options = options_for(name)
        found = dry_run(experiment, dataset=options.dataset, class_names=options.class_names, experiment_name=name,
                        force_cpu=options.force_cpu)  # fmt: skip
        show_warnings(found.report)
        console.print(f"# run {options.run_name} -> {options.folder.path}")
        console.print(yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False))
        padding = (f"batches padded to multiples of {found.size_multiple} (reflected; the padding is never scored)"
                   if found.size_multiple > 1 else "any image size (the architecture pads by itself)")  # fmt: skip
        console.print(
            f"# model: {experiment.model.arch} / {experiment.model.encoder_name}, {found.parameters:,} parameters, "
            f"{padding}"
        )
        console.print(f"# normalisation: {found.normalization}")
        console.print(
            f"# data: {found.pairs['train']} train / {found.pairs['val']} val pairs, {found.data_type}, "
            f"{found.accelerator} ({found.devices}); every check passed"
        )
