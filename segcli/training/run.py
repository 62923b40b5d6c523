"""`train()`: the one training entry point. Commands and tests call it directly.

Everything that can be wrong with the user's input is checked before the run folder or the
W&B run exist, so a mistake never leaves a half-made run behind.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segcli.config.schema import Experiment
from segcli.data.checks import check_dataset_cached, format_problems
from segcli.data.io import list_pairs
from segcli.data.samples import choose_pairs, load_samples
from segcli.data.transforms import build_pipeline, normalization
from segcli.env import apply_offline_switches, wandb_project
from segcli.errors import CheckpointError, ConfigError, DatasetError, did_you_mean
from segcli.training.callbacks import GracefulStop, SegcliCheckpoints
from segcli.training.checkpoints import STATE
from segcli.training.metrics import logged_metric_keys
from segcli.training.resume import RECORD, AtomicCheckpointIO, RunRecord, state_hparams

SPLITS = ("train", "val")
SAMPLES_LOGGED = 2


@dataclass
class RunOptions:
    dataset: Path
    class_names: list[str]
    run_name: str
    experiment_name: str
    config_file: Path | None = None
    output_dir: Path = Path(".")
    offline: bool = False
    overwrite: bool = False
    force_cpu: bool = False
    wandb_project: str | None = None
    progress: bool = True
    resume: bool = False
    """Continue this run from <run dir>/state_latest.ckpt."""
    resume_from: Path | None = None
    """Continue from this state file instead."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """`--set` values, logged with the run."""


@dataclass
class TrainResult:
    run_name: str
    run_dir: Path
    checkpoints: dict[str, Path]
    best_epoch: int | None
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    final_metrics: dict[str, float]
    epochs_run: int
    stopped_early: bool
    seconds: float
    parameters: int
    wandb_mode: str | None
    wandb_dir: str | None = None
    interrupted: bool = False
    resumed_from: Path | None = None
    finished_before: bool = False
    primary: bool = True
    """False in the extra processes of a multi-process run: they report nothing."""

    @classmethod
    def for_finished_run(cls, run_name: str, run_dir: Path, record: RunRecord) -> TrainResult:
        """What `--resume` of a run that already ended returns: nothing to do."""
        return cls(
            run_name=run_name,
            run_dir=run_dir,
            checkpoints={p.name: p for p in sorted(run_dir.glob("*.pth"))},
            best_epoch=None,
            best_metrics={},
            history=[],
            final_metrics={},
            epochs_run=record.epochs_completed,
            stopped_early=False,
            seconds=0.0,
            parameters=0,
            wandb_mode=None,
            finished_before=True,
        )


def _check_classes(experiment: Experiment, class_names: list[str]) -> None:
    if len(class_names) != experiment.model.classes:
        raise ConfigError(
            f"model.classes is {experiment.model.classes} but CLASS_NAMES lists {len(class_names)} names "
            f"({', '.join(class_names)}); make them agree (an ignored label such as void is not a class)"
        )
    ignore = experiment.ignore_index
    if ignore is not None and ignore < 0:
        raise ConfigError(f"ignore_index: {ignore} is negative; use the label value of the pixels to ignore (e.g. 255)")


def _check_monitors(experiment: Experiment, class_names: list[str]) -> None:
    """A monitor that is never logged would silently never stop or never save: refuse it."""
    val_keys = logged_metric_keys("val", class_names)
    checks = [("monitor.metric", experiment.monitor.metric, val_keys)]
    if experiment.early_stopping:
        checks.append(("early_stopping.monitor", experiment.early_stopping.monitor, val_keys))
    if experiment.scheduler and experiment.scheduler.monitor:
        checks.append(
            ("scheduler.monitor", experiment.scheduler.monitor, val_keys + logged_metric_keys("train", class_names))
        )
    for where, key, valid in checks:
        if key not in valid:
            raise ConfigError(f"{where}: '{key}' is never logged; {did_you_mean(key, valid)}")


def _missing_gpu(key: str, wanted: int, count: int) -> ConfigError:
    have = f"only {count} CUDA GPU{'s' if count != 1 else ''}" if count else "no CUDA GPU"
    return ConfigError(
        f"{key}: {wanted} was requested but this machine has {have}; train on the CPU with `--cpu` "
        "or `gpu: null` (GPU 0 when there is one, else the CPU)"
    )


def _select_device(experiment: Experiment, force_cpu: bool) -> tuple[str, Any]:
    """(accelerator, devices) for Lightning. `devices: N` without a GPU means N CPU processes."""
    import torch

    count = 0 if force_cpu else torch.cuda.device_count()
    devices = experiment.devices
    if devices is not None:
        if not count:
            return "cpu", devices if isinstance(devices, int) else len(devices)
        wanted = max(devices) + 1 if isinstance(devices, list) else devices
        if wanted > count:
            raise _missing_gpu("devices", devices, count)
        return "gpu", devices
    if force_cpu:
        return "cpu", 1
    if experiment.gpu is None:
        return ("gpu", [0]) if count else ("cpu", 1)
    if experiment.gpu >= count:
        raise _missing_gpu("gpu", experiment.gpu, count)
    return "gpu", [experiment.gpu]


def _check_precision(precision: str, accelerator: str) -> None:
    if accelerator == "cpu" and precision == "16-mixed":
        raise ConfigError("precision: 16-mixed needs a GPU; on the CPU use `precision: bf16-mixed` or `precision: 32`")


def _output_sizes(pipeline, image_sizes, channels: int, tries: int = 8) -> set[tuple[int, int]]:
    """Push blank images of every input size through the pipeline: the sizes the model will see.

    Several tries per size, so a random transform that changes the shape (a 90-degree rotation of a
    non-square image) shows up here rather than as a collate error mid-epoch.
    """
    sizes = set()
    for height, width in image_sizes:
        blank = np.zeros((height, width, channels), np.uint8)
        for _ in range(tries):
            out = pipeline(image=blank, mask=np.zeros((height, width), np.uint8))["image"]
            sizes.add(tuple(out.shape[-2:]))
    return sizes


def _check_sizes(name: str, split: str, pipeline, image_sizes, channels: int, multiple: int, model_label: str) -> None:
    sizes = _output_sizes(pipeline, image_sizes, channels)
    key = f"experiment '{name}': {split}_transforms"
    if len(sizes) > 1:
        raise ConfigError(
            f"{key} produce images of different sizes {sorted(sizes)}; add a resize or crop so batches can be stacked"
        )
    for height, width in sizes:
        if height % multiple or width % multiple:
            fit = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
            raise ConfigError(
                f"{key} produce {height}x{width} (HxW) images but {model_label} needs height and width divisible by "
                f"{multiple}; add `{{name: pad_if_needed, params: {{min_height: {fit[0]}, min_width: {fit[1]}}}}}` "
                f"or a resize/crop to multiples of {multiple}"
            )


def _prepare_run_dir(run_dir: Path, overwrite: bool, resuming: bool) -> None:
    if run_dir.exists() and any(run_dir.glob("*.pth")) and not (overwrite or resuming):
        raise ConfigError(
            f"{run_dir} already holds checkpoints of this run; continue it with --resume, replace it with "
            "--overwrite, or train somewhere else with --output-dir"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for leftover in run_dir.glob(".*.tmp"):  # a write killed half-way (the real file is intact)
            leftover.unlink()
        if overwrite and not resuming:  # a later --resume must not pick up the replaced run's state
            for old in [*run_dir.glob("*.pth"), run_dir / STATE, run_dir / RECORD]:
                old.unlink(missing_ok=True)
        probe = run_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {run_dir} is not writable ({exc.strerror}); pass --output-dir") from None


def _resume_state(options: RunOptions, run_dir: Path, experiment: Experiment) -> Path | None:
    """The state file to continue from, after checking it belongs to this model; None for a fresh run."""
    if options.resume_from is None and not options.resume:
        return None
    state = options.resume_from or run_dir / STATE
    if not state.is_file():
        raise CheckpointError(
            f"no training state at {state} to resume from; start the run without --resume"
            + ("" if options.resume_from else f" (or check --output-dir: looked in {run_dir})")
        )
    stored = Experiment.model_validate(state_hparams(state)["experiment"]).model
    if stored != experiment.model:
        raise CheckpointError(
            f"{state} was trained with model {stored.model_dump()} but the experiment now says "
            f"{experiment.model.model_dump()}; resume with the same model block"
        )
    return state


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_memory(needed: int) -> None:
    """`cache: ram` must leave room for the model and the workers: refuse above 70% of what is free."""
    available = _available_memory()
    if available is not None and needed > 0.7 * available:
        raise ConfigError(
            f"cache: ram needs about {needed / 2**30:.1f} GiB but only {available / 2**30:.1f} GiB of memory are "
            "available; remove `cache: ram` (files are then decoded on the fly)"
        )
    logging.getLogger("segcli").info("cache: ram holds about %.2f GiB", needed / 2**30)


def _is_rank_zero() -> bool:
    """Rank from the launcher's environment (torchrun, SLURM, Lightning's own DDP launcher)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _quiet_lightning() -> None:
    # Lightning's start-up info lines (GPU available, ...) bury the messages users need.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def make_loaders(exp: Experiment, datasets: dict, workers: int, on_gpu: bool) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from segcli.data.dataset import EpochSampler, ignore_interrupts_in_worker

    loaders = {}
    for split, dataset in datasets.items():
        loaders[split] = DataLoader(
            dataset,
            batch_size=exp.batch_size,
            sampler=EpochSampler(len(dataset), exp.seed, shuffle=split == "train"),
            drop_last=split == "train" and len(dataset) > exp.batch_size,  # no 1-image BatchNorm batch
            num_workers=workers,
            pin_memory=on_gpu,
            persistent_workers=workers > 0,
            worker_init_fn=ignore_interrupts_in_worker,
            generator=torch.Generator().manual_seed(exp.seed),  # worker seeds; leaves the global RNG alone
        )
    return loaders


def _make_logger(options: RunOptions, config: dict, record: RunRecord):
    """A W&B logger on the run's id (so --resume continues the same run); offline if W&B cannot start."""
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from segcli.training.wandb_logging import wandb_mode

    mode = wandb_mode(options.offline)
    for attempt_mode in dict.fromkeys([mode, "offline"]):
        logger = WandbLogger(
            project=wandb_project(options.wandb_project),
            name=options.run_name,
            id=record.wandb_id,
            resume="allow",
            save_dir=str(options.output_dir),
            mode=attempt_mode,
            config=config,
            log_model=False,
            settings=wandb.Settings(init_timeout=60, quiet=True),
        )
        try:
            logger.experiment  # noqa: B018 - starts the run now, so a failure can fall back to offline
            return logger, attempt_mode
        except Exception as exc:  # noqa: BLE001 - wandb raises many types for network failures
            if attempt_mode == "offline":
                raise
            warnings.warn(f"W&B could not start online ({exc}); logging offline instead", stacklevel=2)
    raise AssertionError("unreachable")


@dataclass
class Prepared:
    """Everything a run needs, built and checked, before any file or W&B run exists."""

    task: Any
    datasets: dict[str, Any]
    loaders: dict[str, Any]
    accelerator: str
    devices: Any
    size_multiple: int
    normalization: dict[str, list[float]]


def prepare(exp: Experiment, options: RunOptions) -> Prepared:
    """Check the experiment, the device and the dataset; build the model, the pipelines and the loaders."""
    apply_offline_switches()
    name = options.experiment_name
    _check_classes(exp, options.class_names)
    _check_monitors(exp, options.class_names)
    accelerator, devices = _select_device(exp, options.force_cpu)
    _check_precision(exp.precision, accelerator)
    report = check_dataset_cached(options.dataset, SPLITS, options.class_names, exp.ignore_index)
    if report.errors:
        raise DatasetError(
            f"dataset {options.dataset} failed the check ({len(report.errors)} problems):\n"
            + format_problems(report.errors)
        )

    import pytorch_lightning as pl
    import torch

    from segcli.data.dataset import RamCache, SegmentationDataset
    from segcli.models.registry import size_multiple
    from segcli.models.task import SegmentationTask

    _quiet_lightning()
    pl.seed_everything(exp.seed, workers=True, verbose=False)
    task = SegmentationTask(exp.model_dump(mode="json"), options.class_names)
    task.configure_optimizers()  # builds and discards: bad optimizer/scheduler params fail now, not after start-up
    multiple = size_multiple(task.model)
    channels = exp.model.in_channels
    pipelines = {
        split: build_pipeline(getattr(exp, f"{split}_transforms"), f"experiment '{name}': {split}_transforms", channels)
        for split in SPLITS
    }
    model_label = f"{exp.model.arch} with {exp.model.encoder_name}"
    for split in SPLITS:
        _check_sizes(name, split, pipelines[split], report.splits[split].image_sizes, channels, multiple, model_label)
    mean, std = normalization(exp.train_transforms, channels)

    workers = exp.num_workers if exp.num_workers is not None else min(4, os.cpu_count() or 1)
    if accelerator == "gpu":
        torch.set_float32_matmul_precision("high")
    pairs = {split: list_pairs(options.dataset, split) for split in SPLITS}
    caches = {split: None for split in SPLITS}
    if exp.cache == "ram":
        needed = sum(RamCache.estimate_bytes(report.splits[s].image_sizes, channels) for s in SPLITS)
        _check_memory(needed)
        caches = {split: RamCache(pairs[split], channels, workers) for split in SPLITS}
    datasets = {
        split: SegmentationDataset(pairs[split], pipelines[split], channels, exp.seed, caches[split])
        for split in SPLITS
    }
    return Prepared(
        task=task,
        datasets=datasets,
        loaders=make_loaders(exp, datasets, workers, on_gpu=accelerator == "gpu"),
        accelerator=accelerator,
        devices=devices,
        size_multiple=multiple,
        normalization={"mean": mean, "std": std},
    )


def build_trainer(exp: Experiment, prepared: Prepared, logger, callbacks: list, progress: bool, **overrides):
    """The Lightning Trainer `train` uses (the benchmark times this same one)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import RichProgressBar

    return pl.Trainer(
        **{
            "accelerator": prepared.accelerator,
            "devices": prepared.devices,
            "precision": exp.precision,
            "max_epochs": exp.max_epochs,
            "logger": logger,
            "callbacks": [*callbacks, *([RichProgressBar()] if progress else [])],
            "plugins": [AtomicCheckpointIO()],
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "enable_progress_bar": progress,
            "log_every_n_steps": max(1, min(50, len(prepared.loaders["train"]))),
            "strategy": exp.strategy,
            "num_nodes": exp.num_nodes,
            "accumulate_grad_batches": exp.accumulate_grad_batches,
            "sync_batchnorm": exp.sync_batchnorm,
            "use_distributed_sampler": False,  # EpochSampler shards itself, keeping its per-epoch seeds
            **overrides,
        }
    )


def train(experiment: Experiment, options: RunOptions) -> TrainResult:
    """Check everything, train (or continue) the run, and return where its files are and what was measured."""
    started = time.monotonic()
    exp, name = experiment, options.experiment_name
    run_dir = options.output_dir / "checkpoints" / options.run_name
    resume_from = _resume_state(options, run_dir, exp)
    record = RunRecord.read(run_dir) if resume_from else None
    if record and record.finished and options.resume_from is None:
        return TrainResult.for_finished_run(options.run_name, run_dir, record)

    prepared = prepare(exp, options)
    task, datasets, loaders = prepared.task, prepared.datasets, prepared.loaders
    # Under several processes only rank 0 touches the run folder, the record and W&B.
    lead = _is_rank_zero()
    if lead:
        _prepare_run_dir(run_dir, options.overwrite, resuming=resume_from is not None)

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor

    from segcli.training.wandb_logging import sync_file_live, wandb_images

    config = {
        **exp.model_dump(mode="json"),
        "class_names": options.class_names,
        "dataset_path": str(options.dataset.resolve()),
        "experiment_name": name,
        "config_file": str(options.config_file) if options.config_file else None,
        "run_name": options.run_name,
        "overrides": options.overrides,
    }
    record = record or RunRecord(options.run_name)
    logger, mode = _make_logger(options, config, record)
    run = logger.experiment
    if lead:
        record.wandb_id, record.finished = run.id, False
        record.write(run_dir)
    wandb_dir = None
    try:
        if resume_from is None and lead:
            pairs = choose_pairs(datasets["train"].pairs, SAMPLES_LOGGED, exp.seed)
            samples = load_samples(pairs, exp.model.in_channels)
            run.log({"samples/train": wandb_images(samples, options.class_names, exp.ignore_index)})
        synced: set[Path] = set()

        def sync(path: Path) -> None:
            if path not in synced:
                sync_file_live(run, path)
                synced.add(path)

        def saved(epoch: int) -> None:
            record.epochs_completed = epoch + 1
            record.write(run_dir)

        checkpoints = SegcliCheckpoints(
            run_dir, options.run_name, prepared.normalization, prepared.size_multiple, sync, run_dir / STATE, saved
        )
        stop = GracefulStop()
        callbacks: list[pl.Callback] = [checkpoints, stop, LearningRateMonitor(logging_interval="epoch")]
        early_stopping = None
        if exp.early_stopping:
            cfg = exp.early_stopping
            # Checked in on_validation_end, when THIS epoch's val metrics are logged.
            early_stopping = EarlyStopping(
                monitor=cfg.monitor,
                patience=cfg.patience,
                mode=cfg.mode,
                min_delta=cfg.min_delta,
                check_on_train_epoch_end=False,
            )
            callbacks.append(early_stopping)
        trainer = build_trainer(exp, prepared, logger, callbacks, options.progress, default_root_dir=options.output_dir)
        with stop:
            trainer.fit(task, loaders["train"], loaders["val"], ckpt_path=resume_from, weights_only=True)
        if lead:
            record.finished = not stop.requested
            record.write(run_dir)
            wandb_dir = run.dir
    finally:
        run.finish()

    return TrainResult(
        run_name=options.run_name,
        run_dir=run_dir,
        checkpoints={path.name: path for path in checkpoints.paths().values() if path.exists()},
        best_epoch=checkpoints.best_epoch,
        best_metrics=checkpoints.best_metrics,
        history=checkpoints.history,
        final_metrics={key: float(value) for key, value in trainer.callback_metrics.items()},
        epochs_run=trainer.current_epoch,
        stopped_early=bool(early_stopping and early_stopping.stopped_epoch),
        interrupted=stop.requested,
        resumed_from=resume_from,
        seconds=time.monotonic() - started,
        parameters=sum(p.numel() for p in task.model.parameters()),
        wandb_mode=mode,
        wandb_dir=str(Path(wandb_dir).parent) if wandb_dir else None,
        primary=lead,
    )
