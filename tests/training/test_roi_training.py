"""A run on a dataset with region masks (roi/): its val metrics are `evaluate`'s and a numpy confusion matrix's
over the pixels inside the regions only; the labels stored outside them never count."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcli.artifacts.checkpoints import read_checkpoint
from segcli.artifacts.folders import RunDir
from segcli.config.schema import Experiment
from segcli.data.io import list_pairs, read_image
from segcli.inference.engine import InferenceOptions
from segcli.inference.evaluate import evaluate_split
from segcli.inference.loading import open_model
from segcli.training.run import RunOptions, train
from tests.data.test_roi import add_roi
from tests.support import DEMO_CLASSES

CLASSES = DEMO_CLASSES.split(",")
KEYS = ("val/mIoU", "val/mDCC", "val/pixel_accuracy", "val/IoU/disc", "val/IoU/background")


def test_val_metrics_equal_evaluate_and_numpy_inside_the_region_only(tiny_dataset, tmp_path):
    """Labels outside the regions are 200 (no class: the check would fail on it, the loss would crash on it)
    while training, through the RAM cache; evaluate then reads the files again. The numpy matrix uses the
    original labels inside the regions: equal, so nothing outside counted."""
    clean = add_roi(Path(shutil.copytree(tiny_dataset, tmp_path / "clean")))
    garbage = add_roi(Path(shutil.copytree(tiny_dataset, tmp_path / "garbage")), 200)
    experiment = Experiment.model_validate({
        "model": {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 4},
        "batch_size": 4, "max_epochs": 1, "num_workers": 0, "cache": "ram", "log_predictions": {"count": 0},
    })  # fmt: skip
    train(experiment, RunOptions(dataset=garbage, class_names=CLASSES, run_name="run", experiment_name="e",
                                 output_dir=tmp_path / "out", progress=False))  # fmt: skip
    best = RunDir(tmp_path / "out" / "checkpoints" / "run").best
    logged = read_checkpoint(best).metrics
    predictor = open_model(best)
    evaluations = [evaluate_split(predictor, root, "val", InferenceOptions(batch_size=4)) for root in (garbage, clean)]
    for key in KEYS:
        for evaluation in evaluations:
            stored, measured = logged[key], evaluation.metrics[key]
            assert (math.isnan(stored) and math.isnan(measured)) or stored == pytest.approx(measured, abs=1e-4), key

    matrix = np.zeros((4, 4), np.int64)
    for pair in list_pairs(clean, "val"):
        inside = np.array(Image.open(pair.roi)) != 0
        label = np.array(Image.open(pair.mask)).astype(np.int64)
        predicted = predictor.predict([read_image(pair.image)], InferenceOptions())[0].astype(np.int64)
        matrix += np.bincount(label[inside] * 4 + predicted[inside], minlength=16).reshape(4, 4)
    assert matrix.sum() < 4 * 64 * 64  # the regions leave pixels out
    for evaluation in evaluations:
        assert evaluation.matrix.tolist() == matrix.tolist()
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    assert logged["val/mIoU"] == pytest.approx(float(np.nanmean(iou)), abs=1e-4)
    assert logged["val/pixel_accuracy"] == pytest.approx(tp.sum() / matrix.sum(), abs=1e-4)
