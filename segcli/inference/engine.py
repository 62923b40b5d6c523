"""From images to class probabilities, the same for every model source and for ensembles.

- preprocessing is training's own pipeline with the normalisation stored with the model (and, when the
  model has a fixed input size, Albumentations' Resize to it: `data/geometry.py`), so a pixel reaches the
  model exactly as it did during validation;
- any image size works: the batch is padded (reflected) up to the model's size multiple and the
  output cropped back, by the functions training uses (`data/geometry.py`); `resize` runs the model at
  another scale and resizes the probabilities back;
- with a tile size, large images go through a sliding window whose overlapping tiles are blended
  with Gaussian weights (centre pixels count more than tile borders);
- flip test-time augmentation averages the probabilities of the image and of its mirror image.

Scores are softmax probabilities (for a one-channel binary model: [1 - p, p] from the sigmoid); the
predicted mask is their first maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segcli.artifacts.model_info import ModelInfo
from segcli.data.geometry import crop, input_pipeline, pad_to_multiple

Forward = Callable[[torch.Tensor], torch.Tensor]
"""A model: normalised NCHW float32 batch -> NCHW logits."""
Scores = Callable[[torch.Tensor], torch.Tensor]
"""A normalised NCHW batch of any size -> NxKxHxW class probabilities."""


@dataclass(frozen=True)
class InferenceOptions:
    batch_size: int = 4
    """Images per forward pass (tiles per forward pass with `tile`)."""
    tile: int | None = None
    """Sliding-window tile size in pixels (rounded up to the size multiple); None: whole images."""
    overlap: float = 0.25
    """Fraction of a tile shared with its neighbour."""
    flip_tta: bool = False
    """Average with the horizontally flipped image's prediction."""
    resize: tuple[int, int] | None = None
    """(height, width) the model sees; probabilities are resized back to each image's own size."""


def to_batch(images: Sequence[np.ndarray], info: ModelInfo, resize: Sequence[int] | None = None) -> torch.Tensor:
    """Same-size HxWxC images (any depth) -> a normalised NCHW float32 batch, through training's own pipeline
    (resized to (height, width) first when `resize` is given)."""
    sizes = {image.shape for image in images}
    if len(sizes) != 1:
        raise ValueError(f"one batch holds images of one size, got {sorted(sizes)}")
    channels = images[0].shape[2] if images[0].ndim == 3 else 1
    if channels != info.in_channels:
        raise ValueError(f"model takes {info.in_channels} channels, image has {channels}")
    pipeline = input_pipeline(info.normalization, resize)
    return torch.stack([pipeline(image=image.reshape(*image.shape[:2], channels))["image"] for image in images])


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; a one-channel (binary) model's sigmoid p becomes the two classes [1 - p, p]."""
    logits = logits.float()
    if logits.shape[1] == 1:
        foreground = logits.sigmoid()
        return torch.cat([1 - foreground, foreground], dim=1)
    return logits.softmax(1)


def model_scores(forward: Forward, multiple: int) -> Scores:
    """A model's probabilities for a batch of any size (padded to the multiple, cropped back)."""

    def scores(batch: torch.Tensor) -> torch.Tensor:
        padded, size = pad_to_multiple(batch, multiple)
        return crop(logits_to_probabilities(forward(padded)), size)

    return scores


def with_flip(scores: Scores) -> Scores:
    """Flip TTA: the mean of the prediction and the mirrored prediction of the mirrored image."""

    def flipped(batch: torch.Tensor) -> torch.Tensor:
        return (scores(batch) + scores(batch.flip(-1)).flip(-1)) / 2

    return flipped


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Evenly spaced window starts from 0 to length - tile, at most `stride` apart."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def gaussian_window(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Blending weights: 1 at the tile centre, falling to exp(-8) at its edges (sigma = size / 8)."""

    def axis(size: int) -> torch.Tensor:
        positions = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
        return torch.exp(-(positions**2) / (2 * (size / 8) ** 2))

    return axis(height)[:, None] * axis(width)[None, :]


def sliding_window(scores: Scores, image: torch.Tensor, tile: int, overlap: float, batch_size: int) -> torch.Tensor:
    """One 1xCxHxW image -> 1xKxHxW scores, from overlapping tiles blended with Gaussian weights."""
    height, width = image.shape[-2:]
    tile_h, tile_w = min(tile, height), min(tile, width)
    stride_h = max(1, int(tile_h * (1 - overlap)))
    stride_w = max(1, int(tile_w * (1 - overlap)))
    windows = [(y, x) for y in tile_starts(height, tile_h, stride_h) for x in tile_starts(width, tile_w, stride_w)]
    weight = gaussian_window(tile_h, tile_w, image.device)
    total = None
    norm = torch.zeros(height, width, device=image.device)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        tiles = torch.cat([image[..., y : y + tile_h, x : x + tile_w] for y, x in chunk])
        tile_scores = scores(tiles)
        if total is None:
            total = torch.zeros(1, tile_scores.shape[1], height, width, device=tile_scores.device)
            norm = norm.to(tile_scores.device)
            weight = weight.to(tile_scores.device)
        for (y, x), score in zip(chunk, tile_scores, strict=True):
            total[0, :, y : y + tile_h, x : x + tile_w] += score * weight
            norm[y : y + tile_h, x : x + tile_w] += weight
    return total / norm


def probabilities(scores: Scores, batch: torch.Tensor, multiple: int, options: InferenceOptions) -> torch.Tensor:
    """Class probabilities NxKxHxW for a normalised batch (at the size the model runs at): flip TTA and sliding
    window as asked."""
    if options.flip_tta:
        scores = with_flip(scores)
    height, width = batch.shape[-2:]
    if options.tile is None or (height <= options.tile and width <= options.tile):
        return scores(batch)
    tile = -(-options.tile // multiple) * multiple
    return torch.cat(
        [sliding_window(scores, batch[i : i + 1], tile, options.overlap, options.batch_size) for i in range(len(batch))]
    )


def masks_from(probs: torch.Tensor, classes: int) -> list[np.ndarray]:
    """NxKxHxW probabilities -> HxW class-index masks (uint8, uint16 beyond 256 classes)."""
    dtype = np.uint8 if classes <= 256 else np.uint16
    return [mask.cpu().numpy().astype(dtype) for mask in probs.max(1).indices]


def same_size_batches(items: Iterator[tuple[Any, np.ndarray]], batch_size: int) -> Iterator[list[tuple[Any, Any]]]:
    """Group consecutive (key, image) items into batches of one image size, order kept."""
    batch: list[tuple[Any, np.ndarray]] = []
    for key, image in items:
        if batch and (len(batch) == batch_size or image.shape != batch[0][1].shape):
            yield batch
            batch = []
        batch.append((key, image))
    if batch:
        yield batch


SCALE_TOLERANCE = 1.25
"""Images more than this much larger or smaller (per side, on average) than the training images get a warning."""


def scale_warning(info: ModelInfo, height: int, width: int) -> str | None:
    """A hint when images run at their own size are far from the size the model was trained at (its mIoU can
    collapse), naming the `--resize` that restores the training scale."""
    if not info.input_size:
        return None
    trained_h, trained_w = info.input_size
    ratio = math.sqrt((height * width) / (trained_h * trained_w))
    if 1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE:
        return None
    return (
        f"images are {width}x{height} but the model was trained on {trained_w}x{trained_h} (WxH), "
        f"{ratio:.2f}x the scale, and runs at their own size; if objects appear at another scale than in training, "
        f"pass --resize {trained_w}x{trained_h}"
    )


def describe_depth(dtype: str, scale: float | None) -> str:
    """'uint16 12-bit data (0..4095)', 'uint8 data (0..255)', 'float32 data'."""
    kind = np.dtype(dtype)
    if kind.kind in "ui" and scale:
        bits = round(math.log2(scale + 1))
        return f"{dtype}{f' {bits}-bit' if bits != 8 * kind.itemsize else ''} data (0..{scale:g})"
    return f"{dtype} data"


def depth_warning(info: ModelInfo, image: np.ndarray) -> str | None:
    """A hint when an image's pixels are not of the kind the model was trained on. They are divided by the training
    data's scale, so other data reaches the model at other values (a 12-bit model sees 8-bit images 16 times
    darker). Per-image normalisation (`image`, `min_max`) is the same at any scale: no hint."""
    if info.image_dtype is None or info.normalization.per_image:
        return None
    trained = describe_depth(info.image_dtype, info.image_scale)
    divided = f"divided by {info.normalization.max_pixel_value:g} as the training images were"
    if image.dtype.name != info.image_dtype:
        return (
            f"the model was trained on {trained}; these images are {image.dtype.name}: their pixels are {divided}, so "
            "the model sees other values than it learned; convert them to the training data's depth"
        )
    largest = float(image.max()) if image.size else 0.0
    if image.dtype.kind in "ui" and info.image_scale and largest > info.image_scale:
        return (
            f"the model was trained on {trained}; these images hold {int(largest).bit_length()}-bit values (up to "
            f"{largest:g}): their pixels are {divided}, so the model sees values beyond any it learned; convert them "
            "to the training data's depth"
        )
    return None


class InputWarnings:
    """What does not fit the model in the inputs of one run, each kind said once: the scale (one per image size),
    the bit depth (once)."""

    def __init__(self, info: ModelInfo, resize: Sequence[int] | None):
        self.info, self.resize = info, resize
        self.messages: list[str] = []
        self._depth_said = False

    def check(self, image: np.ndarray) -> None:
        scale = None if self.resize else scale_warning(self.info, *image.shape[:2])
        if scale and scale not in self.messages:
            self.messages.append(scale)
        if not self._depth_said:
            depth = depth_warning(self.info, image)
            if depth:
                self.messages.append(depth)
                self._depth_said = True
