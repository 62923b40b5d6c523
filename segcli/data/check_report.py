"""What the dataset check found: problems, per-split statistics, their JSON form, the cache, plain text."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segcli.data.io import IMAGES, LABELS, ROI
from segcli.errors import DatasetError
from segcli.files import write_text

ERROR, WARNING = "error", "warning"
RARE_SHARE_OF_MEDIAN = 0.5  # a class with fewer pixels than this share of the median class's is rare
NAMES_KEPT = 5  # file names kept per group (values outside the classes, odd channel counts)


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
    unknown_pixels: int = 0  # values that are neither a class nor ignore_index
    image_sizes: Counter = field(default_factory=Counter)  # (height, width) -> images
    channels: Counter = field(default_factory=Counter)  # channel count -> images
    channel_examples: dict[int, list[str]] = field(default_factory=dict)
    bad_values: dict[int, list] = field(default_factory=dict)  # value -> [files, first names]
    masks_read: int = 0
    binary_255_masks: int = 0  # masks holding only 0 and 255: saved binary masks
    dtypes: Counter = field(default_factory=Counter)  # image dtype name -> images
    max_value: float = 0.0  # the largest pixel value of any image
    channel_sums: list[float] = field(default_factory=list)  # per channel, over sampled pixels (most common count)
    channel_products: list[list[float]] = field(default_factory=list)  # per pair of channels: sum of x_i * x_j
    sampled_pixels: int = 0
    value_pixels: dict[int, int] = field(default_factory=dict)
    """Pixels per mask value (after the label map), every value: classes, ignored and unknown ones."""
    value_image_pixels: dict[int, int] = field(default_factory=dict)
    """Per mask value, the non-ignored pixels of the masks it appears in (median-frequency balancing)."""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["image_sizes"] = [[h, w, n] for (h, w), n in sorted(self.image_sizes.items())]
        data["channels"] = {str(c): n for c, n in sorted(self.channels.items())}
        data["channel_examples"] = {str(c): names for c, names in self.channel_examples.items()}
        data["bad_values"] = {str(v): entry for v, entry in sorted(self.bad_values.items())}
        data["dtypes"] = dict(self.dtypes)
        for key in ("value_pixels", "value_image_pixels"):
            data[key] = {str(v): n for v, n in sorted(getattr(self, key).items())}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SplitStats:
        return cls(
            **{
                **data,
                "image_sizes": Counter({(h, w): n for h, w, n in data["image_sizes"]}),
                "channels": Counter({int(c): n for c, n in data["channels"].items()}),
                "channel_examples": {int(c): names for c, names in data["channel_examples"].items()},
                "bad_values": {int(v): entry for v, entry in data["bad_values"].items()},
                "dtypes": Counter(data["dtypes"]),
                "value_pixels": {int(v): n for v, n in data["value_pixels"].items()},
                "value_image_pixels": {int(v): n for v, n in data["value_image_pixels"].items()},
            }
        )

    @property
    def mask_pixels(self) -> int:
        """Every mask pixel read: of the classes, ignored, and values that are neither."""
        return sum(self.class_pixels) + self.ignored_pixels + self.unknown_pixels

    @property
    def dtype(self) -> str | None:
        return self.dtypes.most_common(1)[0][0] if self.dtypes else None

    @property
    def bits_used(self) -> int | None:
        """For integer images: 8 for 8-bit files (scaled by 255 whatever their values), for deeper ones the bit
        depth the values actually need (12 for 16-bit files holding 0..4095); None for floats."""
        if self.dtype is None or not self.dtype.startswith(("uint", "int")):
            return None
        if self.dtype == "uint8":
            return 8
        return max(1, int(self.max_value).bit_length())

    def max_pixel_value(self) -> float:
        """The scale that maps the images to 0..1: 255 for 8-bit, 2^bits - 1 for deeper integers, 1 for floats."""
        if self.dtype in (None, "uint8"):
            return 255.0
        bits = self.bits_used
        return float(2**bits - 1) if bits else 1.0

    def median_frequency_weights(self, num_classes: int) -> list[float]:
        """SegNet's median-frequency balancing: weight = median(freq) / freq(class), where freq(class) is the
        class's pixels over the pixels of the masks it appears in. A class absent from the split weighs 1."""
        freqs = {
            label: self.value_pixels[label] / self.value_image_pixels[label]
            for label in range(num_classes)
            if self.value_pixels.get(label)
        }
        if not freqs:
            return [1.0] * num_classes
        median = statistics.median(freqs.values())
        return [median / freqs[label] if label in freqs else 1.0 for label in range(num_classes)]

    def rare_classes(self, num_classes: int) -> list[int]:
        """Classes present with fewer pixels than half the median class (CamVid: Pole, SignSymbol, Fence,
        Pedestrian, Bicyclist)."""
        pixels = [self.value_pixels.get(label, 0) for label in range(num_classes)]
        present = [count for count in pixels if count]
        if not present:
            return []
        threshold = RARE_SHARE_OF_MEDIAN * statistics.median(present)
        return [label for label, count in enumerate(pixels) if 0 < count < threshold]

    def channel_mean_std(
        self, max_pixel_value: float, conversion: np.ndarray | None = None
    ) -> tuple[list[float], list[float]] | None:
        """Per-channel mean and std of the sampled pixels, in units of `max_pixel_value`; with a `conversion`
        (a linear map, out x stored channels: grey to RGB, dropping alpha, luma), of the channels it makes."""
        if not self.sampled_pixels:
            return None
        means = np.asarray(self.channel_sums) / self.sampled_pixels
        moments = np.asarray(self.channel_products) / self.sampled_pixels  # E[x x^T]
        if conversion is not None:
            means, moments = conversion @ means, conversion @ moments @ conversion.T
        stds = np.sqrt(np.maximum(np.diag(moments) - means**2, 0.0))
        return (means / max_pixel_value).tolist(), (stds / max_pixel_value).tolist()


@dataclass
class DatasetReport:
    root: Path
    class_names: list[str]
    ignore_index: int | None
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, SplitStats] = field(default_factory=dict)
    label_map: dict[int, int] | None = None
    from_cache: bool = False

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def to_dict(self) -> dict:
        kinds = Counter(p.kind for p in self.problems)
        return {
            "root": str(self.root),
            "class_names": self.class_names,
            "ignore_index": self.ignore_index,
            "label_map": {str(k): v for k, v in (self.label_map or {}).items()} or None,
            "summary": {
                "pairs": {split: stats.pairs for split, stats in self.splits.items()},
                "errors": len(self.errors),
                "warnings": len(self.warnings),
                "by_kind": dict(sorted(kinds.items())),
            },
            "problems": [asdict(p) for p in self.problems],
            "splits": {split: stats.to_dict() for split, stats in self.splits.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> DatasetReport:
        return cls(
            root=Path(data["root"]),
            class_names=data["class_names"],
            ignore_index=data["ignore_index"],
            label_map={int(k): v for k, v in data["label_map"].items()} if data.get("label_map") else None,
            problems=[Problem(**p) for p in data["problems"]],
            splits={split: SplitStats.from_dict(s) for split, s in data["splits"].items()},
        )

    def require_clean(self, what: str) -> DatasetReport:
        """Raise the one DatasetError every command gives for a dataset that fails the check."""
        if self.errors:
            raise DatasetError(
                f"{what} failed the dataset check ({count_errors(self.errors)}):\n" + format_problems(self.errors)
            )
        return self


EXPLAINS = {"binary-255-masks": "mask-values"}
"""A kind of cause found across files -> the kind of the per-file problems it explains (shown with them)."""


@dataclass
class ProblemGroup:
    """Problems of one kind: the causes found across files (each detail once, with its splits), then the files."""

    kind: str
    severity: str
    causes: list[str] = field(default_factory=list)
    files: list[Problem] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.causes + [f"{p.split}/{p.file}: {p.detail}" for p in self.files]


def group_problems(problems: list[Problem]) -> list[ProblemGroup]:
    """Errors first, then warnings, each by kind; a cause and its fix come before the files it explains."""
    groups: dict[str, ProblemGroup] = {}
    causes: dict[str, dict[str, list[str]]] = {}  # kind -> detail -> splits
    for problem in sorted(problems, key=lambda p: (p.severity != ERROR, EXPLAINS.get(p.kind, p.kind), p.split)):
        kind = EXPLAINS.get(problem.kind, problem.kind)
        group = groups.setdefault(kind, ProblemGroup(kind, problem.severity))
        if problem.file is None:
            splits = causes.setdefault(kind, {}).setdefault(problem.detail, [])
            if problem.split not in splits:
                splits.append(problem.split)
        else:
            group.files.append(problem)
    for kind, details in causes.items():
        groups[kind].causes = [f"{', '.join(splits)}: {detail}" for detail, splits in details.items()]
    return list(groups.values())


def count_errors(errors: list[Problem]) -> str:
    """'2 error(s) in 31 file(s)': a kind of error (one cause and the files it explains) counts once."""
    files = len({(p.split, p.file) for p in errors if p.file is not None})
    return f"{len(group_problems(errors))} error(s)" + (f" in {files} file(s)" if files else "")


def format_problems(problems: list[Problem], limit: int = 20) -> str:
    """Plain text, one line per cause or file, grouped by kind; the causes first within a kind."""
    lines = [f"  [{group.kind}] {line}" for group in group_problems(problems) for line in group.lines()]
    if len(lines) > limit:
        lines[limit:] = [f"  ... and {len(lines) - limit} more (run `segcli validate-dataset` for the full report)"]
    return "\n".join(lines)


# --- cache ------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    if os.environ.get("SEGCLI_CACHE_DIR"):
        return Path(os.environ["SEGCLI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segcli" / "dataset-checks"


CACHE_VERSION = 7  # bumped when the report gains fields or files are read differently: old entries are recomputed


def fingerprint(root: Path, splits: Iterable[str], settings: list, roi: Path | None = None) -> str:
    """Hash of the settings and every file's name, size and mtime (region masks in `roi`, by default each split's
    roi/, included): any change means a new check."""
    splits = list(splits)
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, str(root.resolve()), splits, settings]).encode())
    for split in splits:
        for kind in (IMAGES, LABELS, ROI):
            folder = roi if kind == ROI and roi else root / split / kind
            if folder.is_dir():
                for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                    stat = entry.stat()
                    digest.update(f"{split}/{kind}/{entry.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_cached(key: str) -> DatasetReport | None:
    path = cache_dir() / f"{key}.json"
    if not path.is_file():
        return None
    try:
        report = DatasetReport.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable cache entry is simply recomputed
    report.from_cache = True
    return report


def write_cached(key: str, report: DatasetReport) -> None:
    try:
        write_text(cache_dir() / f"{key}.json", json.dumps(report.to_dict()))
    except OSError:
        pass  # a read-only home only costs the next run a re-check
