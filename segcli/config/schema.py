"""The experiment-file schema. Pydantic only: importing this must stay cheap (no torch)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


class MonitorConfig(StrictModel):
    """The metric that decides which epoch is stored as ckpt_best.pth."""

    metric: str = "val/mIoU"
    mode: Literal["min", "max"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"metric": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _infer_mode(self) -> MonitorConfig:
        if self.mode is None:
            self.mode = _default_mode(self.metric)
        return self


class LossTerm(StrictModel):
    name: str
    weight: float = Field(1.0, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)


class LossConfig(StrictModel):
    """A weighted sum of smp losses. `loss: dice` and `loss: [dice, cross_entropy]` are shorthands."""

    terms: list[LossTerm] = Field(min_length=1)
    class_weights: list[float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"terms": [{"name": value}]}
        if isinstance(value, list):
            return {"terms": [{"name": t} if isinstance(t, str) else t for t in value]}
        return value


def _default_loss() -> LossConfig:
    return LossConfig(terms=[LossTerm(name="cross_entropy"), LossTerm(name="dice")])


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
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    early_stopping: EarlyStoppingConfig | None = None
    loss: LossConfig = Field(default_factory=_default_loss)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

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
        if weights is not None and len(weights) != self.model.classes:
            raise ValueError(f"loss.class_weights has {len(weights)} values but model.classes is {self.model.classes}")
        return self


class ExperimentFile(StrictModel):
    """The file as written: the blocks are merged and validated per experiment by the loader."""

    model: dict[str, Any]
    defaults: dict[str, Any] = Field(default_factory=dict)
    experiments: dict[str, dict[str, Any] | None] = Field(min_length=1)


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "required": []}


def experiment_file_json_schema() -> dict[str, Any]:
    """JSON Schema of a whole experiment file, for editors (completion and validation as you type).

    `defaults` and each experiment are partial experiments: every key optional, `model` keys too.
    """
    experiment = Experiment.model_json_schema(ref_template="#/$defs/{model}")
    definitions = experiment.pop("$defs")
    definitions["ModelConfigPartial"] = _optional(definitions["ModelConfig"])
    partial = _optional(experiment)
    partial["properties"] = {
        **partial["properties"],
        "model": {"$ref": "#/$defs/ModelConfigPartial"},
        "loss": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/LossTerm"}]}},
                {"$ref": "#/$defs/LossConfig"},
            ]
        },
        "monitor": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/MonitorConfig"}]},
    }
    definitions["ExperimentKeys"] = partial
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "segcli experiment file",
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "experiments"],
        "properties": {
            "model": {"$ref": "#/$defs/ModelConfig"},
            "defaults": {"$ref": "#/$defs/ExperimentKeys"},
            "experiments": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {"anyOf": [{"$ref": "#/$defs/ExperimentKeys"}, {"type": "null"}]},
            },
        },
        "$defs": definitions,
    }
