"""`evaluate_split()`: a model over a whole dataset split, scored with training's own metric code.

Each image is scored as validation scored it (the headline): the model's own val pipeline on image and
mask (`val_transforms`, stored with the model), the label map, the never-scored label in what a transform
pads, the model's padding to its size multiple; so on the split training validated on, the numbers are the
logged `val/*` metrics. When the model runs at another size than the images' own (a resize in the val
pipeline, or `resize`), the split is also scored at the images' own size (`at_image_size`): `predict`'s
masks, made through the same inference core, in the same order and batches, against the label files.
The scores come from `segcli.models.metrics` (one confusion matrix over the split, ignored pixels left
out, absent classes NaN and out of the means). Each image is also scored on its own (its own confusion
matrix), which ranks the worst images; the worst are kept as they go by, so drawing them needs no second
prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from albumentations.augmentations.crops.transforms import CropSizeError

from segcli.artifacts.model_info import ModelInfo
from segcli.config.schema import TransformSpec
from segcli.data.check_report import SplitStats, format_problems
from segcli.data.checks import check_dataset_cached
from segcli.data.dataset import SegmentationDataset
from segcli.data.io import Pair, label_lookup, list_pairs, never_scored_label
from segcli.data.transforms import build_pipeline, preview_pipeline
from segcli.drawing.colours import display_image
from segcli.drawing.pictures import Sample
from segcli.errors import ConfigError, DatasetError
from segcli.files import json_number
from segcli.inference.engine import InferenceOptions, InputWarnings, masks_from, same_size_batches
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
class ImageSizeScores:
    """The split scored at the images' own size: `predict`'s masks against the label files."""

    matrix: Any
    metrics: dict[str, float]
    model_input: str
    """How the model saw the images, e.g. "resized to 256x192 (WxH), probabilities resized back"."""


@dataclass
class Evaluation:
    split: str
    images: int
    class_names: list[str]
    ignore_index: int | None
    matrix: Any
    """K x K int64 tensor: rows target class, columns predicted class (as validation scored the images)."""
    metrics: dict[str, float]
    """training's keys: `<split>/mIoU`, `<split>/mDCC`, `<split>/pixel_accuracy`, `<split>/IoU/<class>`, ..."""
    per_image: list[ImageScore] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """E.g. images far from the size the model was trained at, or of another bit depth."""
    worst_samples: list[Sample] = field(default_factory=list)
    """The `keep_worst` images of `worst()` as grid rows (image, ground truth, prediction, score), worst first."""
    scored_as: str = ""
    """How validation scored the images: the val transforms applied to image and mask."""
    at_image_size: ImageSizeScores | None = None
    """The scores at the images' own size, when the model ran at another size; None when they are the same."""

    def worst(self, count: int) -> list[ImageScore]:
        """The `count` images with the lowest per-image mIoU (images with nothing to score last)."""
        return sorted(self.per_image, key=ImageScore.worst_first)[:count]

    def _scores(self, matrix: Any, metrics: dict[str, float]) -> dict[str, Any]:
        s = self.split
        pixels = matrix.sum(1).tolist()
        return {
            "mIoU": json_number(metrics[f"{s}/mIoU"]),
            "mDCC": json_number(metrics[f"{s}/mDCC"]),
            "pixel_accuracy": json_number(metrics[f"{s}/pixel_accuracy"]),
            "per_class": {
                name: {
                    "IoU": json_number(metrics[f"{s}/IoU/{name}"]),
                    "Dice": json_number(metrics[f"{s}/Dice/{name}"]),
                    "pixels": pixels[index],
                }
                for index, name in enumerate(self.class_names)
            },
            "metrics": {key: json_number(value) for key, value in metrics.items()},
            "confusion_matrix": matrix.tolist(),
        }

    def to_dict(self, per_image: bool = False) -> dict[str, Any]:
        document = {
            "split": self.split,
            "images": self.images,
            "class_names": self.class_names,
            "ignore_index": self.ignore_index,
            "scored_as": self.scored_as,
            **self._scores(self.matrix, self.metrics),
            "at_image_size": None,
        }
        if self.at_image_size is not None:
            own = self.at_image_size
            document["at_image_size"] = {"model_input": own.model_input, **self._scores(own.matrix, own.metrics)}
        if per_image:
            document["per_image"] = [
                {"image": score.name, "mIoU": json_number(score.mIoU), "pixels": score.pixels,
                 "IoU": {name: json_number(v) for name, v in zip(self.class_names, score.iou, strict=True)}}
                for score in self.per_image
            ]  # fmt: skip
        return document


def split_pairs(predictor: Predictor, root: Path, split: str, roi: Path | None = None) -> list[Pair]:
    """Check the split against the model's classes (as train does) and list its pairs in file order; `roi`: the
    folder of region masks (by default the split's roi/, when it has one)."""
    if roi is not None and not roi.is_dir():
        raise ConfigError(f"--roi {roi}: not a folder; give the folder of region masks (same stems as the images)")
    info = predictor.info
    label_map = dict(info.label_map) if info.label_map else None
    report = check_dataset_cached(root, [split], info.class_names, info.ignore_index, label_map=label_map, roi=roi)
    advice = label_advice(report.splits[split], info)
    what = (f"split '{split}' of {root}, checked against the model's {len(info.class_names)} classes "
            f"(ignore_index {info.ignore_index}),")  # fmt: skip
    if advice:
        others = [problem for problem in report.errors if problem.kind not in VALUE_PROBLEMS]
        listed = f"\nIt also failed the dataset check:\n{format_problems(others)}" if others else ""
        raise DatasetError(f"split '{split}' of {root}: {advice}{listed}")
    report.require_clean(what)
    # In the order `predict <root>/<split>/images` reads them, so both batch the same images together.
    pairs = sorted(list_pairs(root, split, roi), key=lambda pair: pair.image)
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
    roi: Path | None = None,
) -> Evaluation:
    """Check the split (as train does), predict every image and score the split as a whole and per image (inside
    the region masks in `roi`, by default the split's roi/ when it has one)."""
    pairs = split_pairs(predictor, root, split, roi)
    if on_total:
        on_total(len(pairs))
    return evaluate_pairs(predictor, pairs, options, split, on_image)


def describe_transforms(specs: Sequence[TransformSpec]) -> str:
    """`resize(height=192, width=256), center_crop(...)` as an experiment file spells them."""
    return ", ".join(f"{spec.name}({', '.join(f'{k}={v}' for k, v in spec.params.items())})" for spec in specs)


def _confusion(size: int, prediction: np.ndarray, target: np.ndarray, never_scored: int) -> torch.Tensor:
    matrix = torch.zeros(size, size, dtype=torch.long)
    add_confusion(matrix, torch.from_numpy(prediction.astype(np.int64)), torch.from_numpy(target.astype(np.int64)),
                  never_scored)  # fmt: skip
    return matrix


def validation_dataset(info: ModelInfo, pairs: Sequence[Pair]) -> SegmentationDataset:
    """The pairs as validation read and transformed them: the model's val pipeline, label map and fill label."""
    specs = [TransformSpec.model_validate(spec) for spec in info.val_transforms or []]
    never_scored = never_scored_label(info.ignore_index, len(info.class_names))
    pipeline = build_pipeline(specs, "the model's val_transforms", info.normalization, fill_label=never_scored)
    lookup = label_lookup(dict(info.label_map) if info.label_map else None)
    return SegmentationDataset(pairs, pipeline, in_channels=info.in_channels, label_lookup=lookup,
                               never_scored=never_scored)  # fmt: skip


def evaluate_pairs(
    predictor: Predictor,
    pairs: Sequence[Pair],
    options: InferenceOptions,
    split: str,
    on_image: Callable[[], None] | None = None,
    keep_worst: int = 0,
    at_image_size: bool = True,
) -> Evaluation:
    """Score `pairs` as validation scored them, as a whole and per image, and (`at_image_size`) at the images' own
    size when the model runs at another; `keep_worst`: also keep that many lowest-scoring images to draw."""
    info = predictor.info
    size = len(info.class_names)
    never_scored = never_scored_label(info.ignore_index, size)
    dataset = validation_dataset(info, pairs)
    specs = [TransformSpec.model_validate(spec) for spec in info.val_transforms or []]
    shown = preview_pipeline(specs, "val_transforms", info.normalization.max_pixel_value, fill_label=never_scored)
    as_validated = replace(options, resize=None)  # the val pipeline alone decides the size
    total, total_own = torch.zeros(size, size, dtype=torch.long), torch.zeros(size, size, dtype=torch.long)
    own_size_differs = False
    per_image, inputs = [], InputWarnings(info, options.resize)
    worst: list[tuple[ImageScore, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def read() -> Iterator[tuple[tuple[int, np.ndarray], np.ndarray]]:
        for index in range(len(dataset)):
            image, target = dataset.read(index)
            yield (index, target), image

    for batch in same_size_batches(read(), options.batch_size):
        validated = [_validated(dataset, image, target, index) for (index, target), image in batch]
        probs = predictor.batch_probabilities(torch.stack([image for image, _ in validated]), as_validated)
        predictions = masks_from(probs, size)
        images = [image for _, image in batch]
        runs_at_own_size = options.resize is None and validated[0][0].shape[-2:] == images[0].shape[:2]
        own_predictions = predictions if runs_at_own_size or not at_image_size else predictor.predict(images, options)
        own_size_differs |= not runs_at_own_size
        for ((index, target), image), (_, mask), prediction, own in zip(batch, validated, predictions,
                                                                        own_predictions, strict=True):  # fmt: skip
            pair = pairs[index]
            inputs.check(image)
            matrix = _confusion(size, prediction, mask.numpy(), never_scored)
            total += matrix
            if at_image_size:
                if own.shape != target.shape:
                    raise DatasetError(
                        f"{pair.mask}: mask is {target.shape[1]}x{target.shape[0]} but its image is "
                        f"{own.shape[1]}x{own.shape[0]} (WxH)"
                    )
                total_own += _confusion(size, own, target, never_scored)
            result = scores(matrix)
            headline = result["iou"][1] if info.binary else result["mIoU"]  # binary: the foreground, as in training
            score = ImageScore(pair.image.name, float(headline), result["iou"].tolist(), int(matrix.sum()))
            per_image.append(score)
            if keep_worst:
                shown_mask = mask.numpy()
                shown_mask = shown_mask.astype(np.uint8 if shown_mask.max(initial=0) < 256 else np.uint16)
                worst.append((score, image, target, shown_mask, prediction))
                worst.sort(key=lambda kept: kept[0].worst_first())
                del worst[keep_worst:]
            if on_image:
                on_image()
    own = None
    if at_image_size and own_size_differs:
        how = (f"resized to {options.resize[1]}x{options.resize[0]} (WxH), probabilities resized back"
               if options.resize else "each image at its own size")  # fmt: skip
        own = ImageSizeScores(total_own, epoch_metrics(total_own, split, info.class_names, info.binary), how)
    return Evaluation(
        split=split,
        images=len(pairs),
        class_names=list(info.class_names),
        ignore_index=info.ignore_index,
        matrix=total,
        metrics=epoch_metrics(total, split, info.class_names, info.binary),
        per_image=per_image,
        warnings=inputs.messages,
        worst_samples=[_grid_row(shown, *kept) for kept in worst],
        scored_as=f"val_transforms {describe_transforms(specs)}" if specs else "no val_transforms",
        at_image_size=own,
    )


def _validated(dataset: SegmentationDataset, image: np.ndarray, target: np.ndarray, index: int):
    try:
        return dataset.transformed(image, target, 0, index)
    except CropSizeError as exc:
        raise DatasetError(f"{dataset.pairs[index].image}: the model's val_transforms cannot take it: {exc}") from None


def _grid_row(shown, score: ImageScore, image: np.ndarray, target: np.ndarray, mask: np.ndarray,
              prediction: np.ndarray) -> Sample:  # fmt: skip
    """The image as validation saw it (val transforms, no normalisation), its target there and the prediction."""
    caption = f"mIoU {score.mIoU:.3f}" if not np.isnan(score.mIoU) else "nothing to score"
    return Sample(score.name, display_image(shown(image=image, mask=target)["image"]), mask, prediction, caption)
