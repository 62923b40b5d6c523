"""How images become model inputs and outputs map back, end to end: odd sizes for every kind of size multiple,
padding never trained on or scored, `evaluate` reproducing the logged val metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from segcli.artifacts import RunDir, RunRecord, read_checkpoint
from segcli.config.schema import Experiment, TransformSpec
from segcli.data.synthetic import make_dataset
from segcli.data.transforms import build_pipeline
from segcli.inference.engine import InferenceOptions
from segcli.inference.evaluate import evaluate_split
from segcli.inference.loading import open_model
from segcli.models.task import SegmentationTask
from segcli.training.run import RunOptions, train
from tests.inference.support import read_png
from tests.support import DEMO_CLASSES

CLASSES = DEMO_CLASSES.split(",")
ODD = (45, 67)  # (height, width): a multiple of none of 8, 16, 32
SMALL = {  # small decoders keep the runs cheap
    "unet": {"decoder_channels": [32, 16, 16, 8, 8]},
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "deeplabv3plus": {"decoder_channels": 32},
}


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("odd"), train=4, val=3, size=ODD, seed=5)


def experiment(arch: str, **keys) -> Experiment:
    model = {"arch": arch, "encoder_name": "resnet18", "encoder_weights": None, "classes": 4, "params": SMALL[arch]}
    base = {"model": model, "batch_size": 2, "max_epochs": 1, "num_workers": 0, "average": None,
            "log_predictions": {"count": 0, "worst": 0}}  # fmt: skip
    return Experiment.model_validate({**base, **keys})


def run(exp: Experiment, dataset: Path, output: Path) -> RunDir:
    train(exp, RunOptions(dataset=dataset, class_names=CLASSES, run_name="run", experiment_name="e",
                          output_dir=output, progress=False))  # fmt: skip
    return RunDir(output / "checkpoints" / "run")


def assert_same_metrics(stored: dict[str, float], measured: dict[str, float]) -> None:
    for key in ("val/mIoU", "val/mDCC", "val/pixel_accuracy", *(f"val/IoU/{name}" for name in CLASSES)):
        a, b = stored[key], measured[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-4), (key, a, b)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "multiple"), [("unet", 1), ("fpn", 32), ("deeplabv3plus", 16)])
def test_odd_sizes_train_and_evaluate_reproduces_the_logged_val_metrics(odd_dataset, tmp_path, arch, multiple):
    """45x67 images, no transforms: each batch is padded to the architecture's multiple and the logits cropped back,
    in training as in `evaluate`, so both score the same pixels the same way."""
    run_dir = run(experiment(arch), odd_dataset, tmp_path)
    checkpoint = read_checkpoint(run_dir.best)
    assert checkpoint.info.size_multiple == multiple
    evaluation = evaluate_split(open_model(run_dir.best), odd_dataset, "val", InferenceOptions(batch_size=2))
    assert_same_metrics(checkpoint.metrics, evaluation.metrics)
    assert int(evaluation.matrix.sum()) == 3 * ODD[0] * ODD[1]


@pytest.mark.slow
@pytest.mark.parametrize("ignore_index", [None, 7])
def test_a_pad_in_the_transforms_is_never_scored(odd_dataset, tmp_path, ignore_index):
    """`pad_if_needed` to 64x96 in both lists, without `fill_mask`: validation counts exactly the images' own pixels
    (Albumentations would fill the mask with 0, the first class, and score it)."""
    pad = [{"name": "pad_if_needed", "params": {"min_height": 64, "min_width": 96}}]
    exp = experiment("fpn", train_transforms=pad, val_transforms=pad, ignore_index=ignore_index)
    run_dir = run(exp, odd_dataset, tmp_path)
    logged = np.array(RunRecord.read(run_dir).report["best_matrix"])
    labels = np.concatenate([read_png(path).ravel() for path in sorted((odd_dataset / "val" / "labels").glob("*"))])
    assert logged.sum(1).tolist() == np.bincount(labels, minlength=4).tolist()  # every target pixel, once


@pytest.mark.parametrize(
    "transform",
    [
        {"name": "pad_if_needed", "params": {"min_height": 64, "min_width": 96}},
        {"name": "affine", "params": {"translate_px": {"x": 20, "y": 0}, "p": 1.0}},
        {"name": "rotate", "params": {"limit": [30, 30], "p": 1.0}},
    ],
)
@pytest.mark.parametrize("ignore_index", [None, 7])
def test_padded_and_uncovered_mask_pixels_are_never_trained_on(transform, ignore_index):
    """Pads and the borders a warp uncovers hold the label the loss and the metrics leave out: the experiment's
    ignore_index, or an internal one without it. An explicit `fill_mask` is kept."""
    exp = experiment("unet", ignore_index=ignore_index)
    task = SegmentationTask(exp.model_dump(mode="json"), CLASSES)
    assert task.never_scored == (7 if ignore_index is not None else 255)
    pipeline = build_pipeline([TransformSpec(**transform)], "train_transforms", {"mode": "image", "mean": None,
                              "std": None, "max_pixel_value": 255.0}, seed=0, fill_label=task.never_scored)  # fmt: skip
    image = np.random.default_rng(0).integers(0, 256, (*ODD, 3), dtype=np.uint8)
    mask = np.ones(ODD, np.uint8)  # class 1 everywhere: any 0 in the output would be a fill scored as class 0
    out = pipeline(image=image, mask=mask)
    target = out["mask"].long()[None]
    filled = target != 1
    assert filled.any() and set(target[filled].unique().tolist()) == {task.never_scored}
    # Predictions wrong only where the mask was filled cost no more than right ones, and are not counted.
    right = torch.full((1, 4, *target.shape[1:]), -10.0)
    right[:, 1] = 10.0
    wrong_at_fills = right.clone()
    wrong_at_fills[:, 0][filled] = 30.0
    assert float(task.criterion(wrong_at_fills, target)) == pytest.approx(float(task.criterion(right, target)))
    matrix = task.new_confusion_matrix()
    matrix.update(wrong_at_fills.max(1).indices, target)
    assert matrix.compute().tolist()[1] == [0, int((~filled).sum()), 0, 0]

    kept = build_pipeline([TransformSpec(name=transform["name"], params={**transform["params"], "fill_mask": 3})],
                          "train_transforms", {"mode": "image", "mean": None, "std": None, "max_pixel_value": 255.0},
                          seed=0, fill_label=task.never_scored)(image=image, mask=mask)["mask"]  # fmt: skip
    assert set(kept.unique().tolist()) == {1, 3}
