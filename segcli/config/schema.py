"""The experiment-file schema. Pydantic only: importing this must stay cheap (no torch)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from segcli.config.distribution import SearchDistribution
from segcli.errors import did_you_mean

MAX_LABEL = 65535
"""Masks are 8- or 16-bit images: every stored mask value and every class fits in 16 bits."""


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(StrictModel):
    arch: str
    encoder_name: str = "resnet34"
    encoder_weights: str | None = "imagenet"
    in_channels: int = Field(3, ge=1)
    classes: int = Field(ge=1)
    params: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for the smp architecture (e.g. decoder_channels)."""


class TransformSpec(StrictModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(StrictModel):
    name: str = "AdamW"
    params: dict[str, Any] = Field(default_factory=dict)


class SchedulerConfig(StrictModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    interval: Literal["epoch", "step"] = "epoch"
    monitor: str | None = None
    """Metric that drives ReduceLROnPlateau (default val/loss)."""
    warmup_steps: int = Field(0, ge=0)
    """A linear warm-up from 1% of `lr` over this many scheduler steps (optimizer steps with `interval: step`,
    epochs otherwise) before the named schedule starts (torch's LinearLR, then SequentialLR)."""


def _default_mode(metric: str) -> Literal["min", "max"]:
    return "min" if "loss" in metric else "max"


class EarlyStoppingConfig(StrictModel):
    monitor: str = "val/mIoU"
    patience: int = Field(3, ge=0)
    mode: Literal["min", "max"] | None = None
    min_delta: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _infer_mode(self) -> EarlyStoppingConfig:
        if self.mode is None:
            self.mode = _default_mode(self.monitor)
        return self


def monitor_from_shorthand(value: Any) -> Any:
    """`monitor: val/loss` -> {metric: val/loss}."""
    return {"metric": value} if isinstance(value, str) else value


class MonitorConfig(StrictModel):
    """The metric that decides which epoch is stored as ckpt_best.pth."""

    metric: str = "val/mIoU"
    mode: Literal["min", "max"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return monitor_from_shorthand(value)

    @model_validator(mode="after")
    def _infer_mode(self) -> MonitorConfig:
        if self.mode is None:
            self.mode = _default_mode(self.metric)
        return self


class LossTerm(StrictModel):
    name: str
    weight: float = Field(1.0, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)


def loss_from_shorthand(value: Any) -> Any:
    """`loss: dice`, `loss: [dice, {name: focal}]` and `{terms: [dice, ...], class_weights: ...}` ->
    {terms: [{name: dice}, ...], ...}."""
    if isinstance(value, str):
        return {"terms": [{"name": value}]}
    if isinstance(value, list):
        value = {"terms": value}
    if isinstance(value, dict) and isinstance(value.get("terms"), list):
        return {**value, "terms": [{"name": t} if isinstance(t, str) else t for t in value["terms"]]}
    return value


class LossConfig(StrictModel):
    """A weighted sum of smp losses. `loss: dice` and `loss: [dice, cross_entropy]` are shorthands; a term given
    by its name alone has weight 1."""

    terms: list[LossTerm] = Field(min_length=1)
    class_weights: list[float] | Literal["median_frequency"] | None = None
    """One weight per class, or `median_frequency`: median class frequency / the class's frequency, from the
    dataset check's pixel counts over the training split (SegNet's balancing)."""

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        return loss_from_shorthand(value)


def _default_loss() -> LossConfig:
    return LossConfig(terms=[LossTerm(name="cross_entropy"), LossTerm(name="dice")])


NormalizationMode = Literal["imagenet", "dataset", "image", "min_max"]


class ExplicitNormalization(StrictModel):
    """`(pixel / max_pixel_value - mean) / std` per channel, with your own values."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)
    max_pixel_value: float | None = Field(None, gt=0)
    """Default: the largest value of the images' bit depth (255 for 8-bit, 4095 for 12-bit data, ...)."""

    @field_validator("std")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("every std must be positive")
        return value


class AverageConfig(StrictModel):
    """SWA: an equal average of the weights after each epoch from `start_epoch` on (average_model.pth)."""

    start_epoch: int | None = Field(None, ge=1)
    """1-based; default: the epoch at 75% of max_epochs (the late, already good weights). A run that ends
    before it (early stopping, a small max_epochs) writes no average_model.pth."""
    bn_batches: int | None = Field(None, ge=1)
    """Train batches used to recompute BatchNorm statistics for the averaged weights (default: all)."""


class EmaConfig(StrictModel):
    """An exponential moving average of the weights, updated after every optimizer step (ema_model.pth)."""

    decay: float = Field(0.999, gt=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    """Ramp the decay up over these steps ((1 + n) / (10 + n) until it reaches `decay`), so early
    random weights fade quickly."""


def predictions_from_shorthand(value: Any) -> Any:
    """`log_predictions: 4` -> {count: 4}."""
    return {"count": value} if isinstance(value, int) else value


class SamplingConfig(StrictModel):
    """Where training crops are placed."""

    rare_class_crops: float = Field(ge=0, le=1)
    """Share of training crops centred on a pixel of a rare class (the train_transforms' `random_crop`)."""
    rare_classes: list[str] | None = Field(None, min_length=1)
    """Class names; default: the classes with fewer training pixels than half the median class."""


class PredictionLogging(StrictModel):
    """A fixed, seeded set of validation images predicted after every `every` validations (W&B), and the
    `worst` validation images at the best checkpoint when the run ends (W&B table, worst_predictions.png)."""

    count: int = Field(4, ge=0)
    every: int = Field(1, ge=1)
    worst: int = Field(8, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_count(cls, value: Any) -> Any:
        return predictions_from_shorthand(value)


TrackerName = Literal["wandb", "mlflow", "tensorboard", "none"]
TRACKER_CHOICES = get_args(TrackerName)


class Experiment(StrictModel):
    """One resolved experiment: the top-level `model`, then `defaults`, then the experiment's own keys."""

    model: ModelConfig
    batch_size: int = Field(8, gt=0)
    lr: float = Field(1e-3, gt=0)
    max_epochs: int = Field(10, gt=0)
    gpu: int | None = Field(None, ge=0)
    """CUDA device index; null picks GPU 0 when there is one, else the CPU. Shorthand for one device."""
    devices: int | list[int] | None = None
    """Several devices: a count (GPUs, or CPU processes without a GPU) or a list of GPU indices."""
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    accumulate_grad_batches: int = Field(1, ge=1)
    sync_batchnorm: bool = False
    """Compute BatchNorm statistics over all processes (useful with small per-device batches)."""
    seed: int = Field(42, ge=0)
    num_workers: int | None = Field(None, ge=0)
    """DataLoader workers; null means min(4, CPU count)."""
    ignore_index: int | None = None
    """Label value excluded from the loss and every metric (e.g. 11 for CamVid's void)."""
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    channels_last: bool = False
    """NHWC memory layout: faster convolutions on tensor-core GPUs; no gain on CPU."""
    compile: bool = False
    """torch.compile the model: pays off on GPUs for long runs; slower start-up, no gain on CPU."""
    cache: Literal["ram"] | None = None
    """`ram`: decode the dataset once into shared memory used by every DataLoader worker."""
    train_transforms: list[TransformSpec] = Field(default_factory=list)
    val_transforms: list[TransformSpec] = Field(default_factory=list)
    normalize: NormalizationMode | ExplicitNormalization = "imagenet"
    """How pixels become model inputs, the same in train, val, predict, evaluate and exports."""
    label_map: dict[int, int] | None = None
    """Stored mask value -> class (or ignore_index), e.g. {255: 1} for 0/255 binary masks."""
    sampling: SamplingConfig | None = None
    average: AverageConfig | None = Field(default_factory=AverageConfig)
    ema: EmaConfig | None = None
    log_predictions: PredictionLogging = Field(default_factory=PredictionLogging)
    state_every_seconds: float = Field(60.0, ge=0)
    """state_latest.ckpt (for --resume) is written at an epoch's end once this long has passed since the last
    one (0: every epoch), and always at the epoch training stops at. A kill loses at most about this much."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    early_stopping: EarlyStoppingConfig | None = None
    loss: LossConfig = Field(default_factory=_default_loss)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    tracker: TrackerName | list[TrackerName] = "wandb"
    """Where metrics, parameters, pictures and checkpoints go besides the run folder: one tracker, several, or none."""

    @field_validator("tracker", mode="before")
    @classmethod
    def _known_trackers(cls, value: Any) -> Any:
        names = value if isinstance(value, list) else [value]
        for name in names:
            if isinstance(name, str) and name not in TRACKER_CHOICES:
                raise ValueError(f"unknown tracker '{name}'; {did_you_mean(name, TRACKER_CHOICES)}")
        if "none" in names and len(names) > 1:
            raise ValueError("`none` cannot be listed with other trackers")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("label_map")
    @classmethod
    def _labels_in_range(cls, value: dict[int, int] | None) -> dict[int, int] | None:
        for number in sorted({*value, *value.values()} if value else ()):
            if not 0 <= number <= MAX_LABEL:
                raise ValueError(
                    f"{number} is not a label: masks are 8- or 16-bit images, so stored values and classes are "
                    f"0..{MAX_LABEL}"
                )
        return value

    @field_validator("devices")
    @classmethod
    def _devices_positive(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 1 or isinstance(value, list) and (not value or min(value) < 0):
            raise ValueError("devices is a count of at least 1 or a non-empty list of GPU indices")
        return value

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Experiment:
        if self.gpu is not None and self.devices is not None:
            raise ValueError("set either `gpu` (one device) or `devices` (several), not both")
        weights = self.loss.class_weights
        if weights == "median_frequency" and self.model.classes == 1:
            raise ValueError(
                "loss.class_weights: median_frequency weighs softmax classes; with `model.classes: 1` (one sigmoid "
                "output) use `model.classes: 2` or remove class_weights"
            )
        if isinstance(weights, list) and len(weights) != self.model.classes:
            raise ValueError(f"loss.class_weights has {len(weights)} values but model.classes is {self.model.classes}")
        if isinstance(self.normalize, ExplicitNormalization):
            for key in ("mean", "std"):
                values = getattr(self.normalize, key)
                if len(values) not in (1, self.model.in_channels):
                    raise ValueError(
                        f"normalize.{key} has {len(values)} values but model.in_channels is "
                        f"{self.model.in_channels}; give one value per channel (or one for all)"
                    )
        return self

    @property
    def trackers(self) -> list[str]:
        """The chosen trackers, in order, without `none`."""
        names = self.tracker if isinstance(self.tracker, list) else [self.tracker]
        return [name for name in dict.fromkeys(names) if name != "none"]

    @property
    def average_start(self) -> int | None:
        """1-based first epoch of the weight average, or None without one."""
        if self.average is None:
            return None
        return self.average.start_epoch or max(1, round(0.75 * self.max_epochs))


SHORTHANDS = {"loss": loss_from_shorthand, "monitor": monitor_from_shorthand,
              "log_predictions": predictions_from_shorthand}  # fmt: skip
"""Top-level keys whose value may be written short; `--set` and `search:` expand one before setting a key in it."""


class ExperimentFile(StrictModel):
    """The file as written: the blocks are merged and validated per experiment by the loader."""

    model: dict[str, Any]
    defaults: dict[str, Any] = Field(default_factory=dict)
    experiments: dict[str, dict[str, Any] | None] = Field(min_length=1)
    search: dict[str, SearchDistribution] = Field(default_factory=dict)
    """Key paths (as `--set` writes them) -> the values `segcli tune` samples for them."""
