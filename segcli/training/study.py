"""A `segcli tune` study in Optuna's RDB storage: opening it, its sampler and pruner, killed trials, counting.

- **Storage.** `<output-dir>/tune/<study>/study.db` (SQLite) unless `--storage` names another database. Running
  the same command again continues the study; several processes, on one machine or many, share it.
- **Killed trials.** The process running a trial holds a lock file for it. Before each trial a process fails the
  RUNNING trials of its own machine whose lock it can take (their process died), and Optuna's heartbeat fails
  those of other machines once silent for `HEARTBEAT_GRACE` seconds. Each is retried as a new trial with the
  same parameters (the next number, a new folder, trained from the start); the dead trial's folder is left as
  it was. A trial stopped by Ctrl-C is retried the same way when the command runs again.
- **Sampling.** TPE whose random draws depend on the experiment's seed and the trial's number only: a process
  alone repeats a study exactly, and processes sharing a study never draw the same points.
"""

from __future__ import annotations

import logging
import math
import socket
import time
import warnings
from typing import Any

import numpy as np
import optuna
from filelock import FileLock, Timeout
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from segcli.artifacts.folders import TuneDir
from segcli.errors import ConfigError
from segcli.training.tune_results import TuneRecord

PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_SECONDS = 60
"""A running trial records a heartbeat in the storage this often (Optuna's heartbeat)."""
HEARTBEAT_GRACE = 180
"""A RUNNING trial of another machine silent for this long is failed and retried."""
OPEN_ATTEMPTS = 4
"""Opening the storage is tried this often when processes started together race to create its tables."""
MAX_ATTEMPTS = 3
"""A trial killed again and again (out of memory every time) is run at most this often."""


class TrialSeededTpe(optuna.samplers.BaseSampler):
    """Optuna's TPE, made anew for each trial with a seed from the experiment's seed and the trial's number."""

    def __init__(self, seed: int):
        self.seed = seed
        self._tpe = self._for_trial(0)

    def _for_trial(self, number: int) -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0]))

    def before_trial(self, study, trial) -> None:
        self._tpe = self._for_trial(trial.number)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


def make_pruner(kind: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


MEDIAN_STARTUP_TRIALS = 3
"""Completed trials before the median rule prunes: a median of fewer says little."""


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a dead trial's parameters as a new trial (it gets the next number), MAX_ATTEMPTS times at most."""
    attempt = int(trial.user_attrs.get("attempt", 1))
    if attempt < MAX_ATTEMPTS:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "attempt": attempt + 1})


def open_study(spec, record: TuneRecord) -> optuna.Study:
    """Create the study or load it; one with another experiment, search block or metric is refused."""
    optuna.logging.set_verbosity(logging.ERROR)  # segcli reports every trial itself
    engine = {"connect_args": {"timeout": 60}} if spec.storage.startswith("sqlite") else {}
    if spec.storage.startswith("sqlite") and spec.options.storage is None:
        spec.folder.mkdir(parents=True, exist_ok=True)
    for attempt in range(OPEN_ATTEMPTS):
        try:
            study = _create_or_load(spec, engine)
            break
        except ImportError as exc:
            raise ConfigError(f"--storage {record.storage}: {exc.__cause__ or exc}; install the database's Python "
                              "driver and name it in the URL (postgresql+psycopg2:// with psycopg2-binary, "
                              "mysql+pymysql:// with PyMySQL)") from None  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's URL, connection and permission errors
            if not type(exc).__module__.startswith("sqlalchemy"):
                raise
            # Processes started together race to create the tables (SQLite: "table ... already exists",
            # "database is locked"): the next attempt finds them made.
            if not isinstance(exc, (OperationalError, IntegrityError)) or attempt == OPEN_ATTEMPTS - 1:
                raise ConfigError(f"--storage {record.storage}: cannot open the study "
                                  f"({str(exc).splitlines()[0]})") from None  # fmt: skip
            time.sleep(1 + attempt)
    stored = study.user_attrs.get("segcli")
    if stored is None and not study.trials:
        study.set_user_attr("segcli", record.identity())
    elif stored != record.identity():
        raise ConfigError(
            f"study {spec.study_name} in {record.storage} was made for another experiment, search block or metric "
            f"({_difference(stored, record.identity())}); continue it with the same ones, or start another study "
            "with --study NAME"
        )
    return study


def _create_or_load(spec, engine: dict[str, Any]) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # the heartbeat
        storage = optuna.storages.RDBStorage(
            spec.storage, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=HEARTBEAT_GRACE,
            heartbeat_stale_trial_callback=retry_trial,
        )  # fmt: skip
        return optuna.create_study(
            study_name=spec.study_name, storage=storage, sampler=TrialSeededTpe(spec.seed),
            pruner=make_pruner(spec.options.pruner, spec.max_epochs), direction=spec.direction, load_if_exists=True,
        )  # fmt: skip


def _difference(stored: Any, now: dict[str, Any]) -> str:
    if not isinstance(stored, dict):
        return "it was not made by segcli tune"
    keys = sorted(key for key in set(stored) | set(now) if stored.get(key) != now.get(key))
    return "differs in " + ", ".join(keys)


def recover_dead_trials(study: optuna.Study, tune_dir: TuneDir) -> None:
    """Fail and retry the RUNNING trials whose process died: on this machine by their lock, elsewhere by
    Optuna's heartbeat."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("host") != host:
            continue
        lock = FileLock(tune_dir.lock(trial.number), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue  # its process is alive
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, UpdateFinishedTrialError):
            continue  # another process failed it first, and retried it
        finally:
            lock.release()
            tune_dir.lock(trial.number).unlink(missing_ok=True)
        retry_trial(study, trial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def study_complete(study: optuna.Study, trials: int | None) -> bool:
    """The study has its N trials: completed or pruned, or running now (and none queued for a retry)."""
    if trials is None:
        return False
    counts = _counts(study)
    return (
        not counts[TrialState.WAITING]
        and counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING] >= trials
    )


def importances(study: optuna.Study) -> dict[str, float] | None:
    """Optuna's parameter importances over the completed trials; None while they cannot be computed yet."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) < 2 or len({tuple(sorted(t.params.items())) for t in complete}) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return None
    return {key: float(value) for key, value in values.items() if math.isfinite(value)}
