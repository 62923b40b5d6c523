"""Dataset layout and file reading, shared by the dataset check and the training dataset (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
IMAGES, LABELS = "images", "labels"


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass
class Folder:
    """One of <root>/<split>/{images,labels}: image files by stem, and what does not pair."""

    files: dict[str, Path]
    not_images: list[Path]
    duplicates: list[list[Path]]  # several images sharing a stem (a.png and a.jpg)


def scan_folder(root: Path, split: str, kind: str) -> Folder:
    folder = root / split / kind
    if not folder.is_dir():
        return Folder({}, [], [])
    entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    by_stem: dict[str, list[Path]] = {}
    not_images = []
    for path in entries:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, []).append(path)
        else:
            not_images.append(path)
    return Folder(
        files={stem: paths[0] for stem, paths in by_stem.items()},
        not_images=not_images,
        duplicates=[paths for paths in by_stem.values() if len(paths) > 1],
    )


def split_files(root: Path, split: str, kind: str) -> dict[str, Path]:
    """stem -> image file for one of <root>/<split>/{images,labels}; empty when the folder is missing."""
    return scan_folder(root, split, kind).files


def list_pairs(root: Path, split: str) -> list[Pair]:
    """Image/mask pairs sharing a stem, sorted by stem (the dataset check reports the rest)."""
    images = split_files(root, split, IMAGES)
    masks = split_files(root, split, LABELS)
    return [Pair(images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())]


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """HxWxC uint8, RGB for 3 channels. cv2 decodes PNG/JPEG ~1.4x faster than PIL."""
    import cv2

    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise OSError(f"cannot decode image {path}")
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """Label values as stored. PIL keeps palette PNGs as class indices (cv2 would expand them to colour)."""
    from PIL import Image

    with Image.open(path) as mask:
        return np.array(mask)  # a writable copy: torch warns on read-only arrays
