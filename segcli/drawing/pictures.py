"""Pictures made of images and masks (PIL): sample grids, overlays with a legend, the confusion matrix.

Fonts are Pillow's built-in ones, so pictures look the same on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segcli.drawing.colours import colourize, legend_entries, overlay, palette

TILE_HEIGHT = 240
MARGIN = 8
HEADER = 22


@dataclass
class Sample:
    """One row of a grid: a displayable image (HxWx3 uint8), its mask, optionally a prediction."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    prediction: np.ndarray | None = None
    caption: str = ""


PREVIEW_COLUMNS = ("image", "mask", "overlay")
PREDICTION_COLUMNS = ("image", "ground truth", "prediction", "prediction overlay")


def _tile(sample: Sample, column: str, colours: np.ndarray, ignore_index: int | None) -> np.ndarray:
    if column == "image":
        return sample.image
    if column in ("mask", "ground truth"):
        return colourize(sample.mask, colours, ignore_index)
    if column == "overlay":
        return overlay(sample.image, sample.mask, colours, ignore_index)
    if column == "prediction":
        return colourize(sample.prediction, colours)
    return overlay(sample.image, sample.prediction, colours)


def render_grid(
    samples: Sequence[Sample],
    class_names: Sequence[str],
    ignore_index: int | None = None,
    columns: Sequence[str] = PREVIEW_COLUMNS,
    title: str = "",
) -> Image.Image:
    """One row per sample (one tile per column) and a legend of every class; values that are not classes
    get a white legend entry of their own."""
    font = ImageFont.load_default(size=14)
    colours = palette(len(class_names))
    rows = []
    for sample in samples:
        height, width = sample.mask.shape[:2]
        size = (max(1, round(width * TILE_HEIGHT / height)), TILE_HEIGHT)
        tiles = []
        for column in columns:
            resample = Image.Resampling.BILINEAR if column == "image" else Image.Resampling.NEAREST
            tiles.append(Image.fromarray(_tile(sample, column, colours, ignore_index)).resize(size, resample))
        rows.append((f"{sample.name}  {sample.caption}".strip(), tiles))

    masks = [s.mask for s in samples] + [s.prediction for s in samples if s.prediction is not None]
    found = np.unique(np.concatenate([np.unique(m) for m in masks])) if masks else []
    other = [int(v) for v in found if not 0 <= v < len(class_names) and v != ignore_index]
    # The ignored label only when it is shown: without an ignore_index it is an internal one (pads, regions).
    shown = ignore_index is not None and ignore_index in found
    entries = legend_entries(class_names, ignore_index if shown else None, other)
    row_width = max(sum(t.width for t in tiles) + MARGIN * (len(tiles) + 1) for _, tiles in rows)
    swatch, entry_width = 16, 190
    per_line = max(1, (row_width - MARGIN) // entry_width)
    legend_height = HEADER + ((len(entries) + per_line - 1) // per_line) * (swatch + 8) + MARGIN
    top = HEADER * (2 if title else 1)
    canvas = Image.new("RGB", (row_width, top + len(rows) * (TILE_HEIGHT + HEADER + MARGIN) + legend_height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((MARGIN, 4), title, fill="black", font=font)
    x = MARGIN
    for column, tile in zip(columns, rows[0][1], strict=True):
        draw.text((x, top - HEADER + 4), column, fill="black", font=font)
        x += tile.width + MARGIN
    y = top
    for name, tiles in rows:
        draw.text((MARGIN, y + 2), name, fill="black", font=font)
        x = MARGIN
        for tile in tiles:
            canvas.paste(tile, (x, y + HEADER))
            x += tile.width + MARGIN
        y += TILE_HEIGHT + HEADER + MARGIN

    draw.text((MARGIN, y + 2), "legend (label, class)", fill="black", font=font)
    y += HEADER
    for index, (label, colour) in enumerate(entries):
        column, line = index % per_line, index // per_line
        left, top_ = MARGIN + column * entry_width, y + line * (swatch + 8)
        draw.rectangle([left, top_, left + swatch, top_ + swatch], fill=colour, outline="black")
        draw.text((left + swatch + 6, top_), label, fill="black", font=font)
    return canvas


def overlay_with_legend(image: np.ndarray, mask: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    """The image with the coloured mask blended over it and, below, a legend of the classes it shows."""
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


def render_confusion_matrix(matrix, class_names: Sequence[str], title: str = "") -> Image.Image:
    """Row-normalised confusion matrix (each target class's pixels sum to 1) as a PIL image, names on both axes."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=11)
    size = len(class_names)
    cell = 44 if size <= 20 else 22
    label_width = int(max(font.getlength(name) for name in class_names)) + 12
    header = 28
    left, top = label_width + 22, header + label_width + 22
    title = title or "confusion matrix, rows normalised"
    note = "rows: target class (pixels sum to 1), columns: predicted class; ignored pixels left out; grey: no pixels"
    width = int(max(left + size * cell + 12, left + small.getlength(note) + 12, font.getlength(title) + 16))
    height = top + size * cell + 30
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill="black", font=font)

    # Column names, written horizontally on a strip that is then rotated to run upwards.
    strip = Image.new("RGB", (label_width, size * cell), "white")
    strip_draw = ImageDraw.Draw(strip)
    for index, name in enumerate(class_names):
        strip_draw.text((label_width - 6 - font.getlength(name), index * cell + cell / 2 - 7), name, "black", font)
    canvas.paste(strip.rotate(90, expand=True), (left, header + 18))
    draw.text((left, header), "predicted class", fill="black", font=font)
    for index, name in enumerate(class_names):
        draw.text((left - 8 - font.getlength(name), top + index * cell + cell / 2 - 7), name, "black", font)
    target_label = Image.new("RGB", (int(font.getlength("target class")) + 4, 16), "white")
    ImageDraw.Draw(target_label).text((0, 0), "target class", fill="black", font=font)
    canvas.paste(target_label.rotate(90, expand=True), (4, top))

    for row in range(size):
        for column in range(size):
            value = rates[row, column]
            shade = int(255 * (1 - value))
            colour = (shade, shade + int((255 - shade) * 0.35), 255)  # white -> blue
            if totals[row, 0] == 0:
                colour = (225, 225, 225)  # a class without target pixels: no rate at all, not 0.00
            box = [left + column * cell, top + row * cell, left + (column + 1) * cell, top + (row + 1) * cell]
            draw.rectangle(box, fill=colour, outline=(200, 200, 200))
            if cell >= 40 and totals[row, 0] > 0:
                text = f"{value:.2f}"
                ink = "white" if value > 0.55 else "black"
                draw.text((box[0] + (cell - small.getlength(text)) / 2, box[1] + cell / 2 - 6), text, ink, small)
    draw.text((left, top + size * cell + 8), note, fill="black", font=small)
    return canvas
