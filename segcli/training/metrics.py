"""Segmentation scores from one confusion matrix accumulated over a whole epoch or split.

Rules (also in the README): pixels labelled `ignore_index` are left out of everything; a class that
appears in neither the targets nor the predictions has IoU/Dice NaN and is left out of the means,
never counted as 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

SCORE_NAMES = ("loss", "mIoU", "mDCC", "pixel_accuracy")


class ConfusionMatrix(Metric):
    """rows = target class, columns = predicted class; one bincount per update, summed across processes."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("matrix", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        valid = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            valid &= target != self.ignore_index
        # int64 before the arithmetic: uint8 masks would wrap at 256 (19 * 20 + 19 > 255).
        index = target[valid].long() * self.num_classes + preds[valid].long()
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def compute(self) -> torch.Tensor:
        return self.matrix


def scores(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class IoU and Dice (NaN for absent classes), their means over present classes, pixel accuracy."""
    matrix = matrix.double()
    true_positive = matrix.diag()
    false_positive = matrix.sum(0) - true_positive
    false_negative = matrix.sum(1) - true_positive
    union = true_positive + false_positive + false_negative
    nan = torch.full_like(union, float("nan"))
    iou = torch.where(union > 0, true_positive / union, nan)
    dice = torch.where(union > 0, 2 * true_positive / (union + true_positive), nan)
    total = matrix.sum()
    return {
        "iou": iou,
        "dice": dice,
        "mIoU": iou.nanmean(),
        "mDCC": dice.nanmean(),
        "pixel_accuracy": true_positive.sum() / total if total > 0 else torch.tensor(float("nan")),
    }


def epoch_metrics(matrix: torch.Tensor, stage: str, class_names: Sequence[str]) -> dict[str, float]:
    """The keys users read: `<stage>/mIoU`, `<stage>/mDCC`, `<stage>/IoU/<class>`, `<stage>/Dice/<class>`, ..."""
    result = scores(matrix)
    metrics = {f"{stage}/{name}": float(result[name]) for name in ("mIoU", "mDCC", "pixel_accuracy")}
    for index, name in enumerate(class_names):
        metrics[f"{stage}/IoU/{name}"] = float(result["iou"][index])
        metrics[f"{stage}/Dice/{name}"] = float(result["dice"][index])
    return metrics


def logged_metric_keys(stage: str, class_names: Sequence[str]) -> list[str]:
    keys = [f"{stage}/{name}" for name in SCORE_NAMES]
    keys += [f"{stage}/{kind}/{name}" for kind in ("IoU", "Dice") for name in class_names]
    return keys
