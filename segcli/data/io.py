"""Dataset layout and file reading, shared by the dataset check, training, previews and inference (no torch).

Images are read at their full depth: 8- and 16-bit PNG/JPEG/BMP/PPM/PGM and WebP through OpenCV (the
fastest decoder for the common case), TIFF through tifffile, which reads any number of bands, planar or
interleaved, integer or float, and every page (OpenCV reads at most 4 channels of the first page and
mangles more). A multi-page TIFF is read as bands, one page each; it is never silently cut to its first
page. GIF images go through Pillow, as the RGB colours their palette stands for (OpenCV gives 3 or 4
channels depending on the file's transparency). Masks are read with Pillow, so a palette PNG's or GIF's
indices are the labels. A split may hold a region-of-interest mask per image (`roi/`, same stems): its zero
pixels are neither trained on nor scored (`read_pair` gives them the never-scored label).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from segcli.config.schema import MAX_LABEL

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
JPEG_SUFFIXES = {".jpg", ".jpeg"}
GIF_SUFFIX, WEBP_SUFFIX = ".gif", ".webp"
IMAGES, LABELS, ROI = "images", "labels", "roi"


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    roi: Path | None = None
    """The region-of-interest mask (zero: outside, neither trained on nor scored), when the split has one."""

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass
class Folder:
    """One of <root>/<split>/{images,labels,roi}: image files by stem, and what does not pair."""

    files: dict[str, Path]
    not_images: list[Path]
    duplicates: list[list[Path]]  # several images sharing a stem (a.png and a.jpg)
    subfolders: list[Path]  # nested folders: segcli reads one level only


def scan_folder(folder: Path) -> Folder:
    """One folder's image files by stem (empty when the folder is missing)."""
    if not folder.is_dir():
        return Folder({}, [], [], [])
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    by_stem: dict[str, list[Path]] = {}
    not_images = []
    for path in entries:
        if not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, []).append(path)
        else:
            not_images.append(path)
    return Folder(
        files={stem: paths[0] for stem, paths in by_stem.items()},
        not_images=not_images,
        duplicates=[paths for paths in by_stem.values() if len(paths) > 1],
        subfolders=[p for p in entries if p.is_dir()],
    )


def split_files(root: Path, split: str, kind: str) -> dict[str, Path]:
    """stem -> image file for one of <root>/<split>/{images,labels,roi}; empty when the folder is missing."""
    return scan_folder(root / split / kind).files


def list_pairs(root: Path, split: str, roi: Path | None = None) -> list[Pair]:
    """Image/mask pairs sharing a stem, sorted by stem (the dataset check reports the rest), each with its region
    mask from `roi` (a folder; by default <root>/<split>/roi/ when it exists)."""
    return make_pairs(split_files(root, split, IMAGES), split_files(root, split, LABELS),
                      scan_folder(roi).files if roi else split_files(root, split, ROI))  # fmt: skip


def make_pairs(images: dict[str, Path], masks: dict[str, Path], rois: dict[str, Path]) -> list[Pair]:
    """The pairs of stem -> file maps: stems with an image and a mask, sorted, with their region mask if any."""
    return [Pair(images[stem], masks[stem], rois.get(stem)) for stem in sorted(images.keys() & masks.keys())]


# --- images ---------------------------------------------------------------------------------------


def decode_image(path: Path) -> np.ndarray:
    """HxWxC as stored (uint8, uint16, float32, ...), colour channels in RGB(A) order. OSError if unreadable:
    the one rule for what is readable, which the dataset check, training and inference all apply."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _decode_tiff(path)
    if path.suffix.lower() == GIF_SUFFIX:
        return _decode_gif(path)
    data = path.read_bytes()
    if path.suffix.lower() in JPEG_SUFFIXES and b"\xff\xd9" not in data[-1024:]:
        # OpenCV decodes a truncated JPEG into a half-grey picture (libjpeg only prints a warning)
        raise OSError(f"cannot decode image {path.name}: truncated (the JPEG has no end marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot decode image {path.name} (corrupt or truncated?)")
    if image.ndim == 2:
        return image[:, :, None]
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def _decode_gif(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as gif:
            return np.array(gif.convert("RGB"))
    except (OSError, SyntaxError, ValueError):  # Pillow's errors for undecodable files
        raise OSError(f"cannot decode image {path.name} (corrupt or truncated?)") from None


def _decode_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series
            if len(series) == 1:
                array, axes = series[0].asarray(), series[0].axes
            else:  # one series per page: pages are the bands when they share a shape
                shapes = {s.shape for s in series}
                if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                    raise OSError(
                        f"multi-page TIFF {path.name} has {len(series)} pages of shapes {sorted(shapes)}; "
                        "segcli reads pages as bands, which must all be single-channel of one size"
                    )
                array, axes = np.stack([s.asarray() for s in series]), "SYX"
    except (ValueError, KeyError, tifffile.TiffFileError) as exc:
        detail = str(exc).splitlines()[0][:200]
        if "imagecodecs" in detail:
            detail += " (pip install imagecodecs)"
        raise OSError(f"cannot decode TIFF {path.name}: {detail}") from None
    return _to_hwc(array, axes, path)


def _to_hwc(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """tifffile's axes (YX, YXS, SYX, CYX, QYX, ...) -> HxWxC."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and axes.endswith("YX"):  # planar / pages first
        return np.ascontiguousarray(np.moveaxis(array, 0, -1))
    if array.ndim == 3 and axes[:2] == "YX":
        return array
    raise OSError(f"cannot read TIFF {path.name}: {array.ndim}-D data with axes {axes} (expected bands of one image)")


class ChannelMismatch(ValueError):
    """An image that was read but whose channel count the model cannot take (not an unreadable file)."""

    def __init__(self, name: str, have: int, channels: int):
        super().__init__(f"{name} has {have} channel(s) but the model takes {channels} (model.in_channels)")
        self.have = have


def adapt_channels(image: np.ndarray, channels: int, name: str) -> np.ndarray:
    """Give the model the channel count it takes: RGB from grey (repeat), grey from RGB (luma), RGB from RGBA."""
    have = image.shape[2]
    if have == channels:
        return image
    if channels == 3 and have == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 3 and have == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if channels == 1 and have in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)[:, :, None]
    raise ChannelMismatch(name, have, channels)


LUMA = [0.299, 0.587, 0.114]  # OpenCV's RGB to grey, which `adapt_channels` applies
CHANNEL_CONVERSIONS = {
    (1, 3): np.ones((3, 1)),  # grey to RGB: repeated
    (4, 3): np.eye(3, 4),  # RGBA to RGB: alpha dropped
    (3, 1): np.array([LUMA]),  # RGB to grey: luma
    (4, 1): np.array([[*LUMA, 0.0]]),
}
"""(stored channels, model channels) -> the linear map `adapt_channels` applies: every conversion segcli makes,
and what statistics of the converted images are computed with."""


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """HxWxC at full depth with the model's channel count."""
    return adapt_channels(decode_image(path), channels, path.name)


# --- masks ---------------------------------------------------------------------------------------


def read_mask(path: Path) -> np.ndarray:
    """Label values as stored. PIL keeps palette PNGs and GIFs as class indices (cv2 would expand them to
    colour). WebP has no grey mode: a grey mask saved as WebP comes back as three equal channels, read as one."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        image = decode_image(path)
        return image[:, :, 0] if image.shape[2] == 1 else image
    with Image.open(path) as mask:
        mode, array = mask.mode, np.array(mask)  # a writable copy: torch warns on read-only arrays
    if path.suffix.lower() == WEBP_SUFFIX and mode == "RGB" and (array == array[:, :, :1]).all():
        return np.ascontiguousarray(array[:, :, 0])
    return array


def never_scored_label(ignore_index: int | None, classes: int) -> int:
    """The label of pixels that are neither trained on nor scored (what a transform pads or fills masks with):
    the experiment's `ignore_index`, or without one the first value no class can take (255, or 65535 beyond
    255 classes). The loss is built to ignore it; every metric leaves it out (it is no class)."""
    if ignore_index is not None:
        return ignore_index
    return 255 if classes <= 255 else MAX_LABEL


def read_pair(pair: Pair, channels: int, lookup: np.ndarray | None, never_scored: int) -> tuple[np.ndarray, np.ndarray]:
    """The pair as trained on and scored: the image with the model's channels, the mask with the label map applied
    and `never_scored` (see `never_scored_label`) outside the pair's region of interest."""
    image, mask = read_image(pair.image, channels), map_labels(read_mask(pair.mask), lookup)
    if pair.roi is None:
        return image, mask
    outside = read_mask(pair.roi) == 0
    if outside.shape != mask.shape:  # the dataset check reports it; a file changed since cannot be scored
        raise OSError(f"{pair.roi}: region mask is {outside.shape[1]}x{outside.shape[0]} but {pair.mask.name} is "
                      f"{mask.shape[1]}x{mask.shape[0]} (WxH)")  # fmt: skip
    mask = mask.astype(np.promote_types(mask.dtype, np.min_scalar_type(never_scored)))  # a copy
    mask[outside] = never_scored
    return image, mask


def label_lookup(label_map: dict[int, int] | None) -> np.ndarray | None:
    """A table stored value -> class for `label_map` (identity elsewhere), or None without a map."""
    if not label_map:
        return None
    table = np.arange(MAX_LABEL + 1, dtype=np.uint16)
    for stored, label in label_map.items():
        table[stored] = label
    return table


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Labels (class indices, ignore values) in the smallest type that holds them, uint8 or uint16: what PIL,
    W&B and the pictures take (int64 predictions or masks cannot be resized by PIL)."""
    if labels.dtype == np.uint8 or labels.size == 0:
        return labels
    low, high = labels.min(), labels.max()
    if low < 0 or high > MAX_LABEL:
        return labels  # not labels at all (the dataset check reports such masks): left as they are
    return labels.astype(np.uint8 if high < 256 else np.uint16, copy=False)


def map_labels(mask: np.ndarray, lookup: np.ndarray | None) -> np.ndarray:
    if lookup is None or not np.issubdtype(mask.dtype, np.integer) or mask.size == 0:
        return mask
    if mask.min() < 0 or mask.max() >= len(lookup):
        return mask  # values the table cannot hold are left for the check to report
    mapped = lookup[mask]
    return mapped.astype(np.uint8) if mapped.max() < 256 else mapped
