"""Class colours and mask overlays, shared by preview-samples and the W&B sample logging (no torch)."""

from __future__ import annotations

import colorsys

import numpy as np

# Kelly's colours of maximum contrast (minus white/black), then golden-ratio hues for more classes.
_KELLY = [
    (255, 179, 0),
    (128, 62, 117),
    (255, 104, 0),
    (166, 189, 215),
    (193, 0, 32),
    (206, 162, 98),
    (129, 112, 102),
    (0, 125, 52),
    (246, 118, 142),
    (0, 83, 138),
    (255, 122, 92),
    (83, 55, 122),
    (255, 142, 0),
    (179, 40, 81),
    (244, 200, 0),
    (127, 24, 13),
    (147, 170, 0),
    (89, 51, 21),
    (241, 58, 19),
    (35, 44, 22),
]
IGNORED_COLOUR = (0, 0, 0)


def palette(num_classes: int) -> np.ndarray:
    """num_classes x 3 uint8 colours, distinct for at least 20 classes."""
    colours = list(_KELLY[:num_classes])
    hue = 0.0
    while len(colours) < num_classes:
        hue = (hue + 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(colours, dtype=np.uint8)


def colourize(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """HxW class indices -> HxWx3 RGB; values without a colour (ignore_index) are black."""
    out = np.zeros((*mask.shape, 3), np.uint8)
    known = mask < len(colours)
    out[known] = colours[mask[known]]
    out[~known] = IGNORED_COLOUR
    return out


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured mask over an RGB (or single-channel) uint8 image."""
    if image.ndim == 2 or image.shape[2] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    blended = image.astype(np.float32) * (1 - alpha) + colourize(mask, colours).astype(np.float32) * alpha
    blended[mask >= len(colours)] = image[mask >= len(colours)]  # ignored pixels stay as they are
    return blended.clip(0, 255).astype(np.uint8)


TILE_HEIGHT = 240
MARGIN = 8
HEADER = 22
COLUMNS = ("image", "mask", "overlay")


def legend_entries(class_names, ignore_index: int | None) -> list[tuple[str, tuple[int, int, int]]]:
    """(label, colour) for every class, plus the ignored label when there is one."""
    colours = palette(len(class_names))
    entries = [(f"{index} {name}", tuple(int(c) for c in colours[index])) for index, name in enumerate(class_names)]
    if ignore_index is not None and ignore_index >= len(class_names):
        entries.append((f"{ignore_index} ignored", IGNORED_COLOUR))
    return entries


def render_grid(samples, class_names, ignore_index: int | None = None):
    """One row per sample (image | coloured mask | overlay) and a legend of every class: a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    colours = palette(len(class_names))
    rows = []
    for sample in samples:
        height, width = sample.mask.shape[:2]
        scale = TILE_HEIGHT / height
        size = (max(1, round(width * scale)), TILE_HEIGHT)
        tiles = [
            sample.image if sample.image.shape[2] == 3 else np.repeat(sample.image[:, :, :1], 3, axis=2),
            colourize(sample.mask, colours),
            overlay(sample.image, sample.mask, colours),
        ]
        resample = [Image.Resampling.BILINEAR, Image.Resampling.NEAREST, Image.Resampling.NEAREST]
        rows.append((sample.name, [Image.fromarray(t).resize(size, r) for t, r in zip(tiles, resample, strict=True)]))

    entries = legend_entries(class_names, ignore_index)
    row_width = max(sum(t.width for t in tiles) + MARGIN * (len(tiles) + 1) for _, tiles in rows)
    swatch, entry_width = 16, 190
    per_line = max(1, (row_width - MARGIN) // entry_width)
    legend_height = HEADER + ((len(entries) + per_line - 1) // per_line) * (swatch + 8) + MARGIN
    height = HEADER + len(rows) * (TILE_HEIGHT + HEADER + MARGIN) + legend_height
    canvas = Image.new("RGB", (row_width, height), "white")
    draw = ImageDraw.Draw(canvas)

    first_tiles = rows[0][1]
    x = MARGIN
    for title, tile in zip(COLUMNS, first_tiles, strict=True):
        draw.text((x, 4), title, fill="black", font=font)
        x += tile.width + MARGIN
    y = HEADER
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
        left, top = MARGIN + column * entry_width, y + line * (swatch + 8)
        draw.rectangle([left, top, left + swatch, top + swatch], fill=colour, outline="black")
        draw.text((left + swatch + 6, top), label, fill="black", font=font)
    return canvas
