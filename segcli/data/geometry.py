"""How an image becomes the model's input and how the model's output maps back: one owner for training,
validation, `predict`, `evaluate` and exports.

- Size multiple: a batch of any size is padded bottom/right (reflected) to the model's size multiple and
  its output cropped back (`pad_to_multiple`, `crop`), in the LightningModule and in inference alike. No
  pipeline needs a pad for it, and no padded pixel is ever trained on or scored.
- Input size: when the val pipeline resizes every image to one size (`fixed_input_size`), that size is the
  model's, stored with it. Inference resizes images with the very transform training used (Albumentations'
  Resize: OpenCV bilinear, after the pixels are brought to 0..1 as `UnitRange` does: `input_pipeline`)
  and resizes the probabilities back bilinearly (`resize_back`); masks are resized nearest, by that Resize.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.augmentations.crops.transforms import CropSizeError

from segcli.artifacts.model_info import Normalization
from segcli.config.schema import TransformSpec
from segcli.data.transforms import build_pipeline, lookup_transform, preview_pipeline


def pad_to_multiple(batch: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right so height and width are multiples; returns the original (height, width) for `crop`.

    Reflection (the image continues plausibly), or edge replication where the padding is too large to
    reflect.
    """
    height, width = batch.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return batch, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(batch, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def crop(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return batch[..., : size[0], : size[1]]


def fixed_input_size(specs: Sequence[TransformSpec | dict[str, Any]], channels: int) -> list[int] | None:
    """[height, width] when the val pipeline resizes every image to one size: it holds a `resize` whose size is
    what comes out, whatever size goes in (tried on two blank images). None otherwise (no resize, or a crop or pad
    after it), and the model then takes images at their own size."""
    specs = [TransformSpec.model_validate(spec) for spec in specs]
    sizes = [(spec.params["height"], spec.params["width"]) for spec in specs if lookup_transform(spec.name) is A.Resize]
    if not sizes:
        return None
    height, width = sizes[-1]
    pipeline = preview_pipeline(specs, "val_transforms", 1.0, fill_label=0)
    outputs = set()
    for size in ((2 * height + 1, 2 * width + 3), (height // 2 + 3, width // 2 + 5)):
        blank = np.zeros((*size, channels), np.float32)
        try:
            outputs.add(pipeline(image=blank, mask=np.zeros(size, np.uint8))["image"].shape[:2])
        except CropSizeError:
            return None
    return [height, width] if outputs == {(height, width)} else None


def input_pipeline(normalization: Normalization, resize: Sequence[int] | None):
    """Images as inference feeds them to the model: training's own pipeline with the stored normalisation, and
    Albumentations' Resize to (height, width) when `resize` is given (no mask goes through it)."""
    specs = [TransformSpec(name="Resize", params={"height": resize[0], "width": resize[1]})] if resize else []
    return build_pipeline(specs, "--resize", normalization, fill_label=0)


def resize_back(probabilities: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """NxKxhxw class probabilities -> NxKxHxW at the images' own (height, width), bilinearly."""
    if tuple(probabilities.shape[-2:]) == tuple(size):
        return probabilities
    return F.interpolate(probabilities, size=tuple(size), mode="bilinear", align_corners=False)
