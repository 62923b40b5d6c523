"""The dataset fingerprint `segcli plan` decides from: pure measurement, no decisions (rules.py decides).

Most of it is the dataset check itself, run once without a class list so that every stored mask value is
counted (and cached like every check): sizes, channels, dtype and bit depth, per-channel statistics, pixels
and masks per mask value, 0/255 masks. On top of it, from a sample of training masks, the size of the
objects of each value (connected components), and whether file names fall into groups (video sequences,
volumes) that a k-fold split must keep together.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from segcli.data.check_report import DatasetReport, SplitStats, format_problems
from segcli.data.checks import check_dataset_cached
from segcli.data.io import list_pairs, read_mask
from segcli.errors import DatasetError

SPLITS = ("train", "val")
MASK_SAMPLE = 60  # training masks whose objects are measured (spread over the split)
SPECK_PIXELS = 9  # components smaller than 3x3 are label noise (edges, resampling), not objects
GROUP_PATTERNS = (r"^[^_]+", r"^[^-]+", r"^[A-Za-z]+")  # sequence or volume prefixes, in order of preference
VALUE_PROBLEMS = {"mask-values", "binary-255-masks", "class-never-seen"}  # what the plan itself resolves


@dataclass
class ObjectSizes:
    """Connected components of one mask value in the sampled masks; a size is the square root of the area."""

    count: int
    small: float
    """10th percentile, in pixels: 'objects down to N px'."""
    median: float


@dataclass
class Declared:
    """What the dataset's own files say: class names, the ignored label, stored ids per class."""

    source: str | None = None
    class_names: list[str] | None = None
    ignore_index: int | None = None
    ids: dict[str, int] | None = None
    """Class name -> stored mask value, for id-coded masks (dataset.json `labels`)."""


@dataclass
class Fingerprint:
    root: Path
    train: SplitStats
    val: SplitStats | None
    objects: dict[int, ObjectSizes] = field(default_factory=dict)
    """Per stored mask value, from a sample of training masks."""
    groups: tuple[str, int] | None = None
    """(pattern, number of groups) when training file names fall into groups, e.g. ('^[^_]+', 3) for CamVid."""
    declared: Declared = field(default_factory=Declared)

    @property
    def values(self) -> list[int]:
        """Every stored mask value of the training split, ascending."""
        return sorted(self.train.value_pixels)

    @property
    def size(self) -> tuple[int, int]:
        """The most common training image size, (height, width)."""
        return self.train.image_sizes.most_common(1)[0][0]

    @property
    def channels(self) -> int:
        return self.train.channels.most_common(1)[0][0]

    def value_share(self, value: int) -> float:
        """The share of the training pixels that hold `value`."""
        return self.train.value_pixels.get(value, 0) / max(1, sum(self.train.value_pixels.values()))

    def masks_with(self, value: int) -> int:
        """How many training masks hold `value`."""
        entry = self.train.bad_values.get(value)  # the check ran without classes: every value is listed
        return entry[0] if entry else 0


def read_declared(root: Path) -> Declared:
    """Class names (and an ignored label, or stored ids) from `dataset.json` or `classes.txt` beside the data.

    dataset.json: `{"class_names": [...], "ignore_index": N}` (a name at the ignored index is the void's and
    is dropped), or nnU-Net's `{"labels": {"road": 7, ...}}`. classes.txt: one name per line.
    """
    manifest = root / "dataset.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{manifest}: not valid JSON ({exc}); fix it or remove it") from None
        ignore = data.get("ignore_index")
        if isinstance(data.get("labels"), dict):
            ids = {str(name): int(value) for name, value in data["labels"].items()}
            return Declared(str(manifest), list(ids), ignore, ids)
        if isinstance(data.get("class_names"), list):
            names = [str(name) for name in data["class_names"]]
            if isinstance(ignore, int) and 0 <= ignore < len(names):
                names = names[:ignore] + names[ignore + 1 :]
            return Declared(str(manifest), names, ignore)
    listing = root / "classes.txt"
    if listing.is_file():
        names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        return Declared(str(listing), names or None)
    return Declared()


def _object_sizes(masks: list[np.ndarray]) -> dict[int, ObjectSizes]:
    sides: dict[int, list[int]] = {}
    for mask in masks:
        for value in np.unique(mask).tolist():
            count, _, stats, _ = cv2.connectedComponentsWithStats((mask == value).astype(np.uint8), connectivity=8)
            for area in stats[1:count, cv2.CC_STAT_AREA]:
                if area >= SPECK_PIXELS:
                    sides.setdefault(int(value), []).append(float(np.sqrt(area)))
    return {
        value: ObjectSizes(len(found), float(np.percentile(found, 10)), float(np.median(found)))
        for value, found in sides.items()
    }


def _sample(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    return [items[round(index * (len(items) - 1) / (count - 1))] for index in range(count)]


def name_groups(stems: list[str]) -> tuple[str, int] | None:
    """The first pattern whose matches split the names into groups of several images each, if any."""
    for pattern in GROUP_PATTERNS:
        keys = [match.group(0) if (match := re.search(pattern, stem)) else stem for stem in stems]
        groups = len(set(keys))
        if 2 <= groups <= len(stems) // 3:
            return pattern, groups
    return None


def fingerprint(root: Path, workers: int | None = None) -> Fingerprint:
    """Measure the dataset at `root` (train and, when present, val). Problems other than mask values (which
    the plan resolves) are the dataset check's usual error."""
    splits = [split for split in SPLITS if (root / split).is_dir()] or list(SPLITS)
    report: DatasetReport = check_dataset_cached(root, splits, [], None, workers=workers)
    blocking = [p for p in report.errors if p.kind not in VALUE_PROBLEMS]
    if blocking:
        raise DatasetError(
            f"dataset {root} failed the dataset check ({len(blocking)} problems); fix them first "
            f"(`segcli validate-dataset --dataset {root}` lists them all):\n" + format_problems(blocking)
        )
    if "train" not in report.splits or not report.splits["train"].masks_read:
        raise DatasetError(f"dataset {root} has no training pairs in {root / 'train'}")
    pairs = list_pairs(root, "train")
    sample = [read_mask(pair.mask) for pair in _sample(pairs, MASK_SAMPLE)]
    return Fingerprint(
        root=root,
        train=report.splits["train"],
        val=report.splits.get("val") if "val" in splits else None,
        objects=_object_sizes([mask for mask in sample if mask.ndim == 2]),
        groups=name_groups([pair.stem for pair in pairs]),  # not val's too: 'train_*' and 'val_*' are no groups
        declared=read_declared(root),
    )
