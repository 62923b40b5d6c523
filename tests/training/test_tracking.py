"""What goes to W&B: masks of any size and integer type, and failures that never take a training run down."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl

from segcli.config.schema import Experiment
from segcli.data.io import label_lookup, map_labels
from segcli.drawing.pictures import Sample
from segcli.training import tracking
from segcli.training.run import RunOptions, train
from tests.support import DEMO_CLASSES

CLASSES = DEMO_CLASSES.split(",")


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.uint8])
def test_masks_of_any_integer_type_are_logged_downscaled_to_512_pixels(dtype):
    """Images over 512 px crashed the first validation: PIL cannot downscale the int64 ground truth (and the
    validation step's int64 predictions) that the predictions callback handed over."""
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (600, 701)).astype(dtype)
    image = rng.integers(0, 256, (600, 701, 3)).astype(np.uint8)
    layers = tracking.wandb_masks(Sample("a.png", image, mask, mask.copy(), "epoch 1"), {0: "background"})
    for layer in ("ground_truth", "prediction"):
        data = layers[layer]["mask_data"]
        assert data.dtype == np.uint8 and data.shape == (438, 512), layer
        assert set(np.unique(data)) <= set(np.unique(mask))  # nearest neighbour: no invented labels


def test_the_label_map_table_and_mapped_masks_are_small_integers():
    table = label_lookup({255: 1, 7: 300})
    assert table.dtype == np.uint16  # 65536 entries: 128 KiB rather than int64's 512 KiB
    assert map_labels(np.array([[0, 255]], np.uint8), label_lookup({255: 1})).dtype == np.uint8
    assert map_labels(np.array([[7, 255]], np.uint8), table).tolist() == [[300, 1]]


def _experiment(**keys) -> Experiment:
    base = {
        "model": {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 4,
                  "params": {"decoder_channels": [16, 16, 16, 16, 16]}},
        "batch_size": 4, "max_epochs": 2, "num_workers": 0, "average": None,
        "log_predictions": {"count": 1, "worst": 1},
    }  # fmt: skip
    return Experiment.model_validate({**base, **keys})


class EndTheWandbRun(pl.Callback):
    """W&B's run ends under training (its service died, a network store failed): every later call raises."""

    def on_train_start(self, trainer, task) -> None:
        trainer.logger.experiment.finish()


def test_a_tracker_failure_is_one_warning_and_the_run_goes_on(tiny_dataset, tmp_path):
    """Every later metric, picture and file sync fails; training must still write its checkpoints, metrics and
    report, and say so once."""
    told = []
    options = RunOptions(dataset=tiny_dataset, class_names=CLASSES, run_name="run", experiment_name="e",
                         output_dir=tmp_path, progress=False, extra_callbacks=[EndTheWandbRun()],
                         on_warning=told.append)  # fmt: skip
    result = train(_experiment(), options)
    assert len(told) == 1 and told[0].startswith("W&B: could not "), told
    assert "UsageError" in told[0] and "training goes on without W&B" in told[0]
    run_dir = result.run_dir
    for name in ("ckpt_best.pth", "ckpt_latest.pth", "state_latest.ckpt", "metrics.csv", "results.png",
                 "confusion_matrix.png", "worst_predictions.png"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    with (run_dir / "metrics.csv").open() as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["1", "2"]
    assert result.epochs_run == 2 and Path(result.wandb_dir).is_dir()


def test_a_wandb_run_that_cannot_start_at_all_is_one_warning_and_training_goes_on(tiny_dataset, tmp_path,
                                                                                  monkeypatch):  # fmt: skip
    """Online falls back to offline; when even offline cannot start (a full or read-only disk), the run trains
    without W&B."""

    def refuse(**kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking.wandb, "init", refuse)
    told = []
    options = RunOptions(dataset=tiny_dataset, class_names=CLASSES, run_name="run", experiment_name="e",
                         output_dir=tmp_path, progress=False, on_warning=told.append)  # fmt: skip
    result = train(_experiment(max_epochs=1), options)
    assert len(told) == 1 and "could not start" in told[0] and "No space left" in told[0], told
    assert (result.run_dir / "ckpt_best.pth").is_file() and result.wandb_dir is None
