"""`predict_files()`: images -> one class-index PNG each (same stem), optionally a colour overlay with legend.

Unreadable inputs are skipped and reported; every readable one is written. The caller decides the exit code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcli.data.io import IMAGE_SUFFIXES, read_image
from segcli.errors import ConfigError
from segcli.inference import InferenceOptions, Predictor, same_size_batches

OVERLAYS = "overlays"


@dataclass
class PredictReport:
    masks: list[Path] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


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
    overlay: bool = False,
    on_done: Callable[[Path, str | None], None] | None = None,
) -> PredictReport:
    """Write <output>/<stem>.png (and <output>/overlays/<stem>.png); `on_done(path, error)` per input."""
    on_done = on_done or (lambda path, error: None)
    _check_output(files, output, overlay)
    report = PredictReport()
    output.mkdir(parents=True, exist_ok=True)
    if overlay:
        (output / OVERLAYS).mkdir(exist_ok=True)
    channels = predictor.info.in_channels

    def readable() -> Iterator[tuple[Path, np.ndarray]]:
        for path in files:
            try:
                yield path, read_image(path, channels)
            except OSError as exc:
                reason = str(exc) if str(exc) else type(exc).__name__
                report.skipped.append((path, reason))
                on_done(path, reason)

    with quiet_opencv():
        for batch in same_size_batches(readable(), options.batch_size):
            masks = predictor.predict([image for _, image in batch], options)
            for (path, image), mask in zip(batch, masks, strict=True):
                report.masks.append(write_mask(mask, output / f"{path.stem}.png"))
                if overlay:
                    picture = overlay_with_legend(image, mask, predictor.info.class_names)
                    target = output / OVERLAYS / f"{path.stem}.png"
                    picture.save(target)
                    report.overlays.append(target)
                on_done(path, None)
    return report


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV logs its own decoder errors to stderr; the skip message says it once, with the file name."""
    from cv2.utils import logging

    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


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
    from PIL import Image

    Image.fromarray(mask).save(path)
    return path


def overlay_with_legend(image: np.ndarray, mask: np.ndarray, class_names: Sequence[str]):
    """The image with the coloured mask blended over it and, below, a legend of the classes it shows."""
    from PIL import Image, ImageDraw, ImageFont

    from segcli.data.visualize import overlay, palette

    colours = palette(len(class_names))
    picture = Image.fromarray(overlay(image, mask, colours))
    font = ImageFont.load_default(size=14)
    present = [int(index) for index in np.unique(mask) if index < len(class_names)]
    labels = [f"{index} {class_names[index]}" for index in present]
    swatch, margin, line = 14, 6, 20
    widths = [swatch + 4 + int(font.getlength(label)) + 2 * margin for label in labels]
    canvas_width = max([picture.width, *(width + margin for width in widths)])
    lines, x = 1, margin
    for width in widths:  # wrap entries to the picture's width
        if x + width > canvas_width and x > margin:
            lines, x = lines + 1, margin
        x += width
    canvas = Image.new("RGB", (canvas_width, picture.height + lines * line + margin), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y = margin, picture.height + margin // 2
    for index, label, width in zip(present, labels, widths, strict=True):
        if x + width > canvas_width and x > margin:
            x, y = margin, y + line
        colour = tuple(int(c) for c in colours[index])
        draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=colour, outline="black")
        draw.text((x + swatch + 4, y), label, fill="black", font=font)
        x += width
    return canvas
