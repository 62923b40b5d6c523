"""Seeded sample picking for previews and W&B, optionally through the experiment's augmentations (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcli.config.schema import Experiment
from segcli.data.check_report import DatasetReport, format_problems
from segcli.data.checks import check_dataset_cached
from segcli.data.io import Pair, label_lookup, list_pairs, never_scored_label, read_pair
from segcli.drawing.colours import display_image
from segcli.drawing.pictures import Sample
from segcli.errors import ConfigError, DatasetError


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


@dataclass
class Preview:
    """Samples of one split as `preview-samples` draws them."""

    samples: list[Sample]
    ignored: int | None
    """The label drawn as ignored: ignore_index, or the never-scored label outside regions of interest."""
    report: DatasetReport
    """The split's dataset check; a split that fails it is drawn anyway (values that are not classes in white)."""


def preview_samples(root: Path, split: str, class_names: list[str], experiment: Experiment | None = None, *,
                    experiment_name: str = "", ignore_index: int | None = None, count: int = 4, seed: int = 0,
                    augmented: bool = False, bands: Sequence[int] | None = None) -> Preview:  # fmt: skip
    """`count` seeded samples of `split`, read as training reads them (the experiment's channels, label map and
    ignore_index, unless `ignore_index` is given); with `augmented`, through its train transforms."""
    if augmented and experiment is None:
        raise ConfigError(
            "--augmented shows an experiment's train transforms: also pass --config FILE --experiment NAME"
        )
    label_map = experiment.label_map if experiment else None
    if experiment is not None and ignore_index is None:
        ignore_index = experiment.ignore_index
    report = check_dataset_cached(root, [split], class_names, ignore_index, label_map=label_map)
    pairs = list_pairs(root, split)
    if not pairs:
        raise DatasetError(
            f"split '{split}' of {root} has no image/mask pairs to draw:\n{format_problems(report.errors)}"
        )
    stats = report.splits[split]
    channels = experiment.model.in_channels if experiment else stats.channels.most_common(1)[0][0]
    never_scored = never_scored_label(ignore_index, len(class_names))
    pipeline = None
    if augmented:
        from segcli.data.transforms import PixelStats, output_sizes, preview_pipeline

        where = f"experiment '{experiment_name}': train_transforms"
        scale = PixelStats(stats.max_pixel_value()).max_pixel_value
        pipeline = preview_pipeline(experiment.train_transforms, where, scale, seed=seed, fill_label=never_scored)
        output_sizes(pipeline, where, stats.image_sizes, channels, stats.dtype or "uint8", tries=1)
    samples = load_samples(choose_pairs(pairs, count, seed), channels, pipeline=pipeline,
                           label_lookup=label_lookup(label_map), never_scored=never_scored, bands=bands)  # fmt: skip
    # Outside a region of interest is drawn as ignored, also without an ignore_index (the internal label then).
    return Preview(samples, never_scored if any(pair.roi for pair in pairs) else ignore_index, report)
