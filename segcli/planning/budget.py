"""What the time and memory budget decide: model, batch size, epochs, learning rate and schedule, averaging.

`plan()` joins these to the data's decisions (rules.py) into one experiment. The rules are pure; the only
measurements come through a `Probe` (a real training step at the planned crop and precision, and the
optional learning-rate range test), which tests replace with fixed numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from segcli.config.schema import Experiment
from segcli.data.dataset import RamCache
from segcli.errors import ConfigError
from segcli.planning.fingerprint import Fingerprint
from segcli.planning.rules import DataPlan, Decision, plan_data

# (tier, architecture, encoder, training images it needs from scratch): Unet pads any image size itself, so
# validation runs on whole images; a larger encoder trained from scratch on few images only overfits more.
TIERS = (("fast", "Unet", "resnet18", 0), ("medium", "Unet", "resnet34", 300), ("large", "Unet", "resnet50", 1000))
NEXT_TIER_EPOCHS = 60  # a tier is tried once the smaller one would train at least this many epochs ...
MIN_EPOCHS = 30  # ... and taken when it still trains this many
HEADROOM = 0.8  # share of the memory budget a batch may use (allocator slack, loader workers)
BATCH_CAP = {"cpu": 8, "gpu": 32}  # CPU: more updates per second of compute; GPU: beyond 32 little gain
MIN_STEPS_PER_EPOCH = 8
MIN_BATCH = 2  # BatchNorm cannot train on one image whose deepest feature map is 1x1
LR_AT_BATCH_8 = 0.002  # AdamW from scratch (BENCHMARKS.md's quality runs on CamVid); sqrt-scaled with batch
LONG_RUN_EPOCHS = 30  # scale and colour jitter from this many epochs: shorter runs still underfit
PRETRAINED_LR_FACTOR = 0.25  # pretrained encoders are fine-tuned gentler
WARMUP_SHARE = 0.05
START_SECONDS = 25.0  # imports, dataset check, model build, W&B, and the end of the run
EPOCH_OVERHEAD_SECONDS = 1.5  # checkpoints, metrics and the report at every epoch's end
LOADER_SHARE_CPU = 0.12  # loader workers take this share of the CPU from training steps (files decoded each time)
RAM_CACHE_SHARE = 0.25  # `cache: ram` when the decoded dataset needs under this share of free memory


class Probe(Protocol):
    def train_memory(self, experiment: Experiment, class_names: list[str], batch: int, size: tuple[int, int]) -> int:
        """Bytes a real forward, backward and optimizer step of `batch` images at `size` (height, width) needs
        beyond what was allocated before it (activations, gradients, optimizer state)."""

    def train_seconds(self, experiment: Experiment, class_names: list[str], batch: int, size: tuple[int, int]) -> float:
        """The time of such a step."""

    def val_seconds(self, experiment: Experiment, class_names: list[str], batch: int, size: tuple[int, int]) -> float:
        """The time of a forward pass without gradients."""

    def learning_rate(self, experiment: Experiment, class_names: list[str]) -> float | None:
        """The learning-rate range test's suggestion on the real data (None: not run or no suggestion)."""


@dataclass(frozen=True)
class Target:
    """Where and how long the planned run trains."""

    device: str  # "cpu" or "gpu"
    memory_bytes: int
    budget_seconds: float
    bf16: bool = False
    free_ram_bytes: int | None = None


@dataclass
class PlannedRun:
    experiment: Experiment
    class_names: list[str]
    decisions: list[Decision]
    notes: list[Decision] = field(default_factory=list)
    epochs: int = 0
    epoch_seconds: float = 0.0
    estimate_seconds: float = 0.0


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def experiment_data(decisions: list[Decision]) -> dict[str, Any]:
    """The decisions as one experiment (`train_transforms` entries in order)."""
    data: dict[str, Any] = {}
    for decision in decisions:
        if decision.key in ("train_transforms", "val_transforms"):
            data.setdefault(decision.key, []).append(decision.value)
        elif decision.key is not None:
            _set(data, decision.key, decision.value)
    return data


def _validated(decisions: list[Decision]) -> Experiment:
    return Experiment.model_validate(experiment_data(decisions))


def _size(count: float) -> str:
    return f"{count / 2**30:.2f} GB" if count >= 2**30 else f"{count / 2**20:.0f} MB"


def _batch_size(probe: Probe, base: list[Decision], names, crop, target: Target, train_images: int) -> tuple[int, str]:
    """The largest batch whose measured memory fits the budget with headroom, within the device's cap."""
    exp = _validated(base)
    two, four = (probe.train_memory(exp, names, batch, crop) for batch in (2, 4))
    per_image = max((four - two) / 2, 1)
    fixed = max(two - 2 * per_image, 0)
    fits = int((HEADROOM * target.memory_bytes - fixed) // per_image)
    cap = min(BATCH_CAP[target.device], max(MIN_BATCH, train_images // MIN_STEPS_PER_EPOCH))
    if fits < MIN_BATCH:
        raise ConfigError(
            f"a batch of {MIN_BATCH} images of {crop[1]}x{crop[0]} needs about {_size(fixed + MIN_BATCH * per_image)} "
            f"to train but the memory budget is {_size(target.memory_bytes)}; raise --memory or use a device with "
            "more memory"
        )
    batch = min(fits, cap)
    if fits <= cap:
        limit = "the largest that fits"
    elif cap == MIN_BATCH:
        limit = f"{train_images} images: the smallest batch BatchNorm trains on"
    elif cap < BATCH_CAP[target.device]:
        limit = f"{train_images} images make at least {MIN_STEPS_PER_EPOCH} steps an epoch at {cap}"
    else:
        limit = f"{cap} at most on {target.device}"
        if target.device == "cpu":
            limit += ": more updates per second of CPU"
    why = (
        f"measured {_size(fixed)} + {_size(per_image)} per image at {crop[1]}x{crop[0]} on {target.device}: "
        f"{fits} fit in {HEADROOM:.0%} of {_size(target.memory_bytes)}; {limit}"
    )
    return batch, why


def _epoch_seconds(
    probe: Probe, exp: Experiment, names, batch: int, crop, val_size, fp: Fingerprint, cached: bool, device: str
) -> tuple[float, str]:
    step = probe.train_seconds(exp, names, batch, crop)
    if device == "cpu" and not cached:
        step /= 1 - LOADER_SHARE_CPU
    steps = max(1, fp.train.pairs // batch)
    val_images = fp.val.pairs if fp.val else 0
    val = probe.val_seconds(exp, names, batch, val_size) * math.ceil(val_images / batch)
    seconds = steps * step + val + EPOCH_OVERHEAD_SECONDS
    return seconds, f"{steps} steps of {step:.2f} s + validation {val:.0f} s"


def plan(
    fp: Fingerprint,
    target: Target,
    probe: Probe,
    *,
    names: list[str] | None = None,
    domain: str | None = None,
    pretrained: bool | None = None,
    weights_reachable: bool = False,
    lr_test: bool = False,
) -> PlannedRun:
    """The whole plan: the data's decisions, then model, batch, epochs and schedule from measured steps."""
    data: DataPlan = plan_data(
        fp, names=names, device=target.device, domain=domain, pretrained=pretrained, weights_reachable=weights_reachable
    )
    crop = data.crop or fp.size
    device: list[Decision] = []
    if target.device == "gpu":
        precision = "bf16-mixed" if target.bf16 else "16-mixed"
        device += [
            Decision("precision", precision, "mixed precision: about twice the images per second on a GPU"),
            Decision("channels_last", True, "faster convolutions on tensor cores under mixed precision"),
        ]
    else:
        device.append(Decision("precision", "32", "the CPU gains nothing from mixed precision"))
    sizes = fp.train.image_sizes + (fp.val.image_sizes if fp.val else Counter())
    decoded = RamCache.estimate_bytes(sizes, data.in_channels, np.dtype(fp.train.dtype or "uint8").itemsize)
    cached = target.free_ram_bytes is not None and decoded < RAM_CACHE_SHARE * target.free_ram_bytes
    if cached:
        why = f"the decoded dataset ({_size(decoded)}) fits easily in memory: decoded once, not every epoch"
        device.append(Decision("cache", "ram", why))

    chosen = None
    for tier, arch, encoder, images in TIERS:
        if chosen is not None and not data.pretrained and fp.train.pairs < images:
            break
        model = [
            Decision("model.arch", arch, f"{tier} tier: Unet pads any image size itself"),
            Decision("model.encoder_name", encoder, f"{tier} tier"),
        ]
        base = model + data.decisions + device
        batch, batch_why = _batch_size(probe, base, data.class_names, crop, target, fp.train.pairs)
        exp = _validated([*base, Decision("batch_size", batch, batch_why)])
        seconds, seconds_why = _epoch_seconds(
            probe, exp, data.class_names, batch, crop, data.val_size, fp, cached, target.device
        )
        epochs = int((target.budget_seconds - START_SECONDS) // seconds)
        if chosen is not None and epochs < MIN_EPOCHS:
            break
        chosen = (tier, model, batch, batch_why, seconds, seconds_why, epochs)
        if epochs < NEXT_TIER_EPOCHS:
            break
    tier, model, batch, batch_why, seconds, seconds_why, epochs = chosen
    if epochs < 1:
        raise ConfigError(
            f"--budget {target.budget_seconds / 60:.0f} min is shorter than one epoch of the smallest model "
            f"(about {(seconds + START_SECONDS) / 60:.1f} min with start-up); give a longer --budget"
        )
    model[0] = Decision("model.arch", model[0].value, f"{model[0].reason}; {epochs} epochs fit the budget")
    steps = max(1, fp.train.pairs // batch)
    decisions = model + data.decisions + device + [Decision("batch_size", batch, batch_why)]
    notes = list(data.notes)
    if data.long_run_augmentations and epochs >= LONG_RUN_EPOCHS:
        decisions += data.long_run_augmentations
    elif data.long_run_augmentations:
        names = ", ".join(d.value["name"] for d in data.long_run_augmentations)
        why = f"augmentation: {epochs} epochs still underfit, so no {names} (from {LONG_RUN_EPOCHS} epochs on)"
        notes.append(Decision(None, None, why))
    budget_min = target.budget_seconds / 60
    decisions.append(
        Decision(
            "max_epochs",
            epochs,
            f"budget {budget_min:.0f} min: an epoch is {seconds:.0f} s "
            f"({seconds_why}), start and end {START_SECONDS:.0f} s",
        )
    )
    lr, lr_why = _learning_rate(probe, decisions, data, batch, lr_test)
    decisions.append(Decision("lr", lr, lr_why))
    total = epochs * steps
    warmup = max(1, round(WARMUP_SHARE * total))
    decisions += [
        Decision("optimizer", {"name": "AdamW", "params": {"weight_decay": 0.0001}}, "AdamW, light weight decay"),
        Decision(
            "scheduler",
            {
                "name": "CosineAnnealingLR",  # without T_max: the rest of the run, whatever max_epochs becomes
                "interval": "step",
                "warmup_steps": warmup,
            },
            f"linear warm-up over {warmup} steps, then cosine decay to 0 over the rest of the run ({total - warmup} "
            f"of {epochs} epochs x {steps} steps; without T_max it follows max_epochs)",
        ),
        Decision(
            "average",
            None,
            "the cosine schedule ends near lr 0, where an average of the last epochs equals the "
            "last weights: no SWA refit",
        ),
    ]
    experiment = _validated(decisions)
    estimate = START_SECONDS + epochs * seconds
    notes = [
        *notes,
        Decision(
            None,
            None,
            f"estimate: {epochs} epochs x {seconds:.0f} s + {START_SECONDS:.0f} s "
            f"= {estimate / 60:.0f} min on {target.device} (budget "
            f"{budget_min:.0f} min)",
        ),
    ]
    return PlannedRun(experiment, data.class_names, decisions, notes, epochs, seconds, estimate)


def _learning_rate(probe: Probe, decisions: list[Decision], data: DataPlan, batch: int, lr_test: bool):
    rule = LR_AT_BATCH_8 * math.sqrt(batch / 8) * (PRETRAINED_LR_FACTOR if data.pretrained else 1)
    why = f"AdamW {LR_AT_BATCH_8:g} at batch 8, scaled by sqrt(batch/8)" + (
        f", x{PRETRAINED_LR_FACTOR:g} for a pretrained encoder" if data.pretrained else ""
    )
    if not lr_test:
        return float(f"{rule:.3g}"), why + " (--lr-test measures it on the data)"
    suggestion = probe.learning_rate(_validated([*decisions, Decision("lr", rule, why)]), data.class_names)
    if suggestion is None:
        return float(f"{rule:.3g}"), why + "; the range test found no clear drop in the loss"
    return float(
        f"{suggestion:.3g}"
    ), f"learning-rate range test on the data: the loss falls fastest at {suggestion:.3g}"
