"""`train()`: the one training entry point. Commands and tests call it directly.

Everything that can be wrong with the user's input is checked before the run folder or the
W&B run exist, so a mistake never leaves a half-made run behind.
"""

from __future__ import annotations

import logging
import os
import time
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
from segcli.errors import ConfigError, DatasetError, did_you_mean
from segcli.training.checkpoints import SegcliCheckpoints
from segcli.training.metrics import logged_metric_keys

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
    wandb_mode: str
    wandb_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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


def _select_device(experiment: Experiment, force_cpu: bool) -> tuple[str, Any]:
    import torch

    if force_cpu:
        return "cpu", 1
    count = torch.cuda.device_count()
    if experiment.gpu is None:
        return ("gpu", [0]) if count else ("cpu", 1)
    if experiment.gpu >= count:
        have = f"only {count} CUDA GPU{'s' if count != 1 else ''}" if count else "no CUDA GPU"
        raise ConfigError(
            f"gpu: {experiment.gpu} was requested but this machine has {have}; "
            "train on the CPU with `--cpu` or `gpu: null` (GPU 0 when there is one, else the CPU)"
        )
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


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and any(run_dir.glob("*.pth")) and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds checkpoints of this run; pass --overwrite to replace them "
            "or --output-dir to train somewhere else"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {run_dir} is not writable ({exc.strerror}); pass --output-dir") from None


def _quiet_lightning() -> None:
    # Lightning's start-up info lines (GPU available, ...) bury the messages users need.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def train(experiment: Experiment, options: RunOptions) -> TrainResult:
    """Check everything, train, and return where the checkpoints are and what was measured."""
    apply_offline_switches()
    started = time.monotonic()
    exp, name = experiment, options.experiment_name
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
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, RichProgressBar
    from pytorch_lightning.loggers import WandbLogger
    from torch.utils.data import DataLoader

    from segcli.data.dataset import SegmentationDataset, seed_worker_transforms
    from segcli.models.registry import size_multiple
    from segcli.models.task import SegmentationTask
    from segcli.training.wandb_logging import sync_file_live, wandb_images, wandb_mode

    _quiet_lightning()
    pl.seed_everything(exp.seed, workers=True, verbose=False)
    task = SegmentationTask(exp.model_dump(mode="json"), options.class_names)
    task.configure_optimizers()  # builds and discards: bad optimizer/scheduler params fail now, not after start-up
    multiple = size_multiple(task.model)
    channels = exp.model.in_channels
    pipelines = {
        split: build_pipeline(
            getattr(exp, f"{split}_transforms"), f"experiment '{name}': {split}_transforms", channels, seed=exp.seed
        )
        for split in SPLITS
    }
    model_label = f"{exp.model.arch} with {exp.model.encoder_name}"
    for split in SPLITS:
        _check_sizes(name, split, pipelines[split], report.splits[split].image_sizes, channels, multiple, model_label)
    mean, std = normalization(exp.train_transforms, channels)

    run_dir = options.output_dir / "checkpoints" / options.run_name
    _prepare_run_dir(run_dir, options.overwrite)

    workers = exp.num_workers if exp.num_workers is not None else min(4, os.cpu_count() or 1)
    on_gpu = accelerator == "gpu"
    if on_gpu:
        torch.set_float32_matmul_precision("high")
    datasets = {
        split: SegmentationDataset(list_pairs(options.dataset, split), pipelines[split], channels) for split in SPLITS
    }
    generator = torch.Generator().manual_seed(exp.seed)
    loader_args = dict(
        batch_size=exp.batch_size,
        num_workers=workers,
        pin_memory=on_gpu,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker_transforms,
    )
    train_loader = DataLoader(
        datasets["train"],
        shuffle=True,
        generator=generator,
        drop_last=len(datasets["train"]) > exp.batch_size,
        **loader_args,
    )
    val_loader = DataLoader(datasets["val"], shuffle=False, **loader_args)

    mode = wandb_mode(options.offline)
    config = {
        **exp.model_dump(mode="json"),
        "class_names": options.class_names,
        "dataset_path": str(options.dataset.resolve()),
        "experiment_name": name,
        "config_file": str(options.config_file) if options.config_file else None,
        "run_name": options.run_name,
    }
    logger = WandbLogger(
        project=wandb_project(options.wandb_project),
        name=options.run_name,
        save_dir=str(options.output_dir),
        mode=mode,
        config=config,
        log_model=False,
    )
    run = logger.experiment
    try:
        samples = load_samples(choose_pairs(datasets["train"].pairs, SAMPLES_LOGGED, exp.seed), channels)
        run.log({"samples/train": wandb_images(samples, options.class_names, exp.ignore_index)})
        synced: set[Path] = set()

        def sync(path: Path) -> None:
            if path not in synced:
                sync_file_live(run, path)
                synced.add(path)

        checkpoints = SegcliCheckpoints(run_dir, options.run_name, {"mean": mean, "std": std}, multiple, on_write=sync)
        callbacks: list[pl.Callback] = [checkpoints, LearningRateMonitor(logging_interval="epoch")]
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
        if options.progress:
            callbacks.append(RichProgressBar())
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            precision=exp.precision,
            max_epochs=exp.max_epochs,
            logger=logger,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=options.progress,
            default_root_dir=str(options.output_dir),
            log_every_n_steps=max(1, min(50, len(train_loader))),
        )
        trainer.fit(task, train_loader, val_loader)
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
        seconds=time.monotonic() - started,
        parameters=sum(p.numel() for p in task.model.parameters()),
        wandb_mode=mode,
        wandb_dir=str(Path(wandb_dir).parent) if wandb_dir else None,
    )
