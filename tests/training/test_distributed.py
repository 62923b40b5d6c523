"""Two CPU processes (DDP, gloo): metrics equal one process's on the same weights; one set of files."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from segcli.artifacts.checkpoints import read_checkpoint
from segcli.config.schema import Experiment
from segcli.data.dataset import SegmentationDataset
from segcli.data.io import list_pairs
from segcli.data.transforms import build_pipeline
from segcli.models.metrics import ConfusionMatrix, epoch_metrics
from segcli.models.task import SegmentationTask
from tests.support import DEMO_CLASSES, run_segcli

EXPERIMENTS = """
model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults: {batch_size: 2, max_epochs: 1, num_workers: 0, devices: 2, strategy: ddp}
experiments:
  two: {}
  three: {lr: 0.01}
"""


def _single_process_val_metrics(checkpoint, dataset_root) -> dict[str, float]:
    experiment = Experiment.model_validate(checkpoint.experiment)
    names = checkpoint.info.class_names
    task = SegmentationTask(experiment.model_dump(mode="json"), names)
    task.model.load_state_dict(checkpoint.state_dict)
    task.eval()
    pipeline = build_pipeline(
        experiment.val_transforms, "val_transforms", checkpoint.info.normalization, fill_label=255
    )
    dataset = SegmentationDataset(list_pairs(dataset_root, "val"), pipeline)
    matrix = ConfusionMatrix(4, experiment.ignore_index)
    with torch.no_grad():
        for images, masks in DataLoader(dataset, batch_size=1):
            matrix.update(task(images).argmax(1), masks)
    return epoch_metrics(matrix.compute(), "val", names)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "ddp.yaml").write_text(EXPERIMENTS)
    result = run_segcli("train", "-c", "ddp.yaml", "-e", "two", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES,
                        "--output-dir", "out", cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run ddp-two") == 1  # one summary: the second process reports nothing

    run_dirs = list((in_tmp_cwd / "out" / "checkpoints").iterdir())
    assert [d.name for d in run_dirs] == ["ddp-two"]
    files = sorted(p.name for p in run_dirs[0].glob("*.pth"))
    assert files == ["average_model.pth", "ckpt_best.pth", "ckpt_latest.pth"]
    assert len(list((in_tmp_cwd / "out" / "wandb").glob("offline-run-*"))) == 1

    checkpoint = read_checkpoint(run_dirs[0] / "ckpt_latest.pth")
    logged = checkpoint.metrics
    expected = _single_process_val_metrics(checkpoint, tiny_dataset)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(logged[key]), key
        else:
            assert logged[key] == pytest.approx(value, rel=1e-6), key  # Lightning logs in float32


@pytest.mark.slow
def test_a_sweep_under_ddp_runs_every_experiment(tiny_dataset, in_tmp_cwd):
    """The second process left the sweep after the first experiment; the next Trainer then lost its peer."""
    (in_tmp_cwd / "ddp.yaml").write_text(EXPERIMENTS)
    result = run_segcli("train", "-c", "ddp.yaml", "-e", "all", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES,
                        "--output-dir", "out", cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep: best validation scores" in result.stdout and result.stdout.count(" ok") == 2
    for run in ("ddp-two", "ddp-three"):
        assert (in_tmp_cwd / "out" / "checkpoints" / run / "ckpt_best.pth").is_file(), run
