"""`segcli tune`: an Optuna study over an experiment's `search:` block, each trial an ordinary training run.

- **Checks first.** `prepare_tune` validates the experiment, the search block (every value a key can take),
  the metric and the data (the training checks, on the experiment and on every choice of a `model.*` key)
  before the study, its folder or its database exist.
- **A trial** is the experiment with the sampled keys set exactly as `--set` sets them (`resolve_experiment`),
  trained by `train()` in its own run folder `<study>-trialNNN` (Optuna's trial number, never reused) with a
  callback that reports the per-epoch val metric to the pruner. Its value is the best metric over its epochs.
- **Counting.** `--trials N` counts the study's completed and pruned trials, those running and those queued
  for a retry. A trial whose earlier-numbered live trials already make N (several processes asked at once) is
  skipped: it ends as failed with the note "skipped" before anything runs, so the study has exactly N.

The study itself (storage, sampler, pruner, killed trials) is `study.py`.
"""

from __future__ import annotations

import re
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from segcli.artifacts.folders import TuneDir
from segcli.config.distribution import SearchDistribution
from segcli.config.loader import load_experiment_file, resolve_experiment
from segcli.config.naming import run_name, trial_run_name
from segcli.config.schema import Experiment, ExperimentFile
from segcli.config.search import SEARCH, check_search
from segcli.errors import ConfigError, SegcliError
from segcli.models.metrics import logged_metric_keys
from segcli.training.callbacks.pruning import TrialPruning
from segcli.training.preflight import preflight
from segcli.training.run import RunOptions, train
from segcli.training.study import PRUNERS, importances, open_study, recover_dead_trials, retry_trial, study_complete
from segcli.training.trackers import require_extras
from segcli.training.tune_results import (
    TrialRow,
    TuneRecord,
    best_value,
    trial_row,
    write_results,
)


@dataclass(kw_only=True)
class TuneOptions:
    config_file: Path
    experiment_name: str
    dataset: Path
    class_names: list[str]
    output_dir: Path = Path(".")
    study_name: str | None = None
    """Default: the run name, `<config-file-stem>-<experiment>`."""
    storage: str | None = None
    """An SQLAlchemy URL Optuna accepts; default: SQLite in the tune folder."""
    trials: int | None = None
    seconds: float | None = None
    """Stop starting trials after this long (a trial started before still finishes)."""
    pruner: str = "median"
    metric: str | None = None
    """Default: the experiment's monitor."""
    force_cpu: bool = False
    gpu: int | None = None
    """One worker's GPU (cuda:N), overriding the experiment's `gpu`."""
    offline: bool = False
    progress: bool = False
    trackers: list[str] | None = None
    """Overrides the experiment's `tracker` (what `--tracker` gives); all trials of a study are one group."""

    def fixed_keys(self) -> dict[str, Any]:
        """The keys every trial sets besides its sampled values."""
        return {"tracker": self.trackers} if self.trackers else {}


@dataclass
class TuneSpec:
    """What every worker needs, checked: plain data, so worker processes can be handed it."""

    options: TuneOptions
    study_name: str
    storage: str
    folder: Path
    metric: str
    direction: str
    """`maximize` or `minimize`."""
    seed: int
    max_epochs: int

    @property
    def tune_dir(self) -> TuneDir:
        return TuneDir(self.folder)


@dataclass
class WorkerResult:
    """What one worker did: the rows of the trials it ran, in order."""

    rows: list[TrialRow] = field(default_factory=list)
    interrupted: bool = False
    failures_in_a_row: int = 0


MAX_FAILURES_IN_A_ROW = 3
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def prepare_tune(options: TuneOptions) -> TuneSpec:
    """Every check before anything is created (see the module docstring)."""
    path, name = options.config_file, options.experiment_name
    file = load_experiment_file(path)
    base = resolve_experiment(file, name, path, options.fixed_keys())
    require_extras(base.trackers)
    search = check_search(file, name, path)
    if base.devices is not None or base.num_nodes > 1:
        raise ConfigError(
            f"{path}: experiment '{name}' trains on several devices (devices/num_nodes); `segcli tune` runs one "
            "process per trial: remove them, and run several trials at once with --workers N"
        )
    if options.pruner not in PRUNERS:
        raise ConfigError(f"--pruner {options.pruner}: use one of {', '.join(PRUNERS)}")
    metric, direction = _metric(options.metric, base, options.class_names)
    study_name = options.study_name or run_name(path, name)
    if not STUDY_NAME.fullmatch(study_name):
        raise ConfigError(f"--study {study_name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    _preflight_choices(file, name, path, base, search, options)
    folder = options.output_dir / "tune" / study_name
    storage = options.storage or f"sqlite:///{(folder / TuneDir(folder).study_db.name).resolve()}"
    return TuneSpec(options=options, study_name=study_name, storage=storage, folder=folder, metric=metric,
                    direction=direction, seed=base.seed, max_epochs=base.max_epochs)  # fmt: skip


def _metric(option: str | None, base: Experiment, class_names: list[str]) -> tuple[str, str]:
    metric = option or base.monitor.metric
    valid = logged_metric_keys("val", class_names) + (logged_metric_keys("val_ema", class_names) if base.ema else [])
    if metric not in valid:
        from segcli.errors import did_you_mean

        raise ConfigError(f"--metric {metric}: it is never logged; {did_you_mean(metric, valid)}")
    mode = base.monitor.mode if metric == base.monitor.metric else ("min" if "loss" in metric else "max")
    return metric, "maximize" if mode == "max" else "minimize"


def _preflight_choices(file, name, path, base, search: dict[str, SearchDistribution], options: TuneOptions) -> None:
    """The training checks (data, model, sizes) on the experiment and on each choice of a `model.*` key: a
    misspelt encoder fails now, not in the fifth trial."""
    variants = [base] + [
        resolve_experiment(file, name, path, {key: value}, origin=SEARCH)
        for key, space in search.items()
        if key.startswith("model.") and space.choice is not None
        for value in space.choice
    ]
    for experiment in variants:
        preflight(experiment, dataset=options.dataset, class_names=options.class_names, experiment_name=name,
                  force_cpu=options.force_cpu)  # fmt: skip


class TrialSkipped(Exception):
    """The study already had its N trials when this one was asked for (several processes asked at once)."""


class TrialStopped(Exception):
    """Ctrl-C stopped the trial's run after an epoch; it is retried when the command runs again."""


class Objective:
    """One trial: sample, resolve the experiment as `--set` does, train, report the best metric."""

    def __init__(self, spec: TuneSpec, study: optuna.Study, events, gpu: int | None):
        self.spec, self.study, self.events, self.gpu = spec, study, events, gpu
        options = spec.options
        self.file: ExperimentFile = load_experiment_file(options.config_file)
        self.search = check_search(self.file, options.experiment_name, options.config_file)
        self.error: str | None = None
        """What failed in the last trial: a user error's message, or a bug's traceback."""
        self.stopped = False
        """Ctrl-C stopped the last trial."""

    def __call__(self, trial: optuna.Trial) -> float:
        self.error, self.stopped = None, False
        if self._surplus(trial.number):
            trial.set_user_attr("skipped", True)
            raise TrialSkipped()
        params = {key: suggest(trial, key, space) for key, space in self.search.items()}
        run = trial_run_name(self.spec.study_name, trial.number)
        lock = self.spec.tune_dir.lock(trial.number)
        try:
            with FileLock(lock, timeout=0):  # taken before `host` says whose trial it is
                trial.set_user_attr("run", run)
                trial.set_user_attr("host", socket.gethostname())
                return self._train(trial, params, run)
        except (TrialStopped, optuna.TrialPruned):
            raise
        except SegcliError as exc:
            self.error = str(exc)
            trial.set_user_attr("error", str(exc).splitlines()[0])
            raise
        except Exception as exc:  # a bug: the trial fails, its traceback is reported, the study goes on
            self.error = traceback.format_exc()
            trial.set_user_attr("error", f"unexpected error: {type(exc).__name__}: {exc}")
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: the run stops at once
            self._stop(trial)
            raise
        finally:
            lock.unlink(missing_ok=True)  # the trial is over: nobody looks for its lock any more

    def _stop(self, trial: optuna.Trial) -> None:
        self.stopped = True
        trial.set_user_attr("stopped", True)
        retry_trial(self.study, trial)

    def _surplus(self, number: int) -> bool:
        trials = self.spec.options.trials
        if trials is None:
            return False
        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        return sum(t.number < number for t in self.study.get_trials(deepcopy=False, states=live)) >= trials

    def _train(self, trial: optuna.Trial, params: dict[str, Any], run: str) -> float:
        options, spec = self.spec.options, self.spec
        gpu = self.gpu if self.gpu is not None else options.gpu
        overrides = {**params, **self.spec.options.fixed_keys(), **({"gpu": gpu} if gpu is not None else {})}
        experiment = resolve_experiment(self.file, options.experiment_name, options.config_file, overrides,
                                        origin=SEARCH)  # fmt: skip
        self.events.trial_started(trial.number, run, params)
        pruning = TrialPruning(trial, spec.metric)
        result = train(experiment, RunOptions(
            dataset=options.dataset, class_names=options.class_names, run_name=run,
            experiment_name=options.experiment_name, config_file=options.config_file, output_dir=options.output_dir,
            run_dir=spec.tune_dir.trial(run).path, offline=options.offline, force_cpu=options.force_cpu,
            group=spec.study_name, progress=options.progress, overrides=params,
            on_epoch=self.events.epoch_callback(trial.number), on_stop_request=self.events.stop_requested,
            extra_callbacks=[pruning],
        ))  # fmt: skip
        best, epoch = best_value(result.history, spec.metric, spec.direction)
        for key, value in (("best", best), ("best_epoch", epoch), ("epochs", len(result.history)),
                           ("seconds", round(result.seconds, 1)), ("pruned_after", pruning.pruned_after)):  # fmt: skip
            trial.set_user_attr(key, value)
        if result.interrupted:
            self._stop(trial)
            raise TrialStopped()
        if pruning.pruned_after is not None:
            raise optuna.TrialPruned()
        if best is None:
            raise ConfigError(f"run {run} logged no {spec.metric} (no epoch finished)")
        return best


def suggest(trial: optuna.Trial, key: str, space: SearchDistribution) -> Any:
    if space.choice is not None:
        return trial.suggest_categorical(key, space.choice)
    low, high = space.bounds
    if space.integer is not None:
        return trial.suggest_int(key, low, high)
    return trial.suggest_float(key, low, high, log=space.log_uniform is not None)


def run_trials(spec: TuneSpec, events, gpu: int | None = None) -> WorkerResult:
    """One worker: run trials until the study has its N, the time is up, Ctrl-C, or 3 failures in a row."""
    record = TuneRecord.from_spec(spec)
    study = open_study(spec, record)
    objective = Objective(spec, study, events, gpu)
    outcome = WorkerResult()
    deadline = None if spec.options.seconds is None else time.monotonic() + spec.options.seconds

    def finished(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        row = trial_row(trial, spec.metric, spec.study_name)
        outcome.rows.append(row)
        if row.state == "failed":
            outcome.failures_in_a_row += 1
        elif row.state in ("complete", "pruned"):
            outcome.failures_in_a_row = 0
        outcome.interrupted = outcome.interrupted or objective.stopped
        write_results(spec.tune_dir, record, study.get_trials(deepcopy=False))
        events.trial_finished(row, objective.error)

    while not outcome.interrupted and outcome.failures_in_a_row < MAX_FAILURES_IN_A_ROW:
        recover_dead_trials(study, spec.tune_dir)
        if study_complete(study, spec.options.trials) or (deadline is not None and time.monotonic() >= deadline):
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[finished], gc_after_trial=False)
    return outcome


def finish_study(spec: TuneSpec) -> tuple[TuneRecord, list[TrialRow]]:
    """The final results: the CSV, best.yaml, tune.json with the importances, and the pictures."""
    record = TuneRecord.from_spec(spec)
    study = open_study(spec, record)
    trials = study.get_trials(deepcopy=False)
    record.importances = importances(study)
    rows = write_results(spec.tune_dir, record, trials, pictures=True)
    return record, rows
