"""The whole tool at realistic sizes: train 1 epoch, then predict, evaluate and export-checkpoint.

Every image is above the 512-px side W&B pictures are downscaled to, and of an odd size (not a multiple of
32). The cases cover 8-bit RGB, 16-bit grey and 4-band input; `label_map` or none; 1, 2 and 4 classes; W&B
offline and disabled: each value at least twice, each kind of input with two class set-ups, not the whole
cross product. The model is the smallest that is still a real one (Unet/resnet18, narrow decoder), with two
train and two val images, so the matrix takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from segcli.artifacts.checkpoints import read_checkpoint
from segcli.config.schema import Experiment
from segcli.data.synthetic import make_sample
from segcli.training.run import RunOptions, train
from segcli.training.trackers.wandb_tracker import MAX_LOGGED_SIDE
from tests.inference.support import read_png, run_main
from tests.support import wandb_history

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    name: str
    images: str
    """rgb8 (PNG, or PPM with GIF masks), grey16 (12-bit values in 16-bit PNGs) or bands4 (uint16 TIFF)."""
    classes: int
    label_map: dict[int, int] | None
    wandb: str
    size: tuple[int, int]
    """(height, width): above 512 on the longer side, no multiple of 32."""
    image_suffix: str = ".png"
    mask_suffix: str = ".png"


CASES = [
    Case("rgb8-4-classes", "rgb8", 4, None, "offline", (333, 517)),
    Case("rgb8-ppm-gif-0-255-softmax", "rgb8", 2, {255: 1}, "offline", (521, 301), ".ppm", ".gif"),
    Case("grey16-0-255-sigmoid", "grey16", 1, {255: 1}, "offline", (515, 333)),
    Case("grey16-4-classes-void", "grey16", 4, {9: 255}, "disabled", (301, 529)),
    Case("bands4-2-classes", "bands4", 2, None, "offline", (303, 525), ".tif"),
    Case("bands4-sigmoid", "bands4", 1, None, "disabled", (517, 299), ".tif"),
]
CLASS_NAMES = {1: ["background", "shape"], 2: ["background", "shape"], 4: ["background", "disc", "square", "tri"]}


def _image(kind: str, rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    if kind == "grey16":
        return (rgb.mean(2) * 16).astype(np.uint16)  # 0..4080: 12-bit data
    if kind == "bands4":
        nir = (labels.astype(np.uint16) * 700 + 900).astype(np.uint16)
        return np.dstack([rgb.astype(np.uint16) * 64, nir])
    return rgb


def _mask(case: Case, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if case.classes <= 2:
        foreground = labels > 0
        return np.where(foreground, 255 if case.label_map else 1, 0).astype(np.uint8)
    mask = labels.astype(np.uint8)
    if case.label_map:  # a stray void value, ignored through the map
        mask[rng.random(mask.shape) < 0.01] = 9
    return mask


def _write(path: Path, array: np.ndarray) -> None:
    if path.suffix == ".tif":
        tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig")
    elif path.suffix in (".ppm", ".gif"):  # Pillow, as the retinal-vessel sets ship them
        Image.fromarray(array).save(path, optimize=False)
    else:
        cv2.imwrite(str(path), cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array)


def _dataset(case: Case, root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True)
        for index in range(2):
            rgb, labels = make_sample(case.size, rng, num_shapes=4)
            _write(root / split / "images" / f"{split}_{index}{case.image_suffix}", _image(case.images, rgb, labels))
            _write(root / split / "labels" / f"{split}_{index}{case.mask_suffix}", _mask(case, labels, rng))
    return root


def _experiment(case: Case) -> Experiment:
    channels = {"rgb8": 3, "grey16": 1, "bands4": 4}[case.images]
    return Experiment.model_validate(
        {
            "model": {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": case.classes,
                      "in_channels": channels, "params": {"decoder_channels": [16, 16, 8, 8, 8]}},
            "batch_size": 2, "max_epochs": 1, "num_workers": 0, "lr": 0.01, "average": None,
            "normalize": "imagenet" if channels == 3 else "dataset", "label_map": case.label_map,
            "ignore_index": 255 if case.classes > 2 and case.label_map else None,
            "log_predictions": {"count": 1, "worst": 1},
        }
    )  # fmt: skip


def _logged_predictions(output: Path) -> list[np.ndarray]:
    """The masks of the last `val/predictions` row of the offline W&B run. W&B's service process writes the run
    file on its own time, sometimes after the run has finished: it gets a few seconds."""
    for _ in range(30):
        rows = [row for row in wandb_history(output) if "val/predictions/all_masks" in row]
        if rows:
            break
        time.sleep(1)
    row = rows[-1]
    files = next((output / "wandb").glob("offline-run-*/files"))
    return [np.asarray(Image.open(files / layer["path"])) for masks in row["val/predictions/all_masks"]
            for layer in masks.values()]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_train_predict_evaluate_and_export_at_realistic_sizes(case, tmp_path, monkeypatch, capsys, caplog):
    """Any image over 512 px crashed the first validation with W&B on (int64 masks PIL cannot downscale); with
    trackers that give up on a failure, the pictures were silently dropped instead."""
    monkeypatch.setenv("WANDB_MODE", case.wandb)
    root = _dataset(case, tmp_path / "data")
    output = tmp_path / "out"
    options = RunOptions(dataset=root, class_names=CLASS_NAMES[case.classes], run_name="run", experiment_name="e",
                         output_dir=output, progress=False)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="segcli"):
        result = train(_experiment(case), options)
    assert [record.getMessage() for record in caplog.records if record.name.startswith("segcli")] == []
    assert result.epochs_run == 1
    run_dir = result.run_dir
    assert {"ckpt_best.pth", "ckpt_latest.pth"} <= set(result.checkpoints)
    assert (run_dir / "worst_predictions.png").is_file() and (run_dir / "metrics.csv").is_file()
    if case.wandb == "offline":
        logged = _logged_predictions(output)
        assert len(logged) == 2  # the ground truth and the prediction of log_predictions.count images
        assert all(mask.dtype == np.uint8 and max(mask.shape) == MAX_LOGGED_SIDE for mask in logged)
    else:
        assert result.wandb_dir is None and not (output / "wandb").exists()

    masks = tmp_path / "masks"
    predicted = run_main(capsys, "predict", run_dir, root / "val" / "images", "-o", masks, "--probabilities", "8")
    assert predicted.returncode == 0, predicted.stderr
    for index in range(2):
        assert read_png(masks / f"val_{index}.png").shape == case.size
    binary = case.classes <= 2
    assert (masks / "probabilities" / "val_0.png").is_file() == binary

    evaluated = run_main(capsys, "evaluate", run_dir, "--dataset", root, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    logged_miou = read_checkpoint(run_dir / "ckpt_best.pth").metrics["val/mIoU"]
    assert json.loads(evaluated.stdout)["mIoU"] == pytest.approx(logged_miou, abs=1e-4)  # what validation scored

    exported = run_main(capsys, "export-checkpoint", run_dir, "--height", "64", "--width", "64", "--json")
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    assert document["written"] and document["check"]["passed"] and Path(document["path"]).suffix == ".onnx"
