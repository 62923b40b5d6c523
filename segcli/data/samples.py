"""Seeded sample picking for previews and W&B, optionally through the experiment's augmentations (no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segcli.data.io import Pair, read_pair
from segcli.drawing.colours import display_image
from segcli.drawing.pictures import Sample


def choose_pairs(pairs: Sequence[Pair], count: int, seed: int) -> list[Pair]:
    """`count` distinct pairs picked with `seed`, in dataset order: the same seed, the same pairs."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    return [pairs[int(index)] for index in sorted(chosen)]


def load_samples(
    pairs: Sequence[Pair],
    in_channels: int = 3,
    *,
    pipeline=None,
    label_lookup: np.ndarray | None = None,
    never_scored: int = 255,
    bands: Sequence[int] | None = None,
) -> list[Sample]:
    """Read the pairs as displayable samples; with a pipeline (a `preview_pipeline`), after the
    experiment's augmentations, so a person sees what the model sees; `never_scored` outside each region of interest."""
    samples = []
    for pair in pairs:
        image, mask = read_pair(pair, in_channels, label_lookup, never_scored)
        if pipeline is not None:
            out = pipeline(image=image, mask=mask)
            image, mask = out["image"], np.asarray(out["mask"])
        samples.append(Sample(pair.image.name, display_image(image, bands), mask))
    return samples
