"""Checkpoints built without training, for the predict / evaluate / export tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from segcli.artifacts.checkpoints import Checkpoint
from segcli.artifacts.model_info import ModelInfo
from segcli.config.schema import Experiment, ModelConfig
from segcli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segcli.files import save_torch
from segcli.models.registry import size_multiple
from segcli.models.task import SegmentationTask

TINY_CLASSES = ["background", "disc", "square", "triangle"]
IMAGENET = {"mode": "imagenet", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "max_pixel_value": 255.0}


def make_checkpoint(
    path: Path,
    *,
    arch: str = "unet",
    class_names: list[str] | None = None,
    ignore_index: int | None = None,
    seed: int = 0,
    constant_class: int | None = None,
    params: dict | None = None,
    miou: float = 0.5,
    binary: bool = False,
    in_channels: int = 3,
) -> Path:
    """A segcli checkpoint of a randomly initialised resnet18 model, written the way training writes one.

    `constant_class`: the segmentation head ignores its input and always predicts this class.
    `binary`: smp's binary convention, one sigmoid output for two class names (background, foreground).
    """
    class_names = class_names or TINY_CLASSES
    classes = 1 if binary else len(class_names)
    torch.manual_seed(seed)
    model = ModelConfig(arch=arch, encoder_name="resnet18", encoder_weights=None, in_channels=in_channels,
                        classes=classes, params=params or {})  # fmt: skip
    task = SegmentationTask(Experiment(model=model, ignore_index=ignore_index).model_dump(mode="json"), class_names)
    if constant_class is not None:
        head = task.model.segmentation_head[0]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            if binary:
                head.bias[0] = 5.0 if constant_class else -5.0
            else:
                head.bias[constant_class] = 5.0
    info = ModelInfo(
        arch=arch,
        encoder_name="resnet18",
        in_channels=in_channels,
        classes=classes,
        class_names=list(class_names),
        ignore_index=ignore_index,
        normalization=IMAGENET
        if in_channels == 3
        else {"mode": "explicit", "mean": [0.5] * in_channels, "std": [0.25] * in_channels, "max_pixel_value": 255.0},
        size_multiple=size_multiple(task.model),
        model_params=dict(params or {}),
    )
    checkpoint = Checkpoint(
        info=info,
        state_dict=task.model.state_dict(),
        epoch=3,
        global_step=30,
        metrics={"val/mIoU": miou, "val/loss": 1.0},
        run_name="tiny-run",
        experiment=task.experiment.model_dump(mode="json"),
    )
    save_torch(checkpoint.payload(), path)
    return path


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI's own entry point (error boundary included) in this process: no torch start-up per call."""
    from segcli.cli.app import main

    capsys.readouterr()
    argv, sys.argv = sys.argv, ["segcli", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image)


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
