"""The training dataset: image/mask pairs through an Albumentations pipeline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, get_worker_info

from segcli.data.io import Pair, read_image, read_mask


class SegmentationDataset(Dataset):
    """Yields (image float CxHxW, mask int64 HxW); the pipeline must end with ToTensorV2."""

    def __init__(self, pairs: Sequence[Pair], transform, in_channels: int = 3):
        self.pairs = list(pairs)
        self.transform = transform
        self.in_channels = in_channels

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int):
        """The untransformed image and mask as numpy arrays."""
        pair = self.pairs[index]
        return read_image(pair.image, self.in_channels), read_mask(pair.mask)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.read(index)
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"].long()


def seed_worker_transforms(worker_id: int) -> None:
    """DataLoader worker_init_fn: each worker gets its own reproducible augmentation stream.

    Without it every worker would copy the same Compose generator and repeat the same augmentations.
    `info.seed` derives from the DataLoader's seeded generator and the worker id.
    """
    info = get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)
