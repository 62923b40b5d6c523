"""A bare PyTorch training script doing what `segcli train -c experiments/camvid.yaml -e mini` does: the
yardstick for segcli's whole-process overhead (benchmarks/overhead.py runs both, alternately).

Same model (Unet/resnet18 from scratch), data (the folder layout, ImageNet normalisation, horizontal flips),
loss (cross-entropy + Dice, void 11 ignored), optimizer (AdamW lr 1e-3, weight decay 1e-4), batch 8, the
same number of DataLoader workers, a validation pass with one confusion matrix per epoch, and one
state_dict save per epoch. No Lightning, no segcli code.

    python benchmarks/bare_train.py --data ../shared/datasets/camvid-mini --epochs 6 --output /tmp/bare
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CLASSES, VOID = 11, 11


class Folder(Dataset):
    def __init__(self, root: Path, split: str, flip: bool, seed: int):
        self.images = sorted((root / split / "images").glob("*.png"))
        self.labels = [root / split / "labels" / path.name for path in self.images]
        self.flip, self.seed, self.epoch = flip, seed, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = (np.asarray(Image.open(self.images[index]).convert("RGB"), np.float32) / 255 - MEAN) / STD
        label = np.asarray(Image.open(self.labels[index]), np.int64)
        if self.flip and np.random.default_rng((self.seed, self.epoch, index)).random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(label.copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--first-step", action="store_true", help="print the time of the first step (first_step.py)")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    train_set = Folder(args.data, "train", flip=True, seed=args.seed)
    val_set = Folder(args.data, "val", flip=False, seed=args.seed)
    loader = DataLoader(
        train_set,
        args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    val_loader = DataLoader(val_set, args.batch_size, num_workers=args.workers, persistent_workers=args.workers > 0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=CLASSES)
    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=VOID)
    dice = smp.losses.DiceLoss("multiclass", ignore_index=VOID)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    args.output.mkdir(parents=True, exist_ok=True)
    for epoch in range(args.epochs):
        train_set.epoch = epoch
        model.train()
        for images, labels in loader:
            if args.first_step:
                print(f"first-step {time.time()}", flush=True)
                args.first_step = False
            logits = model(images)
            loss = cross_entropy(logits, labels) + dice(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        matrix = torch.zeros(CLASSES * CLASSES, dtype=torch.long)
        with torch.inference_mode():
            for images, labels in val_loader:
                predicted = model(images).max(1).indices
                valid = labels != VOID
                matrix += torch.bincount(labels[valid] * CLASSES + predicted[valid], minlength=CLASSES**2)
        matrix = matrix.view(CLASSES, CLASSES).double()
        iou = matrix.diag() / (matrix.sum(0) + matrix.sum(1) - matrix.diag())
        torch.save(model.state_dict(), args.output / "model.pth")
        print(f"epoch {epoch + 1}: val mIoU {float(iou.nanmean()):.4f}", flush=True)
    print(f"seconds {time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
