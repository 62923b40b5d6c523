"""`ModelInfo`: what it takes to rebuild and feed a model, stored in every checkpoint and every export's sidecar,
and parsed by one function."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from segcli.errors import CheckpointError

INPUT_NAME, OUTPUT_NAME = "image", "logits"
PER_IMAGE_MODES = ("image", "min_max")


class Normalization(BaseModel):
    """How pixels become model input, resolved once from the experiment's `normalize:`. imagenet, dataset and
    explicit: `(pixel / max_pixel_value - mean) / std` per channel; per image (no mean/std): `image` rescales each
    channel to mean 0, std 1, `min_max` the image's range to 0..1."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["imagenet", "dataset", "explicit", "image", "min_max"]
    mean: list[float] | None = None
    std: list[float] | None = None
    max_pixel_value: float = 255.0

    @model_validator(mode="after")
    def _mean_and_std_unless_per_image(self) -> Normalization:
        if not self.per_image and (self.mean is None or self.std is None):
            raise ValueError(f"normalization mode {self.mode} needs mean and std")
        return self

    @property
    def per_image(self) -> bool:
        return self.mode in PER_IMAGE_MODES


class ModelInfo(BaseModel):
    """What it takes to rebuild and feed a model: stored in every checkpoint and every export's sidecar (whose
    other keys it ignores)."""

    model_config = ConfigDict(frozen=True)

    arch: str
    encoder_name: str
    in_channels: int
    classes: int
    class_names: list[str]
    ignore_index: int | None
    normalization: Normalization
    size_multiple: int = 1
    model_params: dict[str, Any] = {}
    label_map: list[list[int]] | None = None
    """[[stored value, class], ...] applied to masks before scoring (evaluate)."""
    input_size: list[int] | None = None
    """[height, width] of the images the model saw in training (after the val transforms)."""
    val_transforms: list[dict[str, Any]] | None = None
    """The val pipeline's transforms ([{name, params}, ...]): `evaluate` scores images through them, as validation
    scored them. None in older files (a checkpoint's experiment then holds them)."""
    resize: list[int] | None = None
    """[height, width] the val pipeline resized every image to: the model's input size, which predict, evaluate
    and exports' users apply by default (Albumentations' Resize, probabilities resized back)."""
    image_dtype: str | None = None
    """The training images' dtype (uint8, uint16, float32, ...), from the dataset check."""
    image_scale: float | None = None
    """What the training images were divided by to reach 0..1: 255 for 8-bit, 4095 for 12-bit data, 1 for floats."""
    source: dict[str, Any] = {}
    """Where the weights came from: checkpoint path, kind, run name, epoch (1-based), metric."""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any, where: Path) -> ModelInfo:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            place = ".".join(str(part) for part in error["loc"]) or "model"
            raise CheckpointError(f"{where}: no valid model description ({place}: {error['msg']})") from None

    def with_source(self, **source: Any) -> ModelInfo:
        return self.model_copy(update={"source": {**self.source, **source}})

    @property
    def binary(self) -> bool:
        """smp's binary convention: one output channel, sigmoid, foreground above 0.5."""
        return self.classes == 1

    def sidecar(self) -> dict[str, Any]:
        """The model part of an export's sidecar: plain JSON data, plus how to feed the model."""
        if self.normalization.per_image:
            recipe = f"per image: {self.normalization.mode} normalisation of each image (see normalization.mode)"
        else:
            recipe = "(pixel / max_pixel_value - mean) / std per channel"
        resize = ""
        if self.resize:
            resize = (f"resized to {self.resize[1]}x{self.resize[0]} (WxH; OpenCV bilinear, the size the model was "
                      "trained at; resize the output probabilities back bilinearly), then ")  # fmt: skip
        return {
            **self.to_dict(),
            "input": {
                "name": INPUT_NAME,
                "layout": "NCHW",
                "dtype": "float32",
                "preprocessing": f"{'RGB ' if self.in_channels == 3 else ''}{resize}{recipe}; height and width padded "
                f"to a multiple of {self.size_multiple}"
                + (
                    f"; pixels of the training data's kind ({self.image_dtype}, up to {self.image_scale:g})"
                    if self.image_dtype and self.image_scale
                    else ""
                ),
            },
            "output": {
                "name": OUTPUT_NAME,
                "layout": "NCHW",
                "meaning": "logits of the foreground (sigmoid)"
                if self.binary
                else "logits, one channel per class (softmax)",
            },
        }
