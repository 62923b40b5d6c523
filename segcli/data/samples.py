"""Seeded sample picking for previews and W&B, optionally through the experiment's augmentations (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segcli.data.io import Pair, read_image, read_mask


@dataclass
class Sample:
    name: str
    image: np.ndarray  # HxWxC uint8, displayable
    mask: np.ndarray  # HxW class indices


def choose_pairs(pairs: Sequence[Pair], count: int, seed: int) -> list[Pair]:
    """`count` distinct pairs picked with `seed`, in dataset order: the same seed, the same pairs."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    return [pairs[int(index)] for index in sorted(chosen)]


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo Normalize (max_pixel_value 255) so a person sees pixels, never normalised values."""
    restored = (image * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * 255.0
    return restored.clip(0, 255).astype(np.uint8)


def load_samples(
    pairs: Sequence[Pair],
    in_channels: int = 3,
    pipeline=None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> list[Sample]:
    """Read the pairs; with a pipeline (ending in Normalize), show what the model sees, de-normalised."""
    samples = []
    for pair in pairs:
        image, mask = read_image(pair.image, in_channels), read_mask(pair.mask)
        if pipeline is not None:
            out = pipeline(image=image, mask=mask)
            image, mask = denormalize(out["image"], *normalization), np.asarray(out["mask"])
        samples.append(Sample(pair.image.name, image, mask))
    return samples
