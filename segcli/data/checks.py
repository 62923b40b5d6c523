"""The dataset check: every problem in one pass, shared by `validate-dataset` and `train` (no torch)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcli.data.io import IMAGE_SUFFIXES, IMAGES, LABELS, Pair, split_files

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    kind: str
    split: str
    file: str | None
    detail: str
    severity: str = ERROR


@dataclass
class SplitStats:
    pairs: int = 0
    class_pixels: list[int] = field(default_factory=list)
    ignored_pixels: int = 0
    image_sizes: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)


@dataclass
class DatasetReport:
    root: Path
    num_classes: int
    ignore_index: int | None
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, SplitStats] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]


@dataclass
class _PairResult:
    problems: list[Problem]
    size: tuple[int, int] | None = None  # (height, width)
    channels: int | None = None
    counts: np.ndarray | None = None


def _inspect_pair(pair: Pair, split: str, num_classes: int, ignore_index: int | None) -> _PairResult:
    import cv2
    from PIL import Image

    problems: list[Problem] = []
    image = cv2.imread(str(pair.image), cv2.IMREAD_UNCHANGED)
    if image is None:
        problems.append(
            Problem("unreadable-image", split, pair.image.name, "cannot decode the image (corrupt or truncated?)")
        )
    try:
        with Image.open(pair.mask) as opened:
            opened.load()  # decode fully: a truncated file fails here, not later in training
            mask = np.asarray(opened)
    except (OSError, SyntaxError, ValueError) as exc:
        problems.append(Problem("unreadable-mask", split, pair.mask.name, f"cannot decode the mask ({exc})"))
        mask = None
    result = _PairResult(problems)
    if image is not None:
        result.size = image.shape[:2]
        result.channels = 1 if image.ndim == 2 else image.shape[2]
    if mask is None:
        return result
    if image is not None and mask.shape[:2] != image.shape[:2]:
        problems.append(
            Problem(
                "size-mismatch",
                split,
                pair.mask.name,
                f"image is {image.shape[1]}x{image.shape[0]} but mask is {mask.shape[1]}x{mask.shape[0]} (WxH)",
            )
        )
    if mask.ndim == 3 and mask.shape[2] > 1:
        problems.append(
            Problem(
                "mask-not-single-channel",
                split,
                pair.mask.name,
                f"mask has {mask.shape[2]} channels; it looks colour-coded: convert it to one channel of "
                "class indices (palette PNGs are read as indices)",
            )
        )
        return result
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != np.bool_:
        problems.append(
            Problem("mask-not-integer", split, pair.mask.name, f"mask pixels are {mask.dtype}, not integers")
        )
        return result
    counts = np.bincount(mask.ravel().astype(np.int64, copy=False), minlength=num_classes)
    allowed = set(range(num_classes)) | ({ignore_index} if ignore_index is not None else set())
    bad = [int(v) for v in np.flatnonzero(counts) if int(v) not in allowed]
    if bad:
        problems.append(
            Problem(
                "mask-values",
                split,
                pair.mask.name,
                "values " + ", ".join(map(str, bad)) + f" outside 0..{num_classes - 1}",
            )
        )
    result.counts = counts
    return result


def _layout_problems(root: Path, split: str) -> tuple[list[Problem], list[Pair]]:
    problems: list[Problem] = []
    if not (root / split).is_dir():
        return [Problem("missing-split", split, None, f"folder {root / split} does not exist")], []
    images = split_files(root, split, IMAGES)
    masks = split_files(root, split, LABELS)
    for kind, files in ((IMAGES, images), (LABELS, masks)):
        if not (root / split / kind).is_dir():
            problems.append(Problem("missing-split", split, None, f"folder {root / split / kind} does not exist"))
        for stem, path in list(files.items()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(Problem("not-an-image", split, path.name, f"{kind}/{path.name} is not an image file"))
                del files[stem]
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(
            Problem(
                "image-without-mask", split, images[stem].name, f"no labels/{stem}.* for images/{images[stem].name}"
            )
        )
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(
            Problem("mask-without-image", split, masks[stem].name, f"no images/{stem}.* for labels/{masks[stem].name}")
        )
    pairs = [Pair(images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]
    if not pairs and images.keys() == masks.keys():
        problems.append(Problem("empty-split", split, None, f"{root / split} has no image/mask pairs"))
    return problems, pairs


def check_dataset(
    root: Path,
    splits: Iterable[str],
    num_classes: int,
    ignore_index: int | None = None,
    workers: int | None = None,
    on_pair: Callable[[], None] | None = None,
) -> DatasetReport:
    """Read every image and mask once (in parallel threads) and collect every problem."""
    report = DatasetReport(root, num_classes, ignore_index)
    work: list[tuple[str, Pair]] = []
    for split in splits:
        problems, pairs = _layout_problems(root, split)
        report.problems += problems
        report.splits[split] = SplitStats(pairs=len(pairs), class_pixels=[0] * num_classes)
        work += [(split, pair) for pair in pairs]

    for split, result in _run(work, num_classes, ignore_index, workers):
        stats = report.splits[split]
        report.problems += result.problems
        if result.size is not None:
            stats.image_sizes[result.size] += 1
            stats.channels[result.channels] += 1
        if result.counts is not None:
            for value in range(num_classes):
                stats.class_pixels[value] += int(result.counts[value])
            if ignore_index is not None and ignore_index >= num_classes and ignore_index < len(result.counts):
                stats.ignored_pixels += int(result.counts[ignore_index])
        if on_pair:
            on_pair()

    for split, stats in report.splits.items():
        if len(stats.channels) > 1:
            common = stats.channels.most_common(1)[0][0]
            report.problems.append(
                Problem(
                    "channel-mismatch",
                    split,
                    None,
                    f"images have different channel counts {dict(stats.channels)}; most have {common}",
                )
            )
    return report


def _run(
    work: list[tuple[str, Pair]], num_classes: int, ignore_index: int | None, workers: int | None
) -> Iterator[tuple[str, _PairResult]]:
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        for split, pair in work:
            yield split, _inspect_pair(pair, split, num_classes, ignore_index)
        return
    # Decoding releases the GIL (cv2 and PIL), so threads scale; map() streams results in order.
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda item: _inspect_pair(item[1], item[0], num_classes, ignore_index), work)
        for (split, _), result in zip(work, results, strict=True):
            yield split, result


def format_problems(problems: list[Problem], limit: int = 20) -> str:
    """Plain text, one line per problem, grouped by kind."""
    lines = []
    for problem in sorted(problems, key=lambda p: (p.kind, p.split, p.file or ""))[:limit]:
        where = f"{problem.split}/{problem.file}" if problem.file else problem.split
        lines.append(f"  [{problem.kind}] {where}: {problem.detail}")
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (run `segcli validate-dataset` for the full report)")
    return "\n".join(lines)
