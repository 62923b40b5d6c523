"""The dataset check: every problem in one pass, shared by `validate-dataset`, `train`, `evaluate` (no torch).

Each image and mask is decoded exactly once, in parallel threads (the decoders release the GIL). Results
stream into per-split counters, so memory does not grow with the dataset. Besides problems, the check
measures what training needs to know about the images: dtype, the bit depth actually used, and
per-channel means and their covariances (from every 4th row and column: the same figures to 3 digits, at a
fraction of the cost of the decode), from which the mean/std of any channel conversion follows exactly.

The folder layout of each split is checked first, by layout_check.py; the report's data structures, cache
and text live in check_report.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcli.data.check_report import (
    NAMES_KEPT,
    WARNING,
    DatasetReport,
    Problem,
    SplitStats,
    fingerprint,
    read_cached,
    write_cached,
)
from segcli.data.io import (
    JPEG_SUFFIXES,
    Pair,
    decode_image,
    label_lookup,
    map_labels,
    read_mask,
)
from segcli.data.layout_check import layout_problems

VOID_SHARE = 0.9  # a value just past the classes in this share of the masks looks like a void label
STATS_STRIDE = 4


@dataclass
class _PairResult:
    problems: list[Problem]
    size: tuple[int, int] | None = None  # (height, width)
    channels: int | None = None
    dtype: str | None = None
    max_value: float = 0.0
    sums: np.ndarray | None = None  # per channel, over the sampled pixels
    products: np.ndarray | None = None  # per pair of channels: the sum of x_i * x_j over the sampled pixels
    sampled: int = 0
    counts: np.ndarray | None = None


def _inspect_image(pair: Pair, split: str, result: _PairResult) -> np.ndarray | None:
    try:
        image = decode_image(pair.image)
    except OSError as exc:  # the reason predict gives when it skips the same file
        result.problems.append(Problem("unreadable-image", split, pair.image.name, str(exc)))
        return None
    result.size, result.channels, result.dtype = image.shape[:2], image.shape[2], image.dtype.name
    if image.size:
        result.max_value = float(np.nanmax(image))
    sample = image[::STATS_STRIDE, ::STATS_STRIDE].reshape(-1, image.shape[2]).astype(np.float64)
    result.sums, result.products, result.sampled = sample.sum(0), sample.T @ sample, len(sample)
    return image


def _inspect_pair(
    pair: Pair, split: str, num_classes: int, ignore_index: int | None, lookup: np.ndarray | None
) -> _PairResult:
    result = _PairResult([])
    problems = result.problems
    image = _inspect_image(pair, split, result)
    try:
        mask = read_mask(pair.mask)  # decoded fully: a truncated file fails here, not in the middle of training
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for undecodable files
        problems.append(Problem("unreadable-mask", split, pair.mask.name, f"cannot decode the mask ({exc})"))
        return result
    if image is not None and mask.shape[:2] != image.shape[:2]:
        detail = f"image is {image.shape[1]}x{image.shape[0]} but mask is {mask.shape[1]}x{mask.shape[0]} (WxH)"
        problems.append(Problem("size-mismatch", split, pair.mask.name, detail))
    if mask.ndim == 3:
        detail = (
            f"mask has {mask.shape[2]} channels: it looks colour-coded; convert it to one channel of class "
            "indices (palette PNGs are read as indices)"
        )
        problems.append(Problem("mask-not-single-channel", split, pair.mask.name, detail))
        return result
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != np.bool_:
        problems.append(
            Problem("mask-not-integer", split, pair.mask.name, f"mask pixels are {mask.dtype}, not integers")
        )
        return result
    if mask.dtype.kind == "i" and mask.size and mask.min() < 0:
        problems.append(Problem("mask-values", split, pair.mask.name, f"negative values (minimum {mask.min()})"))
        return result
    inside = _inspect_roi(pair, split, image, mask, problems)
    mapped = map_labels(mask, lookup)
    counts = np.bincount((mapped if inside is None else mapped[inside]).ravel(), minlength=num_classes)
    bad = [int(v) for v in np.flatnonzero(counts[num_classes:]) + num_classes if v != ignore_index]
    if bad:
        detail = "values " + ", ".join(map(str, bad)) + f" outside the classes 0..{num_classes - 1}"
        if pair.mask.suffix.lower() in JPEG_SUFFIXES:
            detail += " (a JPEG mask: lossy compression invents values between labels; save masks as PNG)"
        problems.append(Problem("mask-values", split, pair.mask.name, detail))
    result.counts = counts
    return result


def _inspect_roi(pair: Pair, split: str, image: np.ndarray | None, mask: np.ndarray, problems: list[Problem]):
    """The pair's region mask as a boolean array (True inside, where the mask is scored), or None when it has none
    or the region mask is unusable (a problem then says why)."""
    if pair.roi is None:
        return None
    name = f"roi/{pair.roi.name}"
    try:
        roi = read_mask(pair.roi)
    except (OSError, SyntaxError, ValueError) as exc:
        problems.append(Problem("unreadable-roi", split, name, f"cannot decode the region mask ({exc})"))
        return None
    reference = image if image is not None else mask
    if roi.shape[:2] != reference.shape[:2]:
        detail = (f"region mask is {roi.shape[1]}x{roi.shape[0]} but image is {reference.shape[1]}x"
                  f"{reference.shape[0]} (WxH)")  # fmt: skip
        problems.append(Problem("roi-size-mismatch", split, name, detail))
        return None
    if roi.ndim == 3:
        detail = f"region mask has {roi.shape[2]} channels; save it as one"
        problems.append(Problem("roi-not-single-channel", split, name, detail))
        return None
    values = np.unique(roi)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(map(str, values[:5].tolist())) + (", ..." if len(values) > 5 else "")
        detail = f"region mask holds values {shown}: it must be binary, 0 outside and one other value inside"
        problems.append(Problem("roi-not-binary", split, name, detail))
        return None
    return roi != 0 if mask.shape == roi.shape else None


def _inspect_all(
    work: list[tuple[str, Pair]], num_classes: int, ignore_index: int | None, lookup, workers: int
) -> Iterator[tuple[str, Pair, _PairResult]]:
    def inspect(item: tuple[str, Pair]) -> _PairResult:
        return _inspect_pair(item[1], item[0], num_classes, ignore_index, lookup)

    if workers == 1:
        for item in work:
            yield *item, inspect(item)
        return
    with ThreadPoolExecutor(workers) as pool:
        for item, result in zip(work, pool.map(inspect, work), strict=True):
            yield *item, result


def _add(stats: SplitStats, pair: Pair, result: _PairResult, num_classes: int, ignore_index: int | None) -> None:
    if result.size is not None:
        stats.image_sizes[result.size] += 1
        stats.channels[result.channels] += 1
        stats.dtypes[result.dtype] += 1
        stats.max_value = max(stats.max_value, result.max_value)
        examples = stats.channel_examples.setdefault(result.channels, [])
        if len(examples) < NAMES_KEPT:
            examples.append(pair.image.name)
        if not stats.channel_sums:
            stats.channel_sums = [0.0] * result.channels
            stats.channel_products = [[0.0] * result.channels for _ in range(result.channels)]
        if len(stats.channel_sums) == result.channels:
            stats.channel_sums = (np.asarray(stats.channel_sums) + result.sums).tolist()
            stats.channel_products = (np.asarray(stats.channel_products) + result.products).tolist()
            stats.sampled_pixels += result.sampled
    if result.counts is None:
        return
    stats.masks_read += 1
    for value in range(num_classes):
        stats.class_pixels[value] += int(result.counts[value])
    ignored = 0
    if ignore_index is not None and num_classes <= ignore_index < len(result.counts):
        ignored = int(result.counts[ignore_index])
    stats.ignored_pixels += ignored
    stats.unknown_pixels += int(result.counts[num_classes:].sum()) - ignored
    present = np.flatnonzero(result.counts)
    ignored = int(result.counts[ignore_index]) if ignore_index is not None and ignore_index < len(result.counts) else 0
    scored = int(result.counts.sum()) - ignored
    for value in present.tolist():
        stats.value_pixels[value] = stats.value_pixels.get(value, 0) + int(result.counts[value])
        stats.value_image_pixels[value] = stats.value_image_pixels.get(value, 0) + scored
    if 255 in present and set(present) <= {0, 255} and ignore_index != 255:
        stats.binary_255_masks += 1
    for value in present[present >= num_classes]:
        if value != ignore_index:
            entry = stats.bad_values.setdefault(int(value), [0, []])
            entry[0] += 1
            if len(entry[1]) < NAMES_KEPT:
                entry[1].append(pair.mask.name)


def _summary_problems(report: DatasetReport) -> list[Problem]:
    """Problems only visible across files: odd channel counts, 0/255 masks, void labels, classes never seen."""
    problems = []
    num_classes = len(report.class_names)
    for split, stats in report.splits.items():
        if len(stats.channels) > 1:
            common, most = stats.channels.most_common(1)[0]
            for channels, count in sorted(stats.channels.items()):
                if channels != common:
                    names = ", ".join(stats.channel_examples.get(channels, []))
                    detail = f"{count} image(s) have {channels} channel(s) while {most} have {common}: {names}"
                    problems.append(Problem("channel-mismatch", split, None, detail))
        # The details of these two causes do not depend on the split, so a report can name each once.
        if stats.binary_255_masks:
            hint = (
                "map 255 to class 1 with `label_map: {255: 1}` in the experiment"
                if num_classes == 2
                else ("255 is not a class")
            )
            detail = (
                f"masks hold 0/255 values like saved binary masks: {hint}, or set --ignore-index 255 if 255 marks "
                "pixels to ignore"
            )
            problems.append(Problem("binary-255-masks", split, None, detail))
        void = void_label(stats, num_classes, report.ignore_index)
        if void is not None:
            detail = (
                f"value {void}, just past the classes 0..{num_classes - 1}, is in nearly every mask: it looks like a "
                f"void/unlabelled label; ignore it with `--ignore-index {void}` (`ignore_index: {void}` in the "
                "experiment)"
            )
            problems.append(Problem("mask-values", split, None, detail))
    train = report.splits.get("train")
    if train and train.pairs:
        for index, name in enumerate(report.class_names):
            if train.class_pixels[index] == 0:
                problems.append(
                    Problem("class-never-seen", "train", None, f"class {index} '{name}' never appears", WARNING)
                )
    return problems


def void_label(stats: SplitStats, num_classes: int, ignore_index: int | None) -> int | None:
    """A value just past the classes (or 255) in nearly every mask: a void label (also `segcli plan`'s rule)."""
    for value in (num_classes, 255):
        entry = stats.bad_values.get(value)
        if entry and value != ignore_index and stats.masks_read and entry[0] >= VOID_SHARE * stats.masks_read:
            if value == 255 and stats.binary_255_masks:
                continue  # 0/255 masks have their own hint
            return value
    return None


def _jpeg_mask_warnings(split: str, pairs: list[Pair]) -> list[Problem]:
    jpegs = [p.mask.name for p in pairs if p.mask.suffix.lower() in JPEG_SUFFIXES]
    if not jpegs:
        return []
    detail = (
        f"{len(jpegs)} mask(s) are JPEG ({', '.join(jpegs[:NAMES_KEPT])}): lossy compression changes label values "
        "at edges; save masks as PNG"
    )
    return [Problem("jpeg-masks", split, None, detail, WARNING)]


def check_dataset(
    root: Path,
    splits: Iterable[str],
    class_names: list[str],
    ignore_index: int | None = None,
    workers: int | None = None,
    on_total: Callable[[int], None] | None = None,
    on_pair: Callable[[], None] | None = None,
    label_map: dict[int, int] | None = None,
    roi: Path | None = None,
) -> DatasetReport:
    """Read every image and mask once and collect every problem; `on_*` feed a progress bar.

    `label_map` (stored value -> class) is applied to the masks before their values are checked, only inside each
    image's region mask when the split has them (`roi`: their folder, by default <root>/<split>/roi/).
    """
    num_classes = len(class_names)
    report = DatasetReport(root, list(class_names), ignore_index, label_map=label_map)
    lookup = label_lookup(label_map)
    work: list[tuple[str, Pair]] = []
    for split in splits:
        problems, pairs = layout_problems(root, split, roi)
        report.problems += problems + _jpeg_mask_warnings(split, pairs)
        report.splits[split] = SplitStats(pairs=len(pairs), class_pixels=[0] * num_classes)
        work += [(split, pair) for pair in pairs]
    if on_total:
        on_total(len(work))
    for split, pair, result in _inspect_all(work, num_classes, ignore_index, lookup, workers or os.cpu_count() or 1):
        report.problems += result.problems
        _add(report.splits[split], pair, result, num_classes, ignore_index)
        if on_pair:
            on_pair()
    report.problems += _summary_problems(report)
    return report


def check_dataset_cached(
    root: Path,
    splits: Iterable[str],
    class_names: list[str],
    ignore_index: int | None = None,
    label_map: dict[int, int] | None = None,
    roi: Path | None = None,
    **kwargs,
) -> DatasetReport:
    """check_dataset, reusing the stored report when no file changed since (train, evaluate, previews)."""
    splits = list(splits)
    settings = [class_names, ignore_index, sorted((label_map or {}).items()), str(roi.resolve()) if roi else None]
    key = fingerprint(root, splits, settings, roi)
    report = read_cached(key)
    if report is None:
        report = check_dataset(root, splits, class_names, ignore_index, label_map=label_map, roi=roi, **kwargs)
        write_cached(key, report)
    return report
