"""A small generated dataset (shapes on textured backgrounds) for the demo and the tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segcli.errors import StorageError

DEMO_CLASSES = ("background", "disc", "square", "triangle")


def _shape_mask(kind: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = size
    canvas = np.zeros(size, np.uint8)
    radius = int(rng.integers(min(size) // 10, min(size) // 4))
    cx, cy = int(rng.integers(radius, width - radius)), int(rng.integers(radius, height - radius))
    if kind == 1:
        cv2.circle(canvas, (cx, cy), radius, 1, -1)
    elif kind == 2:
        cv2.rectangle(canvas, (cx - radius, cy - radius), (cx + radius, cy + radius), 1, -1)
    else:
        points = np.array([[cx, cy - radius], [cx - radius, cy + radius], [cx + radius, cy + radius]], np.int32)
        cv2.fillPoly(canvas, [points], 1)
    return canvas.astype(bool)


def make_sample(size: tuple[int, int], rng: np.random.Generator, num_shapes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image and its uint8 class-index mask (0 = background)."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 160, 3).astype(np.float32)
    gradient = (xx / width)[..., None] * rng.uniform(-40, 40, 3) + (yy / height)[..., None] * rng.uniform(-40, 40, 3)
    texture = rng.normal(0, 18, (height, width, 3))
    image = base + gradient + texture
    mask = np.zeros(size, np.uint8)
    palette = {1: (220, 60, 60), 2: (60, 200, 80), 3: (70, 90, 230)}
    for _ in range(num_shapes):
        kind = int(rng.integers(1, 4))
        region = _shape_mask(kind, size, rng)
        colour = np.array(palette[kind], np.float32) + rng.normal(0, 20, 3)
        image[region] = colour + rng.normal(0, 12, (int(region.sum()), 3))
        mask[region] = kind
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_dataset(
    root: Path,
    train: int = 48,
    val: int = 16,
    size: tuple[int, int] = (96, 96),
    seed: int = 0,
) -> Path:
    """Write <root>/{train,val}/{images,labels}/*.png; the same seed gives the same files."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for folder in ("images", "labels"):
            try:
                (root / split / folder).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot create {root / split / folder} ({exc.strerror}); pass a writable PATH"
                ) from None
        for index in range(count):
            image, mask = make_sample(size, rng)
            name = f"{split}_{index:04d}.png"
            for path, pixels in ((root / split / "images" / name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)),
                                 (root / split / "labels" / name, mask)):  # fmt: skip
                if not cv2.imwrite(str(path), pixels):  # OpenCV says no more than False
                    raise StorageError(f"could not write {path} (disk full or not writable?); pass a writable PATH")
    return root
