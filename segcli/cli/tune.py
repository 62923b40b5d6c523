"""`segcli tune`: check the search, run the study's trials (in this process or N workers), print the summary."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from segcli.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_PROBLEMS,
    ClassesOpt,
    ConfigOpt,
    DatasetOpt,
    OfflineOpt,
    TrackerOpt,
    duration,
    epoch_line,
    fmt,
    parse_duration,
    stdout_console,
    tracker_override,
)

DEFAULT_TRIALS = 20


def tune(
    config: ConfigOpt,
    experiment: Annotated[str, typer.Option("--experiment", "-e", metavar="NAME", help="Experiment to tune.")],
    dataset: DatasetOpt = None,
    classes: ClassesOpt = None,
    trials: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            metavar="N",
            help=f"Trials the study ends with (completed or pruned; default {DEFAULT_TRIALS} unless --time is given).",
        ),
    ] = None,  # fmt: skip
    time_: Annotated[
        Optional[str],
        typer.Option("--time", metavar="DURATION", help="Start no trial after this long, e.g. 2h, 90m, 1h30m."),
    ] = None,
    storage: Annotated[
        Optional[str],
        typer.Option(
            metavar="URL",
            help="The study's database (any SQLAlchemy URL Optuna accepts, e.g. "
            "postgresql+psycopg2://user:pass@host/db). Default: SQLite in the tune folder.",
        ),
    ] = None,  # fmt: skip
    study: Annotated[
        Optional[str], typer.Option(metavar="NAME", help="Study name (default: the run name); names its folder.")
    ] = None,
    pruner: Annotated[
        str, typer.Option(metavar="median|hyperband|none", help="Stop unpromising trials early (see README).")
    ] = "median",
    metric: Annotated[
        Optional[str], typer.Option(metavar="KEY", help="Val metric to optimise. Default: the experiment's monitor.")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, metavar="N", help="Trials at a time, one process and one GPU each (GPUs 0..N-1).")
    ] = 1,
    gpu: Annotated[
        Optional[int], typer.Option(min=0, metavar="N", help="Train every trial on cuda:N (one worker).")
    ] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even when a GPU is present.")] = False,
    output_dir: Annotated[
        Path, typer.Option(metavar="DIR", help="The study's folder is DIR/tune/<study>, its trials' runs inside.")
    ] = Path("."),
    tracker: TrackerOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """Search the experiment's `search:` block with Optuna: pruned trials, resumable, several workers.

    Each trial is an ordinary run; the study ends with tune_results.csv, best.yaml and pictures.
    """
    from segcli.config import env
    from segcli.training.study import open_study
    from segcli.training.tune import TuneOptions, prepare_tune
    from segcli.training.tune_results import TuneRecord
    from segcli.training.workers import worker_devices

    inputs = env.data_inputs(dataset, classes)
    seconds = parse_duration(time_, "--time")
    options = TuneOptions(
        config_file=config, experiment_name=experiment, dataset=inputs.dataset,
        class_names=inputs.class_names, output_dir=output_dir, study_name=study, storage=storage,
        trials=trials if trials is not None or seconds is not None else DEFAULT_TRIALS, seconds=seconds,
        pruner=pruner, metric=metric, force_cpu=cpu, gpu=gpu, offline=offline, trackers=tracker_override(tracker),
        progress=sys.stderr.isatty() and workers == 1,
    )  # fmt: skip
    devices = worker_devices(workers, force_cpu=cpu, gpu=gpu)
    spec = prepare_tune(options)
    open_study(spec, TuneRecord.from_spec(spec))  # a storage that cannot be opened fails here; made once for workers
    if len(devices) == 1:
        code = _work(spec, devices[0], "")
    else:
        from segcli.training.workers import run_workers

        labels = [f"[gpu {device}] " if device is not None else f"[worker {index + 1}] "
                  for index, device in enumerate(devices)]  # fmt: skip
        codes = run_workers(_worker, [(spec, device, label) for device, label in zip(devices, labels, strict=True)])
        code = max(codes, key=lambda value: (value == EXIT_INTERRUPTED, value != 0, value))
    _finish(spec, code)


# --- a worker: this process, or one of --workers N ---------------------------------------------------------


class TrialPrinter:
    """What a worker tells the user: each trial's start and end on stderr, and plain epoch lines off a
    terminal (or with several workers, whose progress bars would collide); `prefix` names the worker."""

    def __init__(self, prefix: str, plain_epochs: bool, metric: str):
        self.prefix, self.plain_epochs, self.metric = prefix, plain_epochs, metric

    def say(self, line: str) -> None:
        sys.stderr.write(f"{self.prefix}{line}\n")
        sys.stderr.flush()

    def trial_started(self, number: int, run: str, params: dict) -> None:
        values = ", ".join(f"{key}={_value(value)}" for key, value in params.items())
        self.say(f"trial {number} ({run}): {values}")

    def epoch_callback(self, number: int):
        if not self.plain_epochs:
            return None
        return lambda row, max_epochs: self.say(f"trial {number}: {epoch_line(row, max_epochs)}")

    def stop_requested(self) -> None:
        self.say("stopping after this epoch; run the same command again to continue the study (the trial is "
                  "retried); press Ctrl-C again to abort now")  # fmt: skip

    def trial_finished(self, row, error: str | None) -> None:
        if row.state == "skipped":
            return
        if error and "Traceback" in error:
            self.say(error.rstrip())
        detail = (f"best {self.metric} {fmt(row.best)} at epoch {row.best_epoch} of {row.epochs}"
                  if row.best is not None else "")  # fmt: skip
        timing = f", {duration(row.seconds)}" if row.seconds is not None else ""
        note = f" ({row.note})" if row.note and row.state != "pruned" else ""
        self.say(f"trial {row.number}: {row.state if row.state != 'pruned' else row.note}"
                  f"{': ' + detail if detail else ''}{timing}{note}")  # fmt: skip


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _work(spec, gpu: int | None, prefix: str) -> int:
    """Run trials in this process; the exit code: 130 stopped by Ctrl-C, 1 a trial failed, else 0."""
    from segcli.training.tune import MAX_FAILURES_IN_A_ROW, run_trials

    printer = TrialPrinter(prefix, plain_epochs=not spec.options.progress, metric=spec.metric)
    try:
        result = run_trials(spec, printer, gpu=gpu)
    except KeyboardInterrupt:
        printer.say("stopped; run the same command again to continue the study")
        return EXIT_INTERRUPTED
    if result.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
        printer.say(f"{MAX_FAILURES_IN_A_ROW} trials in a row failed (see above); stopping")
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_PROBLEMS if any(row.state == "failed" for row in result.rows) else 0


def _worker(spec, gpu: int | None, prefix: str) -> None:
    """One of --workers N, in a process of its own: the CLI's error boundary, then the exit code."""
    from segcli.config.env import apply_offline_switches
    from segcli.errors import SegcliError

    apply_offline_switches()
    try:
        code = _work(spec, gpu, prefix)
    except SegcliError as exc:
        sys.stderr.write(f"{prefix}error: {exc}\n")
        code = exc.exit_code
    sys.exit(code)


# --- the summary ---------------------------------------------------------------------------------------------


def _finish(spec, code: int) -> None:
    from segcli.training.tune import finish_study

    record, rows = finish_study(spec)
    print_summary(record, rows, spec.tune_dir)
    if code:
        raise typer.Exit(code)


def print_summary(record, rows, tune_dir) -> None:
    """The trials (the best 10 of a long study), the best one, and where the results are."""
    from rich.table import Table

    from segcli.training.tune_results import best_row

    console = stdout_console()
    best = best_row(rows, record.direction)
    shown = rows
    if len(rows) > 25:
        ranked = sorted((row for row in rows if row.best is not None), key=lambda row: row.best,
                        reverse=record.direction == "maximize")  # fmt: skip
        shown = sorted(ranked[:10], key=lambda row: row.number)
    table = Table(title=f"study {record.study}: {record.metric} ({record.direction}), pruner {record.pruner}"
                  + (f", the best 10 of {len(rows)} trials" if shown is not rows else ""))  # fmt: skip
    for column in ("trial", "state", *record.search, record.metric_column, "best epoch", "epochs", "time", "note"):
        # a narrow terminal wraps values rather than cutting them short
        table.add_column(column, justify="right" if column not in ("state", "note") else "left", overflow="fold",
                         min_width=len("complete") if column == "state" else None)  # fmt: skip
    for row in shown:
        mark = " *" if best is not None and row.number == best.number else ""
        params = [_value(row.params[key]) if key in row.params else "-" for key in record.search]
        table.add_row(f"{row.number}{mark}", row.state, *params, fmt(row.best), str(row.best_epoch or "-"),
                      str(row.epochs or "-"), duration(row.seconds) if row.seconds is not None else "-",
                      row.note)  # fmt: skip
    console.print(table)
    counts = {state: sum(row.state == state for row in rows) for state in ("complete", "pruned", "failed", "running")}
    epochs = sum(row.epochs or 0 for row in rows)
    console.print(", ".join(f"{count} {state}" for state, count in counts.items() if count) + f"; {epochs} epochs "
                  "trained in all")  # fmt: skip
    if best is None:
        console.print(f"no trial completed yet; results so far: {tune_dir.results_csv}")
        return
    console.print(f"best: trial {best.number} ({best.run}), {record.metric} {fmt(best.best)} at epoch "
                  f"{best.best_epoch}")  # fmt: skip
    console.print(f"train it: segcli train -c {tune_dir.best_yaml} -e {record.experiment}")
    pictures = [path.name for path in tune_dir.pictures() if path.is_file()]
    console.print(f"results: {tune_dir.results_csv}, {', '.join(pictures)}; trials' runs in {tune_dir.path}")
