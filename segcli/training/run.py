"""`train()`: the one training entry point. Commands and tests call it directly.

Everything that can be wrong with the user's input is checked (`preflight`) before the run folder or
a tracker's run exist, so a mistake never leaves a half-made run behind.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping

from segcli.artifacts.folders import RunDir, RunRecord
from segcli.config.schema import Experiment
from segcli.data.check_report import DatasetReport
from segcli.devices import is_primary_process
from segcli.errors import CheckpointError, ConfigError
from segcli.files import BackgroundWriter
from segcli.training.callbacks.averaging import EmaAverage, SwaAverage
from segcli.training.callbacks.checkpoints import BackgroundCheckpointIO, TrainingState, WeightFiles
from segcli.training.callbacks.history import EpochHistory
from segcli.training.callbacks.predictions import PredictionLogger, TrainSamples
from segcli.training.callbacks.progress import EpochProgressBar
from segcli.training.callbacks.report import RunRecordUpdates, RunReport
from segcli.training.callbacks.rng import RngState
from segcli.training.callbacks.stop import GracefulStop
from segcli.training.finish import TrainResult, finish_run
from segcli.training.loaders import make_datasets, make_loaders
from segcli.training.preflight import Plan, check_resume_state, preflight
from segcli.training.trackers import TrackedRun, Trackers, require_extras


@dataclass(kw_only=True)
class RunOptions:
    dataset: Path
    class_names: list[str]
    run_name: str
    experiment_name: str
    config_file: Path | None = None
    output_dir: Path = Path(".")
    run_dir: Path | None = None
    """Default: <output_dir>/checkpoints/<run_name> (k-fold runs live inside their k-fold folder)."""
    offline: bool = False
    """W&B: keep the run offline."""
    overwrite: bool = False
    force_cpu: bool = False
    group: str | None = None
    """The runs of one k-fold run: one W&B group, MLflow child runs of one parent run."""
    progress: bool = True
    """Lightning's progress bar (for a terminal)."""
    resume: bool = False
    """Continue this run from its state_latest.ckpt (also: extend a finished run to a larger max_epochs)."""
    resume_from: Path | None = None
    """Continue from this state file instead."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """`--set` values, logged with the run."""
    pairs: dict[str, list] | None = None
    """Explicit train/val pairs (k-fold) instead of the dataset's own split."""
    on_epoch: Callable[[dict[str, float], int], None] | None = None
    """Told after every epoch: the epoch's row and max_epochs (the CLI prints plain progress lines)."""
    on_stop_request: Callable[[], None] | None = None
    on_dataset_checked: Callable[[DatasetReport], None] | None = None
    """Told the dataset check's report once every check has passed, before training (the CLI shows its warnings)."""
    extra_callbacks: list = field(default_factory=list)
    """More Lightning callbacks (the benchmark's timers)."""

    @property
    def folder(self) -> RunDir:
        return RunDir(self.run_dir or self.output_dir / "checkpoints" / self.run_name)


def _resume_point(options: RunOptions, run_dir: RunDir, experiment: Experiment) -> tuple[Path | None, int, int]:
    """The state file to continue from, after checking it belongs to this model, and the epochs and optimizer steps
    it completed; (None, 0, 0) for a fresh run."""
    if options.resume_from is None and not options.resume:
        return None, 0, 0
    state = options.resume_from or run_dir.state
    if not state.is_file():
        if options.resume_from is None and run_dir.has_checkpoints():
            raise CheckpointError(
                f"no training state at {state} to resume from: the run stopped before it saved one (it is saved "
                f"when training stops and, before that, every {experiment.state_every_seconds:g} s: "
                "`state_every_seconds`; or the disk was full); start it again with --overwrite"
            )
        raise CheckpointError(
            f"no training state at {state} to resume from; start the run without --resume"
            + ("" if options.resume_from else f" (or check --output-dir: looked in {run_dir.path})")
        )
    return state, *check_resume_state(state, experiment)


def _prepare_run_dir(run_dir: RunDir, overwrite: bool, resuming: bool) -> None:
    if run_dir.has_checkpoints() and not (overwrite or resuming):
        resumable = "continue it with --resume, " if run_dir.state.is_file() else ""
        raise ConfigError(
            f"{run_dir.path} already holds checkpoints of this run; {resumable}replace it with --overwrite, "
            "or train somewhere else with --output-dir"
        )
    try:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        run_dir.remove_leftovers()
        if overwrite and not resuming:  # a later --resume must not pick up the replaced run's state
            for old in run_dir.run_files():
                old.unlink(missing_ok=True)
            shutil.rmtree(run_dir.tensorboard, ignore_errors=True)
        probe = run_dir.path / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"output directory {run_dir.path} is not writable ({exc.strerror}); pass --output-dir"
        ) from None


def quiet_libraries() -> None:
    """Lightning's start-up lines and known harmless deprecation notices bury the messages users need."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers which may be a bottleneck.*")
    warnings.filterwarnings("ignore", message=r".*defined a `validation_step` but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=r".*but have no logger configured.*")  # `tracker: none`


def build_trainer(plan: Plan, *, logger, callbacks: list, progress: bool, writer: BackgroundWriter, **overrides):
    """The Lightning Trainer `train` uses (the benchmark times this same one)."""
    exp = plan.experiment
    return pl.Trainer(
        **{
            "accelerator": plan.accelerator,
            "devices": plan.devices,
            "precision": exp.precision,
            "max_epochs": exp.max_epochs,
            "logger": logger,
            "callbacks": [*callbacks, *([EpochProgressBar()] if progress else [])],
            "plugins": [BackgroundCheckpointIO(writer)],
            "enable_checkpointing": True,  # segcli's own checkpoint callbacks (no ModelCheckpoint)
            "enable_model_summary": False,
            "enable_progress_bar": progress,
            "log_every_n_steps": max(1, min(50, len(plan.pairs["train"]) // exp.batch_size)),
            # Lightning's sanity pass guards a user's own validation_step; segcli's is its own, and preflight has
            # run the val transforms on every image size: the pass would only repeat part of the first validation.
            "num_sanity_val_steps": 0,
            "strategy": exp.strategy,
            "num_nodes": exp.num_nodes,
            "accumulate_grad_batches": exp.accumulate_grad_batches,
            "sync_batchnorm": exp.sync_batchnorm,
            "use_distributed_sampler": False,  # EpochSampler shards itself, keeping its per-epoch seeds
            **overrides,
        }
    )


@dataclass
class RunCallbacks:
    """The callbacks `train` gives Lightning, and those `finish_run` reads once training ends."""

    all: list[pl.Callback]
    history: EpochHistory
    weights: WeightFiles
    report: RunReport
    stop: GracefulStop
    average: SwaAverage | None


def _callbacks(
    plan: Plan, options: RunOptions, run_dir: RunDir, writer: BackgroundWriter, record: RunRecord, datasets,
    trackers: Trackers, run_seconds: Callable[[], float],
) -> RunCallbacks:  # fmt: skip
    exp = plan.experiment
    ema = EmaAverage(exp.ema.decay, exp.ema.warmup_steps) if exp.ema else None
    on_epoch, max_epochs = options.on_epoch, exp.max_epochs
    history = EpochHistory(exp.monitor, ema, on_row=(lambda row: on_epoch(row, max_epochs)) if on_epoch else None)
    weights = WeightFiles(history=history, run_dir=run_dir, writer=writer, info=plan.info, run_name=options.run_name,
                          ema=ema, sync=trackers.sync_file)  # fmt: skip
    report = RunReport(history, run_dir, writer, options.run_name, plan.class_names)
    # Lightning runs the checkpoint callbacks last, in this order; see callbacks/history.py.
    at_epoch_end = [history, weights, report, TrainingState(run_dir.state, exp.state_every_seconds),
                    RunRecordUpdates(history, record, run_dir, writer, plan.class_names, run_seconds)]  # fmt: skip
    stop = GracefulStop(options.on_stop_request)
    callbacks: list[pl.Callback] = [stop, RngState(), *at_epoch_end, *([ema] if ema else [])]
    average = None
    if exp.average_start is not None:
        average = SwaAverage(exp.average_start, exp.average.bn_batches, on_ready=weights.write_average)
        callbacks.append(average)
    if exp.early_stopping:
        cfg = exp.early_stopping
        callbacks.append(EarlyStopping(monitor=cfg.monitor, patience=cfg.patience, mode=cfg.mode,
                                       min_delta=cfg.min_delta, check_on_train_epoch_end=False))  # fmt: skip
    if trackers:  # pictures for the trackers, which nothing else shows
        callbacks.append(TrainSamples(plan, trackers, seed=exp.seed))
        if exp.log_predictions.count:
            callbacks.append(PredictionLogger(plan, datasets["val"], trackers))
    return RunCallbacks([*callbacks, *options.extra_callbacks], history, weights, report, stop, average)


def train(experiment: Experiment, options: RunOptions) -> TrainResult:
    """Check everything, train (or continue) the run, and return where its files are and what was measured."""
    started = time.monotonic()
    run_dir = options.folder
    record = RunRecord.read(run_dir) if options.resume or options.resume_from else None
    if record and record.finished and options.resume_from is None and record.epochs_completed >= experiment.max_epochs:
        return TrainResult.finished(options.run_name, run_dir, record)  # nothing to do: its state is not even read
    resume_from, epochs_done, steps_done = _resume_point(options, run_dir, experiment)
    quiet_libraries()
    require_extras(experiment.trackers)
    plan = preflight(
        experiment,
        dataset=options.dataset,
        class_names=options.class_names,
        experiment_name=options.experiment_name,
        force_cpu=options.force_cpu,
        pairs=options.pairs,
    )
    lead = is_primary_process()  # under several processes only the first writes files and logs
    if lead:
        if options.on_dataset_checked:
            options.on_dataset_checked(plan.report)
        _prepare_run_dir(run_dir, options.overwrite, resuming=resume_from is not None)
    record = record or RunRecord(options.run_name, wandb_id=new_wandb_id())
    record.finished = False
    earlier = record.seconds or 0.0  # what the run took before this resume

    def run_seconds() -> float:
        return earlier + time.monotonic() - started

    trackers = Trackers()
    if lead:  # now, before any DataLoader worker forks (W&B's start runs `git` in subprocesses)
        resumed_step = steps_done if resume_from else None
        trackers = Trackers.start(experiment.trackers, _tracked_run(experiment, options, plan, record, resumed_step))
        for key, value in trackers.run_ids.items():
            setattr(record, key, value)
    writer = BackgroundWriter()
    try:
        if lead:
            record.write(run_dir)
        datasets = make_datasets(plan)
        loaders = make_loaders(plan, datasets, epoch=epochs_done)
        callbacks = _callbacks(plan, options, run_dir, writer, record, datasets, trackers, run_seconds)
        trainer = build_trainer(plan, logger=trackers.all, callbacks=callbacks.all, progress=options.progress,
                                writer=writer, default_root_dir=options.output_dir)  # fmt: skip
        with callbacks.stop:
            trainer.fit(plan.task, loaders["train"], loaders["val"], ckpt_path=resume_from, weights_only=True)
        writer.wait()
        result = finish_run(plan, trainer, callbacks, trackers=trackers, record=record, options=options,
                            run_seconds=run_seconds)  # fmt: skip
    except BaseException:
        writer.close(raise_failure=False)  # the error on its way out is the one to report
        trackers.close("failed")
        raise
    writer.close()
    trackers.close("success")
    result.resumed_from, result.resumed_after = resume_from, epochs_done
    return result


def new_wandb_id() -> str:
    """Chosen up front, so run.json names the W&B run a resume continues."""
    return uuid.uuid4().hex[:8]


def _tracked_run(experiment: Experiment, options: RunOptions, plan: Plan, record: RunRecord,
                 resumed_step: int | None) -> TrackedRun:  # fmt: skip
    config = {**experiment.model_dump(mode="json"), "class_names": options.class_names,
              "dataset_path": str(options.dataset.resolve()), "experiment_name": options.experiment_name,
              "config_file": str(options.config_file) if options.config_file else None,
              "run_name": options.run_name, "overrides": options.overrides,
              "normalization": plan.normalization.model_dump()}  # fmt: skip
    return TrackedRun(name=options.run_name, output_dir=options.output_dir, run_dir=options.folder.path, config=config,
                      group=options.group, offline=options.offline, wandb_id=record.wandb_id,
                      mlflow_run_id=record.mlflow_run_id, resumed_step=resumed_step)  # fmt: skip
