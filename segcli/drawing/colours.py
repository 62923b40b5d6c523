"""Class colours, mask overlays and displayable images (no torch).

The same colours everywhere: previews, overlays, W&B masks, report charts. Ignored pixels are black;
values that are neither a class nor ignored (a broken mask) are white, so they stand out.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

from segcli.errors import ConfigError

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
NOT_A_CLASS_COLOUR = (255, 255, 255)


def palette(num_classes: int) -> np.ndarray:
    """num_classes x 3 uint8 colours, distinct for at least 20 classes."""
    colours = list(_KELLY[:num_classes])
    hue = 0.0
    while len(colours) < num_classes:
        hue = (hue + 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(colours, dtype=np.uint8)


def colourize(mask: np.ndarray, colours: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """HxW class indices -> HxWx3 RGB; ignored pixels black, values that are no class white."""
    out = np.full((*mask.shape, 3), NOT_A_CLASS_COLOUR, np.uint8)
    known = (mask >= 0) & (mask < len(colours))
    out[known] = colours[mask[known]]
    if ignore_index is not None:
        out[mask == ignore_index] = IGNORED_COLOUR
    return out


def overlay(
    image: np.ndarray, mask: np.ndarray, colours: np.ndarray, ignore_index: int | None = None, alpha: float = 0.5
) -> np.ndarray:
    """Blend the coloured mask over a displayable (uint8 RGB or grey) image; ignored pixels stay as they are."""
    if image.ndim == 2 or image.shape[2] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    blended = image.astype(np.float32) * (1 - alpha) + colourize(mask, colours, ignore_index).astype(np.float32) * alpha
    if ignore_index is not None:
        ignored = mask == ignore_index
        blended[ignored] = image[ignored]
    return blended.clip(0, 255).astype(np.uint8)


def legend_entries(
    class_names: Sequence[str], ignore_index: int | None, other_values: Sequence[int] = ()
) -> list[tuple[str, tuple[int, int, int]]]:
    """(label, colour) for every class, the ignored label, and values found that are not classes."""
    colours = palette(len(class_names))
    entries = [(f"{index} {name}", tuple(int(c) for c in colours[index])) for index, name in enumerate(class_names)]
    if ignore_index is not None and ignore_index >= len(class_names):
        entries.append((f"{ignore_index} ignored", IGNORED_COLOUR))
    for value in other_values:
        entries.append((f"value {value}, not a class", NOT_A_CLASS_COLOUR))
    return entries


def parse_bands(text: str | None) -> list[int] | None:
    """`--bands 3,2,1` (1-based, as remote-sensing tools count) -> [2, 1, 0]."""
    if text is None:
        return None
    try:
        bands = [int(part) - 1 for part in text.split(",")]
    except ValueError:
        bands = []
    if len(bands) not in (1, 3) or min(bands) < 0:
        raise ConfigError(f"--bands {text}: give one band or three, 1-based and comma-separated, e.g. --bands 3,2,1")
    return bands


def display_image(image: np.ndarray, bands: Sequence[int] | None = None) -> np.ndarray:
    """Any image (8/16-bit, float, N bands) -> HxWx3 uint8 a person can look at.

    Three bands (the first three, or `bands`) are shown as RGB, one band as grey. 8-bit data is shown as
    it is; deeper or float data is stretched from its 2nd to its 98th percentile (over the shown bands
    together, so colours keep their balance), which makes 12-bit microscopy or satellite data visible.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if bands is not None:
        if max(bands) >= channels:
            raise ConfigError(f"--bands: the image has {channels} band(s), band {max(bands) + 1} does not exist")
        chosen = image[:, :, list(bands)]
    else:
        chosen = image[:, :, :3] if channels >= 3 else image[:, :, :1]
    if chosen.dtype != np.uint8:
        values = chosen.astype(np.float32)
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, (2, 98)) if finite.size else (0.0, 1.0)
        chosen = ((values - low) / max(float(high - low), 1e-6) * 255).clip(0, 255).astype(np.uint8)
    if chosen.shape[2] == 1:
        chosen = np.repeat(chosen, 3, axis=2)
    return np.ascontiguousarray(chosen)
