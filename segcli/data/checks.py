"""The dataset check: every problem in one pass, shared by `validate-dataset` and `train` (no torch).

Each image and mask is decoded exactly once, in parallel threads (cv2 and PIL release the GIL
while decoding). Results stream into per-split counters, so memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segcli.data.io import IMAGES, LABELS, Pair, scan_folder

ERROR, WARNING = "error", "warning"
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
    image_sizes: Counter = field(default_factory=Counter)  # (height, width) -> images
    channels: Counter = field(default_factory=Counter)  # channel count -> images
    channel_examples: dict[int, list[str]] = field(default_factory=dict)
    bad_values: dict[int, list] = field(default_factory=dict)  # value -> [files, first names]
    binary_255_masks: int = 0  # masks holding only 0 and 255: saved binary masks

    def to_dict(self) -> dict:
        data = asdict(self)
        data["image_sizes"] = [[h, w, n] for (h, w), n in sorted(self.image_sizes.items())]
        data["channels"] = {str(c): n for c, n in sorted(self.channels.items())}
        data["channel_examples"] = {str(c): names for c, names in self.channel_examples.items()}
        data["bad_values"] = {str(v): entry for v, entry in sorted(self.bad_values.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SplitStats:
        return cls(
            pairs=data["pairs"],
            class_pixels=data["class_pixels"],
            ignored_pixels=data["ignored_pixels"],
            image_sizes=Counter({(h, w): n for h, w, n in data["image_sizes"]}),
            channels=Counter({int(c): n for c, n in data["channels"].items()}),
            channel_examples={int(c): names for c, names in data["channel_examples"].items()},
            bad_values={int(v): entry for v, entry in data["bad_values"].items()},
            binary_255_masks=data["binary_255_masks"],
        )


@dataclass
class DatasetReport:
    root: Path
    class_names: list[str]
    ignore_index: int | None
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, SplitStats] = field(default_factory=dict)
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
            problems=[Problem(**p) for p in data["problems"]],
            splits={split: SplitStats.from_dict(s) for split, s in data["splits"].items()},
        )


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
    data = pair.image.read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if _complete(pair.image, data) else None
    if image is None:
        problems.append(
            Problem("unreadable-image", split, pair.image.name, "cannot decode the image (corrupt or truncated?)")
        )
    try:
        with Image.open(pair.mask) as opened:
            opened.load()  # decode fully: a truncated file fails here, not in the middle of training
            mask = np.asarray(opened)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for undecodable files
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
    if mask.ndim == 3:
        problems.append(
            Problem(
                "mask-not-single-channel",
                split,
                pair.mask.name,
                f"mask has {mask.shape[2]} channels: it looks colour-coded; convert it to one channel of class "
                "indices (palette PNGs are read as indices)",
            )
        )
        return result
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != np.bool_:
        problems.append(
            Problem("mask-not-integer", split, pair.mask.name, f"mask pixels are {mask.dtype}, not integers")
        )
        return result
    if mask.dtype.kind == "i" and mask.size and mask.min() < 0:
        problems.append(Problem("mask-values", split, pair.mask.name, f"negative values (minimum {mask.min()})"))
        return result
    counts = np.bincount(mask.ravel(), minlength=num_classes)
    bad = [int(v) for v in np.flatnonzero(counts[num_classes:]) + num_classes if v != ignore_index]
    if bad:
        problems.append(
            Problem(
                "mask-values",
                split,
                pair.mask.name,
                "values " + ", ".join(map(str, bad)) + f" outside the classes 0..{num_classes - 1}",
            )
        )
    result.counts = counts
    return result


def _complete(path: Path, data: bytes) -> bool:
    """cv2 decodes a truncated JPEG into a half-grey picture without failing: look for its end marker."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return b"\xff\xd9" in data[-1024:]
    return True


def _layout_problems(root: Path, split: str) -> tuple[list[Problem], list[Pair]]:
    if not (root / split).is_dir():
        return [Problem("missing-split", split, None, f"folder {root / split} does not exist")], []
    problems: list[Problem] = []
    files = {}
    for kind in (IMAGES, LABELS):
        if not (root / split / kind).is_dir():
            problems.append(Problem("missing-split", split, None, f"folder {root / split / kind} does not exist"))
        folder = scan_folder(root, split, kind)
        files[kind] = folder.files
        for path in folder.not_images:
            problems.append(Problem("not-an-image", split, path.name, f"{kind}/{path.name} is not an image file"))
        for paths in folder.duplicates:
            detail = f"{kind}/ has {', '.join(p.name for p in paths)}: keep one file per stem"
            problems.append(Problem("duplicate-stem", split, paths[0].name, detail))
    images, masks = files[IMAGES], files[LABELS]
    for stem in sorted(images.keys() - masks.keys()):
        name = images[stem].name
        problems.append(Problem("image-without-mask", split, name, f"no labels/{stem}.* for images/{name}"))
    for stem in sorted(masks.keys() - images.keys()):
        name = masks[stem].name
        problems.append(Problem("mask-without-image", split, name, f"no images/{stem}.* for labels/{name}"))
    pairs = [Pair(images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]
    if not images and not masks and not problems:
        problems.append(Problem("empty-split", split, None, f"{root / split} holds no images and no masks"))
    return problems, pairs


def _inspect_all(
    work: list[tuple[str, Pair]], num_classes: int, ignore_index: int | None, workers: int
) -> Iterator[tuple[str, Pair, _PairResult]]:
    if workers == 1:
        for split, pair in work:
            yield split, pair, _inspect_pair(pair, split, num_classes, ignore_index)
        return
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda item: _inspect_pair(item[1], item[0], num_classes, ignore_index), work)
        for (split, pair), result in zip(work, results, strict=True):
            yield split, pair, result


def _add(stats: SplitStats, pair: Pair, result: _PairResult, num_classes: int, ignore_index: int | None) -> None:
    if result.size is not None:
        stats.image_sizes[result.size] += 1
        stats.channels[result.channels] += 1
        examples = stats.channel_examples.setdefault(result.channels, [])
        if len(examples) < NAMES_KEPT:
            examples.append(pair.image.name)
    if result.counts is None:
        return
    for value in range(num_classes):
        stats.class_pixels[value] += int(result.counts[value])
    if ignore_index is not None and num_classes <= ignore_index < len(result.counts):
        stats.ignored_pixels += int(result.counts[ignore_index])
    present = np.flatnonzero(result.counts)
    if 255 in present and set(present) <= {0, 255} and ignore_index != 255:
        stats.binary_255_masks += 1
    for value in present[present >= num_classes]:
        if value != ignore_index:
            entry = stats.bad_values.setdefault(int(value), [0, []])
            entry[0] += 1
            if len(entry[1]) < NAMES_KEPT:
                entry[1].append(pair.mask.name)


def _summary_problems(report: DatasetReport) -> list[Problem]:
    """Problems only visible across files: odd channel counts, 0/255 masks, classes never seen."""
    problems = []
    num_classes = len(report.class_names)
    for split, stats in report.splits.items():
        if len(stats.channels) > 1:
            common, most = stats.channels.most_common(1)[0]
            for channels, count in sorted(stats.channels.items()):
                if channels != common:
                    names = ", ".join(stats.channel_examples.get(channels, []))
                    problems.append(
                        Problem(
                            "channel-mismatch",
                            split,
                            None,
                            f"{count} image(s) have {channels} channel(s) while {most} have {common}: {names}",
                        )
                    )
        if stats.binary_255_masks:
            files = stats.binary_255_masks
            hint = "divide them by 255 so 255 becomes class 1" if num_classes == 2 else "255 is not a class"
            problems.append(
                Problem(
                    "binary-255-masks",
                    split,
                    None,
                    f"{files} mask(s) hold 0/255 values like saved binary masks: {hint}, "
                    "or set --ignore-index 255 if 255 marks pixels to ignore",
                )
            )
    train = report.splits.get("train")
    if train and train.pairs:
        for index, name in enumerate(report.class_names):
            if train.class_pixels[index] == 0:
                problems.append(
                    Problem("class-never-seen", "train", None, f"class {index} '{name}' never appears", WARNING)
                )
    return problems


def check_dataset(
    root: Path,
    splits: Iterable[str],
    class_names: list[str],
    ignore_index: int | None = None,
    workers: int | None = None,
    on_total: Callable[[int], None] | None = None,
    on_pair: Callable[[], None] | None = None,
) -> DatasetReport:
    """Read every image and mask once and collect every problem; `on_*` feed a progress bar."""
    num_classes = len(class_names)
    report = DatasetReport(root, list(class_names), ignore_index)
    work: list[tuple[str, Pair]] = []
    for split in splits:
        problems, pairs = _layout_problems(root, split)
        report.problems += problems
        report.splits[split] = SplitStats(pairs=len(pairs), class_pixels=[0] * num_classes)
        work += [(split, pair) for pair in pairs]
    if on_total:
        on_total(len(work))
    for split, pair, result in _inspect_all(work, num_classes, ignore_index, workers or os.cpu_count() or 1):
        report.problems += result.problems
        _add(report.splits[split], pair, result, num_classes, ignore_index)
        if on_pair:
            on_pair()
    report.problems += _summary_problems(report)
    return report


# --- cache ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    if os.environ.get("SEGCLI_CACHE_DIR"):
        return Path(os.environ["SEGCLI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segcli" / "dataset-checks"


def _fingerprint(root: Path, splits: Iterable[str], class_names: list[str], ignore_index: int | None) -> str:
    """Hash of the settings and every file's name, size and mtime: any change means a new check."""
    digest = hashlib.sha256(json.dumps([str(root.resolve()), list(splits), class_names, ignore_index]).encode())
    for split in splits:
        for kind in (IMAGES, LABELS):
            folder = root / split / kind
            if folder.is_dir():
                for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                    stat = entry.stat()
                    digest.update(f"{split}/{kind}/{entry.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_dataset_cached(
    root: Path, splits: Iterable[str], class_names: list[str], ignore_index: int | None = None, **kwargs
) -> DatasetReport:
    """check_dataset, reusing the stored report when no file changed since (train calls this)."""
    splits = list(splits)
    key = _fingerprint(root, splits, class_names, ignore_index)
    path = cache_dir() / f"{key}.json"
    if path.is_file():
        try:
            report = DatasetReport.from_dict(json.loads(path.read_text()))
            report.from_cache = True
            return report
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable cache entry is simply recomputed
    report = check_dataset(root, splits, class_names, ignore_index, **kwargs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(report.to_dict()))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the next run a re-check
    return report


def format_problems(problems: list[Problem], limit: int = 20) -> str:
    """Plain text, one line per problem, grouped by kind."""
    lines = []
    for problem in sorted(problems, key=lambda p: (p.kind, p.split, p.file or ""))[:limit]:
        where = f"{problem.split}/{problem.file}" if problem.file else problem.split
        lines.append(f"  [{problem.kind}] {where}: {problem.detail}")
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (run `segcli validate-dataset` for the full report)")
    return "\n".join(lines)
