"""`evaluate_split()`: a model over a whole dataset split, scored with training's own metric code.

The predictions come from the same inference core `predict` uses, in the same order and batches; the
scores come from `segcli.models.metrics` (one confusion matrix over the split, ignore_index left out,
absent classes NaN and out of the means), so the numbers are those training logs for that split.
Each image is also scored on its own (its own confusion matrix), which ranks the worst images; the worst
are kept as they go by, so drawing them needs no second prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segcli.artifacts import ModelInfo, json_number
from segcli.data.check_report import SplitStats, format_problems
from segcli.data.checks import check_dataset_cached
from segcli.data.io import Pair, label_lookup, list_pairs, map_labels, read_image, read_mask
from segcli.drawing.colours import display_image
from segcli.drawing.pictures import Sample
from segcli.errors import DatasetError
from segcli.inference.engine import InferenceOptions, masks_from, same_size_batches, scale_warning
from segcli.inference.loading import Predictor
from segcli.models.metrics import add_confusion, epoch_metrics, scores


@dataclass
class ImageScore:
    name: str
    mIoU: float
    """Mean IoU over the classes present in this image's target or prediction (NaN if none)."""
    iou: list[float]
    pixels: int

    def worst_first(self) -> tuple:
        """Sort key: lowest mIoU first, images with nothing to score last, ties by name."""
        return bool(np.isnan(self.mIoU)), self.mIoU, self.name


@dataclass
class Evaluation:
    split: str
    images: int
    class_names: list[str]
    ignore_index: int | None
    matrix: Any
    """K x K int64 tensor: rows target class, columns predicted class."""
    metrics: dict[str, float]
    """training's keys: `<split>/mIoU`, `<split>/mDCC`, `<split>/pixel_accuracy`, `<split>/IoU/<class>`, ..."""
    per_image: list[ImageScore] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """E.g. images far from the size the model was trained at."""
    worst_samples: list[Sample] = field(default_factory=list)
    """The `keep_worst` images of `worst()` as grid rows (image, ground truth, prediction, score), worst first."""

    def worst(self, count: int) -> list[ImageScore]:
        """The `count` images with the lowest per-image mIoU (images with nothing to score last)."""
        return sorted(self.per_image, key=ImageScore.worst_first)[:count]

    def to_dict(self, per_image: bool = False) -> dict[str, Any]:
        s = self.split
        pixels = self.matrix.sum(1).tolist()
        document = {
            "split": s,
            "images": self.images,
            "class_names": self.class_names,
            "ignore_index": self.ignore_index,
            "mIoU": json_number(self.metrics[f"{s}/mIoU"]),
            "mDCC": json_number(self.metrics[f"{s}/mDCC"]),
            "pixel_accuracy": json_number(self.metrics[f"{s}/pixel_accuracy"]),
            "per_class": {
                name: {
                    "IoU": json_number(self.metrics[f"{s}/IoU/{name}"]),
                    "Dice": json_number(self.metrics[f"{s}/Dice/{name}"]),
                    "pixels": pixels[index],
                }
                for index, name in enumerate(self.class_names)
            },
            "metrics": {key: json_number(value) for key, value in self.metrics.items()},
            "confusion_matrix": self.matrix.tolist(),
        }
        if per_image:
            document["per_image"] = [
                {"image": score.name, "mIoU": json_number(score.mIoU), "pixels": score.pixels,
                 "IoU": {name: json_number(v) for name, v in zip(self.class_names, score.iou, strict=True)}}
                for score in self.per_image
            ]  # fmt: skip
        return document


def split_pairs(predictor: Predictor, root: Path, split: str) -> list[Pair]:
    """Check the split against the model's classes (as train does) and list its pairs in file order."""
    info = predictor.info
    label_map = dict(info.label_map) if info.label_map else None
    report = check_dataset_cached(root, [split], info.class_names, info.ignore_index, label_map=label_map)
    advice = label_advice(report.splits[split], info)
    what = (f"split '{split}' of {root}, checked against the model's {len(info.class_names)} classes "
            f"(ignore_index {info.ignore_index}),")  # fmt: skip
    if advice:
        others = [problem for problem in report.errors if problem.kind not in VALUE_PROBLEMS]
        listed = f"\nIt also failed the dataset check:\n{format_problems(others)}" if others else ""
        raise DatasetError(f"split '{split}' of {root}: {advice}{listed}")
    report.require_clean(what)
    # In the order `predict <root>/<split>/images` reads them, so both batch the same images together.
    pairs = sorted(list_pairs(root, split), key=lambda pair: pair.image)
    if not pairs:
        raise DatasetError(f"split '{split}' of {root} has no image/mask pairs")
    return pairs


VALUE_PROBLEMS = ("mask-values", "binary-255-masks")
"""The dataset check's problems with mask values: the dataset check's advice for them is an experiment's."""


def label_advice(stats: SplitStats, info: ModelInfo) -> str | None:
    """For masks holding values the model's classes do not cover: what differs, and the `--label-map` that maps
    them for this evaluation (the experiment keys the dataset check names do not exist here). None when none."""
    if not stats.bad_values:
        return None
    values = sorted(stats.bad_values)
    found = "; ".join(f"{value} in {stats.bad_values[value][0]} of {stats.masks_read} masks "
                      f"(e.g. {stats.bad_values[value][1][0]})" for value in values)  # fmt: skip
    classes = len(info.class_names)
    ignored = "" if info.ignore_index is None else f" and its ignore_index {info.ignore_index}"
    stored = ", ".join(f"{a} -> {b}" for a, b in info.label_map) if info.label_map else None
    trained = f"the label map {stored}" if stored else "no label map (the masks held the class indices)"
    if classes == 2 and len(values) == 1:  # a binary mask saved with another foreground value (0/255)
        example = f" e.g. --label-map {values[0]}:1"
    elif info.ignore_index is not None:  # void values of another kind
        example = f" e.g. --label-map {','.join(f'{value}:{info.ignore_index}' for value in values)} to leave them out"
    else:
        example = " (the model has no ignore_index, so pixels cannot be left out)"
    return (
        f"its masks hold values {found}: outside the model's classes 0..{classes - 1}{ignored}. The model was "
        f"trained with {trained}; these masks store the classes differently. Map their values to the model's "
        f"classes for this evaluation with --label-map STORED:CLASS[,...],{example}"
    )


def evaluate_split(
    predictor: Predictor,
    root: Path,
    split: str,
    options: InferenceOptions,
    on_total: Callable[[int], None] | None = None,
    on_image: Callable[[], None] | None = None,
) -> Evaluation:
    """Check the split (as train does), predict every image and score the split as a whole and per image."""
    pairs = split_pairs(predictor, root, split)
    if on_total:
        on_total(len(pairs))
    return evaluate_pairs(predictor, pairs, options, split, on_image)


def predicted_pairs(
    predictor: Predictor, pairs: Sequence[Pair], options: InferenceOptions
) -> Iterator[tuple[Pair, np.ndarray, np.ndarray, np.ndarray]]:
    """(pair, image, target mask after the label map, predicted mask) for every pair, batched like predict."""
    info = predictor.info
    lookup = label_lookup(dict(info.label_map) if info.label_map else None)

    def images() -> Iterator[tuple[Pair, np.ndarray]]:
        for pair in pairs:
            yield pair, read_image(pair.image, info.in_channels)

    for batch in same_size_batches(images(), options.batch_size):
        probs = predictor.probabilities([image for _, image in batch], options)
        for (pair, image), prediction in zip(batch, masks_from(probs, len(info.class_names)), strict=True):
            target = map_labels(read_mask(pair.mask), lookup)
            if target.shape != prediction.shape:
                raise DatasetError(
                    f"{pair.mask}: mask is {target.shape[1]}x{target.shape[0]} but its image is "
                    f"{prediction.shape[1]}x{prediction.shape[0]} (WxH)"
                )
            yield pair, image, target, prediction


def evaluate_pairs(
    predictor: Predictor,
    pairs: Sequence[Pair],
    options: InferenceOptions,
    split: str,
    on_image: Callable[[], None] | None = None,
    keep_worst: int = 0,
) -> Evaluation:
    """Score `pairs` as a whole and per image; `keep_worst`: also keep that many lowest-scoring images to draw."""
    info = predictor.info
    size = len(info.class_names)
    total = torch.zeros(size, size, dtype=torch.long)
    per_image, warnings = [], []
    worst: list[tuple[ImageScore, np.ndarray, np.ndarray, np.ndarray]] = []
    for pair, image, target, prediction in predicted_pairs(predictor, pairs, options):
        warning = None if options.resize else scale_warning(info, *image.shape[:2])
        if warning and warning not in warnings:
            warnings.append(warning)
        matrix = torch.zeros(size, size, dtype=torch.long)
        add_confusion(matrix, torch.from_numpy(prediction.astype(np.int64)), torch.from_numpy(target.astype(np.int64)),
                      info.ignore_index)  # fmt: skip
        total += matrix
        result = scores(matrix)
        headline = result["iou"][1] if info.binary else result["mIoU"]  # binary: the foreground, as in training
        score = ImageScore(pair.image.name, float(headline), result["iou"].tolist(), int(matrix.sum()))
        per_image.append(score)
        if keep_worst:
            worst.append((score, image, target, prediction))
            worst.sort(key=lambda kept: kept[0].worst_first())
            del worst[keep_worst:]
        if on_image:
            on_image()
    matrix = total
    return Evaluation(
        split=split,
        images=len(pairs),
        class_names=list(info.class_names),
        ignore_index=info.ignore_index,
        matrix=matrix,
        metrics=epoch_metrics(matrix, split, info.class_names, info.binary),
        per_image=per_image,
        warnings=warnings,
        worst_samples=[_grid_row(*kept) for kept in worst],
    )


def _grid_row(score: ImageScore, image: np.ndarray, target: np.ndarray, prediction: np.ndarray) -> Sample:
    caption = f"mIoU {score.mIoU:.3f}" if not np.isnan(score.mIoU) else "nothing to score"
    return Sample(score.name, display_image(image), target, prediction, caption)
