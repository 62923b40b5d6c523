"""How an image becomes the model's input and how the model's output maps back: one owner for training,
validation, `predict`, `evaluate` and exports.

- Size multiple: a batch of any size is padded bottom/right (reflected) to the model's size multiple and
  its output cropped back (`pad_to_multiple`, `crop`), in the LightningModule and in inference alike. No pipeline
  needs a pad for it, and no padded pixel is ever trained on or scored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(batch: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right so height and width are multiples; returns the original (height, width) for `crop`.

    Reflection (the image continues plausibly), or edge replication where the padding is too large to
    reflect.
    """
    height, width = batch.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return batch, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(batch, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def crop(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return batch[..., : size[0], : size[1]]
