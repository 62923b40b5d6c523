"""`predict_files()`: images -> one class-index PNG each (same stem), optionally a colour overlay with legend.

Unreadable inputs are skipped and reported; every readable one is written. The caller decides the exit code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cv2.utils import logging as cv2_logging
from PIL import Image

from segcli.data.io import IMAGE_SUFFIXES, ChannelMismatch, read_image
from segcli.drawing.colours import display_image
from segcli.drawing.pictures import overlay_with_legend
from segcli.errors import ConfigError
from segcli.files import save_image
from segcli.inference.engine import InferenceOptions, InputWarnings, masks_from, same_size_batches
from segcli.inference.loading import Predictor

OVERLAYS = "overlays"
PROBABILITIES = "probabilities"


@dataclass
class PredictReport:
    masks: list[Path] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    probabilities: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    """Unreadable inputs and why."""
    unfit: list[tuple[Path, int]] = field(default_factory=list)
    """Inputs read but not predicted: their channel count, which the model cannot take."""
    warnings: list[str] = field(default_factory=list)


def collect_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Image files as given, and the image files (by suffix, not hidden) directly inside given folders.

    A path that does not exist, a folder without images and two inputs with the same stem (their masks
    would overwrite each other) are user errors, found before anything is written.
    """
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.name[0] != "."
            )
            if not found:
                raise ConfigError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    by_stem: dict[str, list[Path]] = {}
    for path in dict.fromkeys(files):  # the same file named twice counts once
        by_stem.setdefault(path.stem, []).append(path)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        stem, paths = next(iter(clashes.items()))
        raise ConfigError(
            f"{len(clashes)} input name(s) share a stem, e.g. {', '.join(map(str, paths))}: masks are named "
            f"<stem>.png, so predict them into different --output folders"
        )
    return [paths[0] for paths in by_stem.values()]


def predict_files(
    predictor: Predictor,
    files: Sequence[Path],
    output: Path,
    options: InferenceOptions,
    *,
    overlay: bool = False,
    probability_bits: int | None = None,
    on_done: Callable[[Path, str | None], None] | None = None,
) -> PredictReport:
    """Write <output>/<stem>.png (and overlays/<stem>.png, probabilities/...). `on_done(path, error)` per input:
    the reason it could not be read, or None (written, or in `unfit`, which is reported once for all)."""
    on_done = on_done or (lambda path, error: None)
    _check_output(files, output, overlay)
    report = PredictReport()
    output.mkdir(parents=True, exist_ok=True)
    channels = predictor.info.in_channels

    def readable() -> Iterator[tuple[Path, np.ndarray]]:
        for path in files:
            try:
                yield path, read_image(path, channels)
            except ChannelMismatch as exc:
                report.unfit.append((path, exc.have))
                on_done(path, None)
            except OSError as exc:
                reason = str(exc) if str(exc) else type(exc).__name__
                report.skipped.append((path, reason))
                on_done(path, reason)

    inputs = InputWarnings(predictor.info, options.resize)
    with quiet_opencv():
        for batch in same_size_batches(readable(), options.batch_size):
            for _, image in batch:
                inputs.check(image)
            probs = predictor.probabilities([image for _, image in batch], options)
            masks = masks_from(probs, len(predictor.info.class_names))
            for (path, image), mask, prob in zip(batch, masks, probs, strict=True):
                report.masks.append(write_mask(mask, output / f"{path.stem}.png"))
                if overlay:
                    picture = overlay_with_legend(display_image(image), mask, predictor.info.class_names)
                    report.overlays.append(save_image(output / OVERLAYS / f"{path.stem}.png", picture))
                if probability_bits:
                    report.probabilities += write_probabilities(
                        prob.cpu().numpy(), path.stem, output, predictor.info, probability_bits
                    )
                on_done(path, None)
    report.warnings = inputs.messages
    return report


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV logs its own decoder errors to stderr; the skip message says it once, with the file name."""
    level = cv2_logging.getLogLevel()
    cv2_logging.setLogLevel(cv2_logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2_logging.setLogLevel(level)


def _check_output(files: Sequence[Path], output: Path, overlay: bool) -> None:
    """Refuse an --output that is a file, or one where a mask or overlay would replace an input image."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; pass a folder for the masks")
    targets = {(output / f"{path.stem}.png").resolve() for path in files}
    if overlay:
        targets |= {(output / OVERLAYS / f"{path.stem}.png").resolve() for path in files}
    clobbered = [path for path in files if path.resolve() in targets]
    if clobbered:
        raise ConfigError(
            f"--output {output}: the masks would overwrite input images such as {clobbered[0]}; "
            "write them to another folder"
        )


def write_mask(mask: np.ndarray, path: Path) -> Path:
    """Single-channel PNG of class indices: 8-bit, or 16-bit beyond 256 classes."""
    return save_image(path, Image.fromarray(mask))


def write_probabilities(probs: np.ndarray, stem: str, output: Path, info, bits: int) -> list[Path]:
    """KxHxW probabilities as PNGs scaled to 8 or 16 bits: for a binary model (one sigmoid output, or two
    softmax classes) the foreground's, class 1, as `<stem>.png` (the one map per image that binary scorers
    take); otherwise one per class, `<stem>/<index>_<class>.png`."""
    scale, dtype = (255, np.uint8) if bits == 8 else (65535, np.uint16)
    quantised = np.rint(probs * scale).astype(dtype)
    folder = output / PROBABILITIES
    if len(info.class_names) == 2:
        return [save_image(folder / f"{stem}.png", Image.fromarray(quantised[1]))]
    return [save_image(folder / stem / f"{index}_{name}.png", Image.fromarray(quantised[index]))
            for index, name in enumerate(info.class_names)]  # fmt: skip
