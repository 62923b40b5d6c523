"""Confusion matrix and the scores derived from it, on hand-made tensors with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from segcli.models.metrics import ConfusionMatrix, epoch_metrics, logged_metric_keys, scores


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def matrix_of(preds, target, num_classes, ignore_index=None) -> torch.Tensor:
    metric = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    metric.update(t(preds), t(target))
    return metric.compute()


# Three classes, nine pixels as a 1x3x3 batch (N, H, W).
TARGET_3 = [[[0, 0, 0], [1, 1, 2], [2, 2, 2]]]
PREDS_3 = [[[0, 1, 0], [1, 2, 2], [2, 0, 2]]]
# rows = target, columns = prediction:
#   target 0 -> preds 0, 1, 0      -> [2, 1, 0]
#   target 1 -> preds 1, 2         -> [0, 1, 1]
#   target 2 -> preds 2, 2, 0, 2   -> [1, 0, 3]
MATRIX_3 = [[2, 1, 0], [0, 1, 1], [1, 0, 3]]


# --------------------------------------------------------------------------- ConfusionMatrix


def test_rows_are_target_columns_are_prediction():
    # One pixel of class 0 predicted as class 1: entry [target=0, pred=1].
    matrix = matrix_of([1], [0], num_classes=2)
    assert matrix.tolist() == [[0, 1], [0, 0]]
    matrix = matrix_of([0], [1], num_classes=2)
    assert matrix.tolist() == [[0, 0], [1, 0]]


def test_hand_computed_3x3_matrix():
    matrix = matrix_of(PREDS_3, TARGET_3, num_classes=3)
    assert matrix.tolist() == MATRIX_3
    assert matrix.dtype == torch.long
    assert int(matrix.sum()) == 9


def test_ignore_index_out_of_range_excluded():
    # 255 marks unlabelled pixels; their predictions must not reach the matrix.
    target = [[0, 255, 1], [255, 1, 255]]
    preds = [[0, 1, 1], [0, 0, 1]]
    matrix = matrix_of(preds, target, num_classes=2, ignore_index=255)
    assert matrix.tolist() == [[1, 0], [1, 1]]
    assert int(matrix.sum()) == 3


def test_ignore_index_equal_to_num_classes_excluded():
    # CamVid style: 11 classes, label 11 = void.
    target = [0, 1, 2, 3, 3, 1]
    preds = [0, 1, 0, 2, 1, 1]
    matrix = matrix_of(preds, target, num_classes=3, ignore_index=3)
    assert matrix.tolist() == [[1, 0, 0], [0, 2, 0], [1, 0, 0]]


def test_ignore_index_inside_class_range_excluded():
    # ignore_index 0: every target-0 pixel is left out, whatever was predicted there;
    # predictions of 0 on other pixels still count (column 0).
    target = [0, 0, 0, 1, 1, 2, 2]
    preds = [0, 1, 2, 1, 0, 2, 2]
    matrix = matrix_of(preds, target, num_classes=3, ignore_index=0)
    assert matrix.tolist() == [[0, 0, 0], [1, 1, 0], [0, 0, 2]]
    without_ignore = matrix_of(preds, target, num_classes=3)
    assert without_ignore[0].tolist() == [1, 1, 1]


def test_ignored_pixels_do_not_change_scores():
    target = [[0, 1, 1, 255, 255]]
    preds = [[0, 1, 0, 1, 1]]
    with_void = scores(matrix_of(preds, target, num_classes=2, ignore_index=255))
    clean = scores(matrix_of([[0, 1, 0]], [[0, 1, 1]], num_classes=2))
    assert torch.equal(with_void["iou"], clean["iou"])
    assert float(with_void["pixel_accuracy"]) == pytest.approx(2 / 3)


def test_two_updates_equal_one_update_on_concatenation():
    preds_a, target_a = t([[[0, 1], [1, 1]]]), t([[[0, 0], [1, 1]]])
    preds_b, target_b = t([[[2, 2], [0, 1]], [[2, 0], [0, 0]]]), t([[[2, 1], [0, 2]], [[2, 2], [0, 1]]])
    accumulated = ConfusionMatrix(3)
    accumulated.update(preds_a, target_a)
    accumulated.update(preds_b, target_b)
    once = ConfusionMatrix(3)
    once.update(torch.cat([preds_a, preds_b]), torch.cat([target_a, target_b]))
    assert torch.equal(accumulated.compute(), once.compute())
    assert int(accumulated.compute().sum()) == 12
    first_only = ConfusionMatrix(3)
    first_only.update(preds_a, target_a)
    assert not torch.equal(first_only.compute(), accumulated.compute())


def test_reset_clears_the_matrix():
    metric = ConfusionMatrix(3)
    metric.update(t(PREDS_3), t(TARGET_3))
    assert int(metric.compute().sum()) == 9
    metric.reset()
    assert metric.matrix.tolist() == [[0] * 3] * 3  # state read directly: compute() before update warns
    metric.update(t([[1]]), t([[2]]))
    assert metric.compute().tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_uint8_masks_with_many_classes():
    metric = ConfusionMatrix(20)
    metric.update(torch.tensor([19, 5], dtype=torch.uint8), torch.tensor([19, 18], dtype=torch.uint8))
    expected = torch.zeros(20, 20, dtype=torch.long)
    expected[19, 19] = 1
    expected[18, 5] = 1
    assert torch.equal(metric.compute(), expected)


def test_uint8_masks_with_few_classes():
    # Same dtype, small enough not to wrap: matches the long result.
    preds, target = t(PREDS_3), t(TARGET_3)
    metric = ConfusionMatrix(3)
    metric.update(preds.to(torch.uint8), target.to(torch.uint8))
    assert metric.compute().tolist() == MATRIX_3


def test_forward_accumulates_like_update():
    # Lightning code may call the metric object; its state must still hold the whole epoch.
    metric = ConfusionMatrix(2)
    metric(t([0, 1]), t([0, 0]))
    metric(t([1, 1]), t([1, 0]))
    assert metric.compute().tolist() == [[1, 2], [0, 1]]


# --------------------------------------------------------------------------- scores()


def test_scores_hand_computed():
    result = scores(torch.tensor(MATRIX_3))
    # class 0: TP 2, FP 1 (col 0 sum 3), FN 1 (row 0 sum 3) -> IoU 2/4, Dice 4/6
    # class 1: TP 1, FP 1 (col 1 sum 2), FN 1 (row 1 sum 2) -> IoU 1/3, Dice 2/4
    # class 2: TP 3, FP 1 (col 2 sum 4), FN 1 (row 2 sum 4) -> IoU 3/5, Dice 6/8
    iou = [2 / 4, 1 / 3, 3 / 5]
    dice = [4 / 6, 2 / 4, 6 / 8]
    assert result["iou"].tolist() == pytest.approx(iou)
    assert result["dice"].tolist() == pytest.approx(dice)
    assert float(result["mIoU"]) == pytest.approx(sum(iou) / 3)
    assert float(result["mDCC"]) == pytest.approx(sum(dice) / 3)
    assert float(result["pixel_accuracy"]) == pytest.approx(6 / 9)


def test_dice_equals_2iou_over_1_plus_iou():
    result = scores(torch.tensor([[5, 2, 1], [3, 7, 0], [0, 4, 9]]))
    for iou, dice in zip(result["iou"].tolist(), result["dice"].tolist(), strict=True):
        assert dice == pytest.approx(2 * iou / (1 + iou))


def test_perfect_prediction():
    result = scores(matrix_of([0, 1, 2, 2], [0, 1, 2, 2], num_classes=3))
    assert result["iou"].tolist() == [1.0, 1.0, 1.0]
    assert float(result["mIoU"]) == 1.0
    assert float(result["mDCC"]) == 1.0
    assert float(result["pixel_accuracy"]) == 1.0


def test_absent_class_is_nan_and_left_out_of_means():
    # Class 2 appears in neither targets nor predictions.
    matrix = torch.tensor([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    result = scores(matrix)
    iou0, iou1 = 3 / 5, 2 / 4
    dice0, dice1 = 6 / 8, 4 / 6
    assert result["iou"][:2].tolist() == pytest.approx([iou0, iou1])
    assert math.isnan(float(result["iou"][2]))
    assert math.isnan(float(result["dice"][2]))
    assert float(result["mIoU"]) == pytest.approx((iou0 + iou1) / 2)
    assert float(result["mDCC"]) == pytest.approx((dice0 + dice1) / 2)
    # Counting the absent class as 0 would give a different (wrong) mean.
    assert float(result["mIoU"]) != pytest.approx((iou0 + iou1 + 0) / 3)
    assert float(result["mDCC"]) != pytest.approx((dice0 + dice1 + 0) / 3)
    assert float(result["pixel_accuracy"]) == pytest.approx(5 / 7)


def test_class_predicted_but_never_present_scores_zero_and_counts():
    # Class 2 is never a target but is predicted once: a false positive, IoU 0, counted in the mean.
    matrix = torch.tensor([[3, 1, 1], [0, 2, 0], [0, 0, 0]])
    result = scores(matrix)
    iou = [3 / 5, 2 / 3, 0.0]
    dice = [6 / 8, 4 / 5, 0.0]
    assert result["iou"].tolist() == pytest.approx(iou)
    assert result["dice"].tolist() == pytest.approx(dice)
    assert float(result["mIoU"]) == pytest.approx(sum(iou) / 3)
    assert float(result["mDCC"]) == pytest.approx(sum(dice) / 3)


def test_class_present_but_never_predicted_scores_zero():
    matrix = torch.tensor([[4, 0], [2, 0]])
    result = scores(matrix)
    assert result["iou"].tolist() == pytest.approx([4 / 6, 0.0])
    assert float(result["mIoU"]) == pytest.approx((4 / 6) / 2)
    assert float(result["pixel_accuracy"]) == pytest.approx(4 / 6)


def test_empty_matrix_gives_nan_everywhere():
    result = scores(torch.zeros(3, 3, dtype=torch.long))
    assert all(math.isnan(v) for v in result["iou"].tolist())
    assert math.isnan(float(result["mIoU"]))
    assert math.isnan(float(result["pixel_accuracy"]))


def test_scores_do_not_overflow_or_truncate_on_large_counts():
    matrix = torch.tensor([[10**9, 10**9], [0, 10**9]])
    result = scores(matrix)
    assert result["iou"].tolist() == pytest.approx([0.5, 0.5])
    assert result["iou"].dtype == torch.float64


# --------------------------------------------------------------------------- epoch vs per-batch


def test_epoch_miou_is_not_the_mean_of_batch_mious():
    batch_1 = (t([[0, 0], [0, 0]]), t([[0, 0], [0, 0]]))  # (preds, target): all background, all right
    batch_2 = (t([[1, 1], [1, 1]]), t([[0, 1], [1, 1]]))  # one background pixel predicted as class 1

    per_batch = []
    for preds, target in (batch_1, batch_2):
        metric = ConfusionMatrix(2)
        metric.update(preds, target)
        per_batch.append(float(scores(metric.compute())["mIoU"]))
    # batch 1: IoU0 = 4/4, class 1 absent -> mIoU 1.0
    # batch 2: IoU0 = 0/1, IoU1 = 3/4     -> mIoU 0.375
    assert per_batch == pytest.approx([1.0, 0.375])
    mean_of_batches = sum(per_batch) / 2

    epoch = ConfusionMatrix(2)
    for preds, target in (batch_1, batch_2):
        epoch.update(preds, target)
    assert epoch.compute().tolist() == [[4, 1], [0, 3]]
    epoch_miou = float(scores(epoch.compute())["mIoU"])
    # epoch: IoU0 = 4/5, IoU1 = 3/4 -> mIoU 0.775
    assert epoch_miou == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert mean_of_batches == pytest.approx(0.6875)
    assert epoch_miou != pytest.approx(mean_of_batches)


# --------------------------------------------------------------------------- metric keys


CLASSES = ["background", "disc", "square"]


def test_epoch_metrics_keys_and_values():
    metrics = epoch_metrics(torch.tensor(MATRIX_3), "val", CLASSES)
    expected_keys = {"val/mIoU", "val/mDCC", "val/pixel_accuracy"}
    expected_keys |= {f"val/IoU/{name}" for name in CLASSES}
    expected_keys |= {f"val/Dice/{name}" for name in CLASSES}
    assert set(metrics) == expected_keys
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["val/IoU/background"] == pytest.approx(2 / 4)
    assert metrics["val/IoU/disc"] == pytest.approx(1 / 3)
    assert metrics["val/IoU/square"] == pytest.approx(3 / 5)
    assert metrics["val/Dice/square"] == pytest.approx(6 / 8)
    assert metrics["val/mIoU"] == pytest.approx((2 / 4 + 1 / 3 + 3 / 5) / 3)
    assert metrics["val/pixel_accuracy"] == pytest.approx(6 / 9)


def test_epoch_metrics_stage_prefix_and_absent_class():
    matrix = torch.tensor([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    metrics = epoch_metrics(matrix, "train", CLASSES)
    assert all(key.startswith("train/") for key in metrics)
    assert math.isnan(metrics["train/IoU/square"])
    assert metrics["train/mIoU"] == pytest.approx((3 / 5 + 2 / 4) / 2)


def test_logged_metric_keys():
    keys = logged_metric_keys("val", CLASSES)
    assert "val/loss" in keys
    for key in ("val/mIoU", "val/mDCC", "val/pixel_accuracy"):
        assert key in keys
    for name in CLASSES:
        assert f"val/IoU/{name}" in keys
        assert f"val/Dice/{name}" in keys
    assert len(keys) == len(set(keys)) == 4 + 2 * len(CLASSES)
    # Every key epoch_metrics produces is one that can be monitored.
    assert set(epoch_metrics(torch.tensor(MATRIX_3), "val", CLASSES)) <= set(keys)
    assert all(key.startswith("train/") for key in logged_metric_keys("train", CLASSES))
