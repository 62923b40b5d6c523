"""Transform registry: experiment `{name, params}` entries -> one Albumentations Compose."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from functools import cache

from segcli.config.schema import TransformSpec
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
    import albumentations as A

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


def build_transform(spec: TransformSpec, where: str):
    """One transform; `where` names the list entry in error messages."""
    try:
        cls = lookup_transform(spec.name)
    except KeyError as exc:
        raise ConfigError(f"{where}.name: {exc.args[0]}") from None
    accepted = _accepted_params(cls)
    if accepted is not None:
        unknown = sorted(set(spec.params) - accepted)
        if unknown:
            raise ConfigError(
                f"{where}.params: {spec.name} has no parameter '{unknown[0]}'; "
                + did_you_mean(unknown[0], accepted - {"always_apply", "strict"})
            )
    try:
        return cls(**spec.params)
    except (ValueError, TypeError) as exc:
        # Albumentations validates parameters with pydantic (a ValueError) when they are built.
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{where}.params: invalid parameters for {spec.name}: {detail}") from None


def is_normalize(spec: TransformSpec) -> bool:
    return lookup_transform(spec.name).__name__ == "Normalize"


def normalization(specs: Sequence[TransformSpec], in_channels: int) -> tuple[list[float], list[float]]:
    """The mean/std the pipeline normalises with: the user's Normalize, else the encoder's (ImageNet)."""
    for spec in specs:
        if is_normalize(spec):
            mean = spec.params.get("mean", IMAGENET_MEAN)
            std = spec.params.get("std", IMAGENET_STD)
            return _per_channel(mean, in_channels), _per_channel(std, in_channels)
    return _per_channel(IMAGENET_MEAN, in_channels), _per_channel(IMAGENET_STD, in_channels)


def _per_channel(values, channels: int) -> list[float]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(values) == channels:
        return values
    return [sum(values) / len(values)] * channels


def build_pipeline(
    specs: Sequence[TransformSpec], where: str, in_channels: int, to_tensor: bool = True, seed: int | None = None
):
    """Compose the listed transforms, append Normalize unless present, then convert to tensors.

    Albumentations draws from the Compose's own generator (global seeds have no effect), so
    `seed` is what makes augmentations reproducible.
    """
    import albumentations as A

    transforms = [build_transform(spec, f"{where}[{index}]") for index, spec in enumerate(specs)]
    if not any(is_normalize(spec) for spec in specs):
        mean, std = normalization(specs, in_channels)
        transforms.append(A.Normalize(mean=mean, std=std))
    if to_tensor:
        from albumentations.pytorch import ToTensorV2  # imports torch: only where tensors are wanted

        transforms.append(ToTensorV2())
    return A.Compose(transforms, seed=seed)
