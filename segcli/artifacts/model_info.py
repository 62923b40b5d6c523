"""`ModelInfo`: what it takes to rebuild and feed a model, stored in every checkpoint and every export's sidecar,
and parsed by one function."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segcli.errors import CheckpointError

INPUT_NAME, OUTPUT_NAME = "image", "logits"


@dataclass(frozen=True)
class ModelInfo:
    """What it takes to rebuild and feed a model: stored in every checkpoint and every export's sidecar."""

    arch: str
    encoder_name: str
    in_channels: int
    classes: int
    class_names: list[str]
    ignore_index: int | None
    normalization: dict[str, Any]
    """`mode` (imagenet, dataset, explicit: `(pixel / max_pixel_value - mean) / std`; image, min_max: per image)."""
    size_multiple: int
    model_params: dict[str, Any] = field(default_factory=dict)
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
    source: dict[str, Any] = field(default_factory=dict)
    """Where the weights came from: checkpoint path, kind, run name, epoch (1-based), metric."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> ModelInfo:
        try:
            return cls(
                arch=str(data["arch"]),
                encoder_name=str(data["encoder_name"]),
                in_channels=int(data["in_channels"]),
                classes=int(data["classes"]),
                class_names=[str(name) for name in data["class_names"]],
                ignore_index=None if data.get("ignore_index") is None else int(data["ignore_index"]),
                normalization=_normalization(data["normalization"]),
                size_multiple=int(data.get("size_multiple") or 1),
                model_params=dict(data.get("model_params") or {}),
                label_map=[[int(a), int(b)] for a, b in data["label_map"]] if data.get("label_map") else None,
                input_size=[int(v) for v in data["input_size"]] if data.get("input_size") else None,
                val_transforms=_transforms(data["val_transforms"]) if data.get("val_transforms") is not None else None,
                resize=[int(v) for v in data["resize"]] if data.get("resize") else None,
                image_dtype=str(data["image_dtype"]) if data.get("image_dtype") else None,
                image_scale=float(data["image_scale"]) if data.get("image_scale") else None,
                source=dict(data.get("source") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: no valid model description ({exc!r})") from None

    def with_source(self, **source: Any) -> ModelInfo:
        return ModelInfo(**{**asdict(self), "source": {**self.source, **source}})

    @property
    def binary(self) -> bool:
        """smp's binary convention: one output channel, sigmoid, foreground above 0.5."""
        return self.classes == 1

    def sidecar(self) -> dict[str, Any]:
        """The model part of an export's sidecar: plain JSON data, plus how to feed the model."""
        norm = self.normalization
        if norm["mode"] in ("image", "min_max"):
            recipe = f"per image: {norm['mode']} normalisation of each image (see normalization.mode)"
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


def _transforms(data: list[Any]) -> list[dict[str, Any]]:
    return [{"name": str(item["name"]), "params": dict(item.get("params") or {})} for item in data]


def _normalization(data: dict[str, Any]) -> dict[str, Any]:
    mode = str(data.get("mode", "explicit"))
    values = {key: None if data.get(key) is None else [float(v) for v in data[key]] for key in ("mean", "std")}
    if mode not in ("image", "min_max") and (values["mean"] is None or values["std"] is None):
        raise ValueError(f"normalization mode {mode} needs mean and std")
    return {"mode": mode, **values, "max_pixel_value": float(data.get("max_pixel_value") or 255.0)}
