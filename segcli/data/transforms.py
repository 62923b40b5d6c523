"""Transforms: experiment `{name, params}` entries -> one Albumentations Compose, and the normalisation.

Normalisation has one source of truth, the experiment's `normalize:` key, resolved once into a
`Normalization` (`resolve_normalization`) that is stored in every checkpoint and export. `normalize_unit`
applies it as the last image step of every pipeline, training's and inference's alike, always giving float32.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import albumentations as A
import numpy as np
from albumentations.augmentations.crops.transforms import CropSizeError
from albumentations.pytorch import ToTensorV2

from segcli.artifacts.model_info import PER_IMAGE_MODES, Normalization
from segcli.config.schema import ExplicitNormalization, TransformSpec
from segcli.errors import ConfigError, did_you_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def snake_case(class_name: str) -> str:
    """RandomRotate90 -> random_rotate_90, PadIfNeeded -> pad_if_needed, CLAHE -> clahe."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=[0-9])", "_", class_name)
    return spaced.lower()


@cache
def transform_registry() -> dict[str, type]:
    """Every Albumentations transform, by class name and by snake_case alias."""
    registry: dict[str, type] = {}
    for class_name in dir(A):
        cls = getattr(A, class_name)
        if (
            isinstance(cls, type)
            and issubclass(cls, A.BasicTransform)
            and not inspect.isabstract(cls)
            and cls.__module__.startswith("albumentations.augmentations")
        ):
            registry[class_name] = cls
            registry[snake_case(class_name)] = cls
    return registry


def lookup_transform(name: str) -> type:
    registry = transform_registry()
    if name in registry:
        return registry[name]
    aliases = [key for key in registry if key.islower()]
    raise KeyError(f"unknown transform '{name}'; {did_you_mean(name, aliases)}")


def _accepted_params(cls: type) -> set[str] | None:
    """Keyword names of the transform's __init__, or None when it takes **kwargs."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {name for name in parameters if name != "self"}


def fills_mask_borders(cls: type) -> bool:
    """A transform that pads, or fills the borders it uncovers (rotations, affine and elastic warps, crops with
    `pad_if_needed`): its `fill_mask` becomes mask pixels that no image pixel stands for."""
    parameters = inspect.signature(cls.__init__).parameters
    return "fill_mask" in parameters and "border_mode" in parameters


def build_transform(spec: TransformSpec, where: str, fill_label: int | None = None):
    """One transform; `where` names the list entry in error messages. A transform that fills mask borders and
    was given no `fill_mask` fills them with `fill_label` (the never-scored label), not with class 0."""
    try:
        cls = lookup_transform(spec.name)
    except KeyError as exc:
        raise ConfigError(f"{where}.name: {exc.args[0]}") from None
    if cls.__name__ == "Normalize":
        raise ConfigError(
            f"{where}: normalisation is not a transform of one list; set it once for training, validation and "
            "inference with the experiment key `normalize:` (imagenet, dataset, image, min_max, or "
            "{mean: [...], std: [...], max_pixel_value: ...}) and remove this entry"
        )
    accepted = _accepted_params(cls)
    if accepted is not None:
        unknown = sorted(set(spec.params) - accepted)
        if unknown:
            raise ConfigError(
                f"{where}.params: {spec.name} has no parameter '{unknown[0]}'; "
                + did_you_mean(unknown[0], accepted - {"always_apply", "strict"})
            )
    params = dict(spec.params)
    if fill_label is not None and "fill_mask" not in params and fills_mask_borders(cls):
        params["fill_mask"] = fill_label
    try:
        return cls(**params)
    except (ValueError, TypeError) as exc:
        # Albumentations validates parameters with pydantic (a ValueError) when they are built.
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{where}.params: invalid parameters for {spec.name}: {detail}") from None


# --- normalisation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelStats:
    """What the dataset check measured over the training images: the scale and, per channel, mean and std
    in units of `max_pixel_value`."""

    max_pixel_value: float
    mean: list[float] | None = None
    std: list[float] | None = None


def _per_channel(values: Sequence[float], channels: int, key: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    raise ConfigError(f"normalize: {key} has {len(values)} values but model.in_channels is {channels}")


def resolve_normalization(normalize: Any, in_channels: int, stats: PixelStats) -> Normalization:
    """The experiment's `normalize` -> the stored form."""
    if isinstance(normalize, ExplicitNormalization):
        return Normalization(
            mode="explicit",
            mean=_per_channel(normalize.mean, in_channels, "mean"),
            std=_per_channel(normalize.std, in_channels, "std"),
            max_pixel_value=float(normalize.max_pixel_value or stats.max_pixel_value),
        )
    if normalize in PER_IMAGE_MODES:
        return Normalization(mode=normalize, max_pixel_value=stats.max_pixel_value)
    if normalize == "dataset":
        if stats.mean is None or stats.std is None:
            raise ConfigError("normalize: dataset needs the training images' statistics, and none were measured")
        std = [max(value, 1e-6) for value in stats.std]
        return Normalization(mode="dataset", mean=list(stats.mean), std=std, max_pixel_value=stats.max_pixel_value)
    if in_channels not in (1, 3):
        raise ConfigError(
            f"normalize: imagenet has values for RGB (or grey) images but model.in_channels is {in_channels}; "
            "use `normalize: dataset` (mean/std per band measured over your training images)"
        )
    mean = IMAGENET_MEAN if in_channels == 3 else [sum(IMAGENET_MEAN) / 3]
    std = IMAGENET_STD if in_channels == 3 else [sum(IMAGENET_STD) / 3]
    return Normalization(mode="imagenet", mean=list(mean), std=list(std), max_pixel_value=stats.max_pixel_value)


def to_unit_range(image: np.ndarray, max_pixel_value: float) -> np.ndarray:
    """Pixels as the augmentations expect them: uint8 as it is, anything else float32 in 0..1."""
    if image.dtype == np.uint8 and max_pixel_value == 255:
        return image
    return np.multiply(image, np.float32(1.0 / max_pixel_value), dtype=np.float32)


def normalize_unit(image: np.ndarray, spec: Normalization) -> np.ndarray:
    """A `to_unit_range` image (after augmentation) -> float32 model input, exactly as `spec` says."""
    pixels = np.multiply(image, np.float32(1 / 255), dtype=np.float32) if image.dtype == np.uint8 else image
    if spec.mode == "image":  # per image and channel: zero mean, unit variance
        mean = pixels.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
        std = np.maximum(pixels.std(axis=(0, 1), dtype=np.float64), 1e-6).astype(np.float32)
        return (pixels - mean) / std
    if spec.mode == "min_max":  # per image: 0..1 over all channels (keeps colour ratios)
        low, high = float(pixels.min()), float(pixels.max())
        return ((pixels - np.float32(low)) / np.float32(max(high - low, 1e-6))).astype(np.float32)
    std = np.asarray(spec.std, np.float32)
    out = pixels - np.asarray(spec.mean, np.float32)
    out /= std
    return out


def describe_normalization(spec: Normalization) -> str:
    """One line for --dry-run and summaries."""
    if spec.per_image:
        what = "each channel to mean 0, std 1" if spec.mode == "image" else "its range to 0..1"
        return f"{spec.mode}: every image rescales {what}"
    values = ", ".join(f"{m:.4g}/{s:.4g}" for m, s in zip(spec.mean, spec.std, strict=True))
    return f"{spec.mode}: (pixel / {spec.max_pixel_value:g} - mean) / std, mean/std per channel {values}"


class UnitRange(A.ImageOnlyTransform):
    """First step of every pipeline: pixels to the augmentations' range (`to_unit_range`)."""

    def __init__(self, max_pixel_value: float) -> None:
        super().__init__(p=1.0)
        self.max_pixel_value = max_pixel_value

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return to_unit_range(img, self.max_pixel_value)


class NormalizeInput(A.ImageOnlyTransform):
    """Last image step of the training pipelines: `normalize_unit`, the same code inference uses."""

    def __init__(self, normalization: Normalization) -> None:
        super().__init__(p=1.0)
        self.normalization = normalization

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return normalize_unit(img, self.normalization)


class RareClassCrop(A.RandomCrop):
    """`random_crop` with rare-class sampling (`sampling.rare_class_crops`): in `share` of the samples whose mask
    holds a rare class, the crop is centred (as far as the image allows) on a pixel of one. The class is drawn
    uniformly among the rare classes present, then one of its pixels, as nnU-Net oversamples foreground.
    Every other crop is RandomCrop's own."""

    def __init__(self, height: int, width: int, *, rare_classes: Sequence[int], share: float, **crop_params: Any):
        super().__init__(height=height, width=width, **crop_params)
        self.rare_classes = list(rare_classes)
        self.share = share

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        random_crop = super().get_params_dependent_on_data(params, data)
        if random_crop.get("pad_params") is not None or self.py_random.random() >= self.share:
            return random_crop
        mask = data["mask"]
        present = [label for label in self.rare_classes if (mask == label).any()]
        if not present:
            return random_crop
        rows, cols = np.nonzero(mask == self.py_random.choice(present))
        pick = self.py_random.randrange(len(rows))
        height, width = mask.shape[:2]
        top = min(max(int(rows[pick]) - self.height // 2, 0), height - self.height)
        left = min(max(int(cols[pick]) - self.width // 2, 0), width - self.width)
        return {**random_crop, "crop_coords": (left, top, left + self.width, top + self.height)}


@dataclass(frozen=True)
class RareCrops:
    """`sampling.rare_class_crops` resolved: the share of crops and the rare classes' labels."""

    share: float
    classes: tuple[int, ...]


def build_pipeline(
    specs: Sequence[TransformSpec], where: str, normalization: Normalization, seed: int | None = None, *,
    fill_label: int, rare_crops: RareCrops | None = None,
):  # fmt: skip
    """Compose: pixels to 0..1 (8-bit stays uint8), the listed transforms, the normalisation, tensors.

    Albumentations draws from the Compose's own generator (global seeds have no effect), so `seed` is
    what makes augmentations reproducible. `fill_label`: what pads and border fills put in masks (see
    `build_transform`). `rare_crops` turns the `random_crop` step into a RareClassCrop.
    """
    listed = _listed(specs, where, fill_label)
    if rare_crops is not None:
        listed = _with_rare_class_crops(listed, rare_crops, where)
    steps = [UnitRange(normalization.max_pixel_value), *listed, NormalizeInput(normalization), ToTensorV2()]
    return A.Compose(steps, seed=seed)


def _with_rare_class_crops(steps: list, rare_crops: RareCrops, where: str) -> list:
    crops = [index for index, step in enumerate(steps) if type(step) is A.RandomCrop]
    if len(crops) != 1:
        found = "none" if not crops else f"{len(crops)}"
        raise ConfigError(
            f"sampling.rare_class_crops places the `random_crop` step of {where}, which has {found}; add one "
            "`{name: random_crop, params: {height: H, width: W}}` (smaller than the images) or remove `sampling`"
        )
    crop = steps[crops[0]]
    params = {key: getattr(crop, key) for key in ("pad_if_needed", "pad_position", "border_mode", "fill", "fill_mask")}
    replacement = RareClassCrop(crop.height, crop.width, rare_classes=rare_crops.classes, share=rare_crops.share,
                                **params)  # fmt: skip
    return [*steps[: crops[0]], replacement, *steps[crops[0] + 1 :]]


def preview_pipeline(
    specs: Sequence[TransformSpec], where: str, max_pixel_value: float, seed: int | None = None, *, fill_label: int
):
    """The same transforms for pictures: no normalisation and no tensors, so the images stay displayable."""
    return A.Compose([UnitRange(max_pixel_value), *_listed(specs, where, fill_label)], seed=seed)


def _listed(specs: Sequence[TransformSpec], where: str, fill_label: int) -> list:
    return [build_transform(spec, f"{where}[{index}]", fill_label) for index, spec in enumerate(specs)]


def output_sizes(pipeline, where: str, image_sizes, channels: int, dtype: str, tries: int = 8) -> set[tuple[int, int]]:
    """Push blank images of every input size through the pipeline: the sizes the model will see.

    Several tries per size, so a random transform that changes the shape (a 90-degree rotation of a
    non-square image) shows up here rather than as a collate error mid-epoch; a crop larger than the
    images is a configuration error here, not a traceback in a DataLoader worker.
    """
    sizes = set()
    for height, width in image_sizes:
        blank = np.zeros((height, width, channels), dtype)
        for _ in range(tries):
            try:
                out = pipeline(image=blank, mask=np.zeros((height, width), np.uint8))["image"]
            except CropSizeError as exc:
                raise ConfigError(
                    f"{where}: {exc}; crop no larger than the images, or put a `pad_if_needed` or `resize` before "
                    "the crop"
                ) from exc
            sizes.add(tuple(out.shape[-2:]))
    return sizes
