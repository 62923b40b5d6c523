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
    return blended.clip(0, 255).astype(np.uint8)
