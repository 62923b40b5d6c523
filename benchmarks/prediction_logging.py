# ruff: noqa: TID253 - a benchmark script: torch and smp at module level are what it is about
"""Cost of the per-epoch prediction logging on full CamVid against one training epoch, in one process.

The logging takes the predictions of `log_predictions.count` (4) val images at their full 480x360 from the
validation step (no forward pass of its own) and builds their W&B images; an epoch is 45 training steps of
batch 8 at 352x480 (validation not counted: the share is an upper bound).

    .venv/bin/python benchmarks/prediction_logging.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from segcli.data.io import Pair
from segcli.data.samples import load_samples
from segcli.drawing.pictures import Sample
from segcli.models.metrics import predictions
from segcli.training.trackers.wandb_tracker import wandb_images

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "camvid"
NAMES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist".split(",")
STEPS_PER_EPOCH = 367 // 8


def main() -> None:
    images = sorted((ROOT / "val" / "images").iterdir())[:4]
    samples = load_samples([Pair(path, ROOT / "val" / "labels" / path.name) for path in images], 3)
    model = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, classes=len(NAMES))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    with torch.inference_mode():  # the predictions as the validation step made them
        predicted = predictions(model.eval()(torch.randn(4, 3, 360, 480))).numpy()
    model.train()
    batch, target = torch.randn(8, 3, 352, 480), torch.randint(0, len(NAMES), (8, 352, 480))

    def log_predictions() -> None:
        shown = [Sample(s.name, s.image, s.mask, p, "epoch 1") for s, p in zip(samples, predicted, strict=True)]
        wandb_images(shown, NAMES, 11)

    def train_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(batch), target).backward()
        optimizer.step()

    log_predictions(), train_step()  # warm-up
    logging, steps = [], []
    for _ in range(3):
        for work, times in ((log_predictions, logging), (train_step, steps)):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    log_s, step_s = statistics.median(logging), statistics.median(steps)
    epoch_s = STEPS_PER_EPOCH * step_s
    print(f"prediction logging {log_s:.2f} s; train step {step_s:.2f} s; epoch of {STEPS_PER_EPOCH} steps "
          f"{epoch_s:.0f} s; share {100 * log_s / epoch_s:.2f}%")  # fmt: skip


if __name__ == "__main__":
    main()
