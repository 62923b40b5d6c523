"""Every check `train` makes before its first step, in one place: `--dry-run` runs exactly these.

Nothing here writes a file or starts W&B, so a mistake in the input never leaves a half-made run. The
result, a `Plan`, holds what the checks built and measured (the model, built once; the dataset report;
the resolved normalisation; the pipelines), and training goes on from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

from segcli.artifacts.checkpoints import read_training_state
from segcli.artifacts.model_info import ModelInfo, Normalization
from segcli.config.schema import Experiment
from segcli.data.check_report import DatasetReport
from segcli.data.checks import check_dataset_cached
from segcli.data.dataset import RamCache
from segcli.data.geometry import fixed_input_size
from segcli.data.io import CHANNEL_CONVERSIONS, Pair, label_lookup, list_pairs
from segcli.data.transforms import (
    PixelStats,
    RareCrops,
    build_pipeline,
    describe_normalization,
    output_sizes,
    resolve_normalization,
)
from segcli.devices import select_devices
from segcli.errors import CheckpointError, ConfigError, did_you_mean
from segcli.models.metrics import logged_metric_keys
from segcli.models.task import SegmentationTask
from segcli.training.trackers import require_extras

SPLITS = ("train", "val")


@dataclass
class Plan:
    """What the checks built and measured, for training to use."""

    experiment: Experiment
    class_names: list[str]
    accelerator: str
    devices: Any
    task: SegmentationTask
    report: DatasetReport
    pairs: dict[str, list[Pair]]
    pipelines: dict[str, Any]
    normalization: Normalization
    info: ModelInfo
    """The model description every checkpoint of the run carries."""
    workers: int
    label_lookup: np.ndarray | None


def check_experiment(exp: Experiment, class_names: list[str]) -> None:
    """Class names against the model, and every monitored metric against the keys that are logged."""
    expected = 2 if exp.model.classes == 1 else exp.model.classes
    if len(class_names) != expected:
        binary = " (binary: one sigmoid output; name the background first, then the foreground)"
        raise ConfigError(
            f"model.classes is {exp.model.classes}{binary if exp.model.classes == 1 else ''} but CLASS_NAMES lists "
            f"{len(class_names)} names ({', '.join(class_names)}); {expected} are needed: make them agree "
            "(an ignored label such as void is not a class)"
        )
    if exp.ignore_index is not None and exp.ignore_index < 0:
        raise ConfigError(f"ignore_index: {exp.ignore_index} is negative; use the label value of the pixels to ignore")
    val_keys = logged_metric_keys("val", class_names)
    if exp.ema is not None:
        val_keys += logged_metric_keys("val_ema", class_names)
    checks = [("monitor.metric", exp.monitor.metric, val_keys)]
    if exp.early_stopping:
        checks.append(("early_stopping.monitor", exp.early_stopping.monitor, val_keys))
    if exp.scheduler and exp.scheduler.monitor:
        checks.append(("scheduler.monitor", exp.scheduler.monitor, val_keys + logged_metric_keys("train", class_names)))
    for where, key, valid in checks:
        if key not in valid:
            hint = " (val_ema/* needs `ema:` in the experiment)" if key.startswith("val_ema/") else ""
            raise ConfigError(f"{where}: '{key}' is never logged{hint}; {did_you_mean(key, valid)}")


def check_resume_state(state: Path, experiment: Experiment) -> tuple[int, int]:
    """The state file must come from a run of the same model. Returns the epochs and optimizer steps it completed."""
    saved = read_training_state(state)
    stored = Experiment.model_validate(saved["hyper_parameters"]["experiment"]).model
    if stored != experiment.model:
        raise CheckpointError(
            f"{state} was trained with model {stored.model_dump()} but the experiment now says "
            f"{experiment.model.model_dump()}; resume with the same model block"
        )
    if "EpochHistory" not in saved.get("callbacks", {}):  # a resume would silently start its history afresh
        raise CheckpointError(
            f"{state} was written by an older segcli that kept the history elsewhere; finish that run with the "
            "segcli version that started it, or start it again with --overwrite"
        )
    return saved["epoch"] + 1, saved["global_step"]  # saved at an epoch's end, under its 0-based index


def resolve_class_weights(exp: Experiment, report: DatasetReport, num_classes: int) -> Experiment:
    """`loss.class_weights: median_frequency` -> the weights from the check's training frequencies, so the
    checkpoints and the training state hold the numbers the run used."""
    if exp.loss.class_weights != "median_frequency":
        return exp
    weights = report.splits["train"].median_frequency_weights(num_classes)
    return exp.model_copy(update={"loss": exp.loss.model_copy(update={"class_weights": weights})})


def _rare_crops(exp: Experiment, report: DatasetReport, class_names: list[str]) -> RareCrops | None:
    """`sampling` -> the share of crops and the rare classes' labels (named, or measured by the check)."""
    if exp.sampling is None or exp.sampling.rare_class_crops == 0:
        return None
    if exp.sampling.rare_classes is None:
        labels = report.splits["train"].rare_classes(len(class_names))
    else:
        unknown = [name for name in exp.sampling.rare_classes if name not in class_names]
        if unknown:
            raise ConfigError(
                f"sampling.rare_classes: '{unknown[0]}' is not a class; {did_you_mean(unknown[0], class_names)}"
            )
        labels = [class_names.index(name) for name in exp.sampling.rare_classes]
    return RareCrops(exp.sampling.rare_class_crops, tuple(labels))


def _check_channels(report: DatasetReport, in_channels: int) -> int:
    """The images' channel count; it must be the model's or one segcli converts (grey <-> RGB, RGBA -> RGB)."""
    stored = report.splits["train"].channels.most_common(1)[0][0]
    if stored != in_channels and (stored, in_channels) not in CHANNEL_CONVERSIONS:
        raise ConfigError(
            f"model.in_channels is {in_channels} but the images of {report.root} have {stored} channel(s); set "
            f"`model.in_channels: {stored}`" + (" and `normalize: dataset`" if stored not in (1, 3) else "")
        )
    return stored


def _pixel_stats(report: DatasetReport, stored: int, in_channels: int) -> PixelStats:
    """The scale and the per-channel statistics of the images as the model gets them (after a conversion)."""
    train = report.splits["train"]
    scale = train.max_pixel_value()
    measured = train.channel_mean_std(scale, CHANNEL_CONVERSIONS.get((stored, in_channels)))
    return PixelStats(scale) if measured is None else PixelStats(scale, *measured)


def _check_sizes(key: str, sizes: set[tuple[int, int]]) -> None:
    """One size per batch; any size fits the model (batches are padded to its size multiple)."""
    if len(sizes) > 1:
        raise ConfigError(
            f"{key} produce images of different sizes {sorted(sizes)}; add a resize or crop so batches can be stacked"
        )


def available_memory() -> int | None:
    """Free memory (MemAvailable) in bytes, or None where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needed: int) -> None:
    """`cache: ram` must leave room for the model and the workers: refuse above 70% of what is free."""
    available = available_memory()
    if available is not None and needed > 0.7 * available:
        raise ConfigError(
            f"cache: ram needs about {needed / 2**30:.1f} GiB but only {available / 2**30:.1f} GiB of memory are "
            "available; remove `cache: ram` (files are then decoded on the fly)"
        )


def preflight(
    exp: Experiment,
    *,
    dataset: Path,
    class_names: list[str],
    experiment_name: str,
    force_cpu: bool = False,
    pairs: dict[str, list[Pair]] | None = None,
) -> Plan:
    """Check the experiment, the device, the dataset and the transforms; build the model once.

    `pairs` replaces the dataset's own train/val split (k-fold); the check still covers both folders.
    """
    check_experiment(exp, class_names)
    accelerator, devices = select_devices(exp.gpu, exp.devices, force_cpu)
    if accelerator == "cpu" and exp.precision == "16-mixed":
        raise ConfigError("precision: 16-mixed needs a GPU; on the CPU use `precision: bf16-mixed` or `precision: 32`")
    report = check_dataset_cached(dataset, SPLITS, class_names, exp.ignore_index, label_map=exp.label_map)
    report.require_clean(f"dataset {dataset}")
    exp = resolve_class_weights(exp, report, len(class_names))
    channels = exp.model.in_channels
    stored = _check_channels(report, channels)
    normalization = resolve_normalization(exp.normalize, channels, _pixel_stats(report, stored, channels))

    pl.seed_everything(exp.seed, workers=True, verbose=False)  # the seed decides the start weights
    task = SegmentationTask(exp.model_dump(mode="json"), class_names)
    task.build_optimizers(exp.max_epochs)  # built and discarded (any run length does): bad params fail now
    where = f"experiment '{experiment_name}'"
    rare_crops = {"train": _rare_crops(exp, report, class_names), "val": None}
    pipelines = {split: build_pipeline(getattr(exp, f"{split}_transforms"), f"{where}: {split}_transforms",
                                       normalization, fill_label=task.never_scored,
                                       rare_crops=rare_crops[split]) for split in SPLITS}  # fmt: skip
    dtype = report.splits["train"].dtype or "uint8"
    pooled = report.splits["train"].image_sizes + report.splits["val"].image_sizes  # k-fold mixes the folders
    sizes = {}
    for split in SPLITS:
        image_sizes = pooled if pairs else report.splits[split].image_sizes
        sizes[split] = output_sizes(pipelines[split], f"{where}: {split}_transforms", image_sizes, channels, dtype)
        _check_sizes(f"{where}: {split}_transforms", sizes[split])
    if exp.cache == "ram":
        per_value = np.dtype(dtype).itemsize
        check_memory(sum(RamCache.estimate_bytes(report.splits[s].image_sizes, channels, per_value) for s in SPLITS))
    info = ModelInfo(
        arch=exp.model.arch, encoder_name=exp.model.encoder_name, in_channels=channels, classes=exp.model.classes,
        class_names=list(class_names), ignore_index=exp.ignore_index, normalization=normalization,
        size_multiple=task.size_multiple, model_params=dict(exp.model.params),
        label_map=[[k, v] for k, v in sorted(exp.label_map.items())] if exp.label_map else None,
        input_size=list(next(iter(sizes["val"]))) if sizes["val"] else None,
        val_transforms=[spec.model_dump(mode="json") for spec in exp.val_transforms],
        resize=fixed_input_size(exp.val_transforms, channels),
        image_dtype=report.splits["train"].dtype, image_scale=report.splits["train"].max_pixel_value(),
    )  # fmt: skip
    return Plan(
        experiment=exp,
        class_names=list(class_names),
        accelerator=accelerator,
        devices=devices,
        task=task,
        report=report,
        pairs=pairs or {split: list_pairs(dataset, split) for split in SPLITS},
        pipelines=pipelines,
        normalization=normalization,
        info=info,
        workers=exp.num_workers if exp.num_workers is not None else min(4, os.cpu_count() or 1),
        label_lookup=label_lookup(exp.label_map),
    )


@dataclass
class DryRun:
    """What `train --dry-run` reports of one experiment: the checks' findings; nothing written or started."""

    experiment: Experiment
    report: DatasetReport
    parameters: int
    size_multiple: int
    """Batches are padded to multiples of it (reflected; the padding is never scored)."""
    normalization: str
    pairs: dict[str, int]
    data_type: str
    """The training images' dtype, and their bit depth where it is narrower (12-bit values in uint16)."""
    accelerator: str
    devices: Any


def dry_run(experiment: Experiment, *, dataset: Path, class_names: list[str], experiment_name: str,
            force_cpu: bool = False) -> DryRun:  # fmt: skip
    """Every check `train` makes before its first step, and nothing more."""
    require_extras(experiment.trackers)
    plan = preflight(experiment, dataset=dataset, class_names=class_names, experiment_name=experiment_name,
                     force_cpu=force_cpu)  # fmt: skip
    train = plan.report.splits["train"]
    return DryRun(
        experiment=experiment, report=plan.report, parameters=sum(p.numel() for p in plan.task.model.parameters()),
        size_multiple=plan.info.size_multiple, normalization=describe_normalization(plan.normalization),
        pairs={split: len(pairs) for split, pairs in plan.pairs.items()},
        data_type=f"{train.dtype}" + (f", {train.bits_used}-bit values" if train.bits_used else ""),
        accelerator=plan.accelerator, devices=plan.devices,
    )  # fmt: skip
