# ruff: noqa: TID253 - a training script: torch and smp at module level are what it is about
"""A plain PyTorch + segmentation_models_pytorch training loop: the yardstick for `segcli train`.

No Lightning and no segcli import, so it shares none of segcli's code paths. Defaults are the
settings of compare_quality.py (CamVid at 256x192, Unet/resnet18 from scratch, CE + Dice with void = 11,
AdamW 2e-3 / wd 1e-4, CosineAnnealingLR stepped once per epoch, horizontal flip p=0.5, batch 8,
drop_last, 12 epochs, fp32, CPU).

    python benchmarks/reference_loop.py --data /tmp/segcli-camvid-256x192 --seed 7 --json out.json

Score: one confusion matrix per epoch over the whole val split; pixels labelled `ignore_index`
are left out; a class absent from both target and prediction has IoU NaN and is left out of the
mean. Prints one line per epoch and writes the per-epoch history and the best val mIoU as JSON.

`--match-segcli` is a diagnostic: it reproduces segcli's randomness (the model built once right after
seeding; shuffle order from a generator seeded per (seed, epoch);
flip decided per (seed, epoch, index)) without importing segcli, so that a run of this loop and
`segcli train --set seed=S` see the same initial weights, batches and flips. Then any remaining
gap in the curves comes from the training step itself, not from the draw of the seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def list_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) files sharing a stem, sorted by stem."""

    def by_stem(kind: str) -> dict[str, Path]:
        folder = root / split / kind
        return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")}

    images, labels = by_stem("images"), by_stem("labels")
    stems = sorted(images.keys() & labels.keys())
    if not stems:
        raise SystemExit(f"no image/label pairs in {root / split}")
    return [(images[s], labels[s]) for s in stems]


def derived_seed(*parts: int) -> int:
    """A 32-bit seed mixed from non-negative integers (what segcli uses per epoch and per sample)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class EpochOrder(Sampler):
    """--match-segcli: yields (epoch, index), shuffled with a generator seeded by (seed, epoch)."""

    def __init__(self, size: int, seed: int, shuffle: bool):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        return ((self.epoch, index) for index in order)


class CamVid(Dataset):
    """(image float32 3xHxW ImageNet-normalised, label int64 HxW). Flip drawn from torch's RNG.

    In DataLoader workers torch's RNG is seeded per worker from the loader's generator, so the
    flips are reproducible for a given seed and worker count.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], flip_p: float = 0.0, seed: int | None = None):
        self.pairs = pairs
        self.flip_p = flip_p
        self.seed = seed  # set: flips decided per (seed, epoch, index) as in segcli (--match-segcli)

    def __len__(self) -> int:
        return len(self.pairs)

    def _flip(self, epoch: int | None, index: int) -> bool:
        if self.flip_p <= 0:
            return False
        if self.seed is None:
            return bool(torch.rand(()) < self.flip_p)
        return random.Random(derived_seed(self.seed, epoch, index)).random() < self.flip_p

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        image_path, label_path = self.pairs[index]
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"), dtype=np.float32)
        with Image.open(label_path) as lb:
            label = np.array(lb, dtype=np.int64)
        if self.seed is None:
            image = (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        else:  # --match-segcli: Albumentations' arithmetic, bit-identical to segcli's inputs
            image = (image - IMAGENET_MEAN * 255) * (np.float32(1) / (IMAGENET_STD * 255))
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        y = torch.from_numpy(label)
        if self._flip(epoch, index):
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """rows = target, columns = prediction; ignored and out-of-range labels left out."""
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def iou_scores(matrix: torch.Tensor) -> tuple[list[float], float]:
    matrix = matrix.double()
    tp = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - tp
    iou = torch.where(union > 0, tp / union, torch.full_like(union, float("nan")))
    return iou.tolist(), float(iou.nanmean())


def state_digest(model: nn.Module) -> str:
    """sha1 of the state dict (names and bytes): tells whether two runs start from the same weights."""
    h = hashlib.sha1()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, default=Path("/tmp/segcli-camvid-256x192"), help="root of {train,val}/{images,labels}"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--t-max", type=int, default=None, help="CosineAnnealingLR T_max (default: --epochs)")
    p.add_argument("--flip-p", type=float, default=0.5)
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--ignore-index", type=int, default=11)
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--json", type=Path, default=None, help="write history and best score here")
    p.add_argument(
        "--match-segcli",
        action="store_true",
        help="diagnostic: segcli's initial weights, batch order and flips for the same seed (see the docstring)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device("cpu")

    match = args.match_segcli
    train_set = CamVid(list_pairs(args.data, "train"), flip_p=args.flip_p, seed=args.seed if match else None)
    val_set = CamVid(list_pairs(args.data, "val"))
    loader_args = dict(num_workers=args.workers, persistent_workers=args.workers > 0)
    order = EpochOrder(len(train_set), args.seed, shuffle=True) if match else None
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=not match,
        sampler=order,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
        **loader_args,
    )
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, **loader_args)

    def build():
        return smp.create_model(
            args.arch, encoder_name=args.encoder, encoder_weights=None, in_channels=3, classes=args.classes
        )

    model = build().to(device)
    parameters = sum(p.numel() for p in model.parameters())
    initial_digest = state_digest(model)
    ce = nn.CrossEntropyLoss(ignore_index=args.ignore_index)
    dice = smp.losses.DiceLoss("multiclass", ignore_index=args.ignore_index)

    def criterion(logits, target):
        return ce(logits, target) + dice(logits, target)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.t_max or args.epochs)

    print(
        f"reference loop: {args.arch}/{args.encoder} {parameters:,} params, seed {args.seed}, "
        f"{len(train_set)} train / {len(val_set)} val, {len(train_loader)} steps/epoch, "
        f"torch threads {torch.get_num_threads()}, initial weights {initial_digest}"
        + (", matching segcli's randomness" if match else ""),
        flush=True,
    )
    history = []
    best = {"mIoU": -math.inf, "epoch": None}
    started = time.monotonic()
    for epoch in range(args.epochs):
        t0 = time.monotonic()
        lr = optimizer.param_groups[0]["lr"]
        if order is not None:
            order.epoch = epoch
        model.train()
        train_loss_sum, train_count = 0.0, 0
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images), labels)
            if not torch.isfinite(loss):
                raise SystemExit(f"training loss became {loss.item()} at epoch {epoch + 1}")
            loss.backward()
            optimizer.step()
            train_loss_sum += loss.item() * len(images)
            train_count += len(images)

        model.eval()
        matrix = torch.zeros(args.classes, args.classes, dtype=torch.long)
        val_loss_sum, val_count = 0.0, 0
        with torch.inference_mode():
            for images, labels in val_loader:
                images, labels = images.to(device), labels.to(device)
                logits = model(images)
                val_loss_sum += criterion(logits, labels).item() * len(images)
                val_count += len(images)
                matrix += confusion_matrix(logits.argmax(1), labels, args.classes, args.ignore_index).cpu()
        model.train()
        scheduler.step()

        per_class, miou = iou_scores(matrix)
        seconds = time.monotonic() - t0
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss_sum / train_count,
            "val_loss": val_loss_sum / val_count,
            "val_mIoU": miou,
            "val_IoU": per_class,
            "seconds": seconds,
        }
        history.append(row)
        if not math.isnan(miou) and miou > best["mIoU"]:
            best = {"mIoU": miou, "epoch": epoch}
        print(
            f"epoch {epoch + 1:3d}/{args.epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
            f"val mIoU {miou:.4f}  {seconds:.1f} s",
            flush=True,
        )

    total = time.monotonic() - started
    print(f"best val mIoU {best['mIoU']:.4f} at epoch {best['epoch'] + 1}; {total:.0f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "kind": "reference",
            "seed": args.seed,
            "initial_weights_sha1": initial_digest,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "parameters": parameters,
            "best_val_mIoU": best["mIoU"],
            "best_epoch": best["epoch"],
            "history": history,
            "seconds": total,
            "torch": torch.__version__,
            "smp": smp.__version__,
        }
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
