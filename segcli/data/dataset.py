"""The training dataset and sampler: reproducible to the sample, so a resumed run repeats exactly.

The shuffle order depends only on (seed, epoch) and each sample's augmentation only on
(seed, epoch, index): not on worker count, worker assignment or how often the run was resumed.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from segcli.data.io import Pair, read_pair


def derived_seed(*parts: int) -> int:
    """A 32-bit seed mixed from non-negative integers (seed, epoch, index, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class RamCache:
    """A split read once (as `read_pair` reads it) into two flat shared-memory buffers (images, masks) that every
    worker reads.

    Two buffers rather than one tensor per file: a few shared segments, whatever the dataset size.
    """

    def __init__(self, pairs: Sequence[Pair], in_channels: int, workers: int = 4, *,
                 label_lookup: np.ndarray | None = None, never_scored: int = 255):  # fmt: skip
        with ThreadPoolExecutor(max(1, workers)) as pool:
            decoded = list(pool.map(lambda p: read_pair(p, in_channels, label_lookup, never_scored), pairs))
        self.image_shapes = [image.shape for image, _ in decoded]
        self.mask_shapes = [mask.shape for _, mask in decoded]
        image_dtype = np.result_type(*(image.dtype for image, _ in decoded)) if decoded else np.uint8
        mask_dtype = np.result_type(*(mask.dtype for _, mask in decoded)) if decoded else np.uint8
        self.images = self._pack([image for image, _ in decoded], image_dtype)
        self.masks = self._pack([mask for _, mask in decoded], mask_dtype)

    @staticmethod
    def _pack(arrays: list[np.ndarray], dtype) -> tuple[torch.Tensor, list[int]]:
        offsets = np.cumsum([0] + [a.size for a in arrays]).tolist()
        flat = np.empty(offsets[-1], dtype)
        for array, start in zip(arrays, offsets, strict=False):
            flat[start : start + array.size] = array.ravel()
        return torch.from_numpy(flat).share_memory_(), offsets

    @staticmethod
    def estimate_bytes(image_sizes, in_channels: int, bytes_per_value: int = 1) -> int:
        """From the dataset check's (height, width) counts and the images' bytes per value; one-byte labels."""
        per_pixel = in_channels * bytes_per_value + 1
        return sum(count * height * width * per_pixel for (height, width), count in image_sizes.items())

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        (images, image_offsets), (masks, mask_offsets) = self.images, self.masks
        image = images[image_offsets[index] : image_offsets[index + 1]].numpy().reshape(self.image_shapes[index])
        mask = masks[mask_offsets[index] : mask_offsets[index + 1]].numpy().reshape(self.mask_shapes[index])
        return image.copy(), mask.copy()  # transforms may write into their inputs


class SegmentationDataset(Dataset):
    """Yields (image float CxHxW, mask int64 HxW); the pipeline must end with ToTensorV2.

    Indexed by `(epoch, index)` (from EpochSampler) or a plain index (epoch 0).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        transform,
        *,
        in_channels: int = 3,
        seed: int = 0,
        cache: RamCache | None = None,
        label_lookup: np.ndarray | None = None,
        never_scored: int = 255,
    ):
        self.pairs = list(pairs)
        self.transform = transform
        self.in_channels = in_channels
        self.seed = seed
        self.cache = cache
        self.label_lookup = label_lookup
        """`label_map` as a table (stored mask value -> class), applied before the transforms."""
        self.never_scored = never_scored
        """The label outside each pair's region of interest (`never_scored_label`)."""

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The pair before the transforms, as `read_pair` reads it (the cache, when there is one, was read so)."""
        if self.cache is not None:
            return self.cache.get(index)
        return read_pair(self.pairs[index], self.in_channels, self.label_lookup, self.never_scored)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.transformed(*self.read(index), epoch, index)

    def transformed(
        self, image: np.ndarray, mask: np.ndarray, epoch: int, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pair read by `read` through the pipeline, seeded by (seed, epoch, index) as in training."""
        self.transform.set_random_seed(derived_seed(self.seed, epoch, index))
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"].long()


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler):
    """Yields (epoch, index); shuffled with a generator seeded by (seed, epoch).

    Lightning calls `set_epoch` before every training epoch, also after a resume. Under several
    processes each takes every world-th item of the same order: the training split is padded so
    every process runs the same number of steps; the validation split is not, so every sample is
    scored exactly once and the summed confusion matrix equals the single-process one.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, epoch: int = 0):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _share(self) -> tuple[int, int, int]:
        rank, world = _rank_and_world()
        if self.shuffle:  # training: equal shares
            return rank, world, -(-self.size // world)
        return rank, world, len(range(rank, self.size, world))

    def __len__(self) -> int:
        return self._share()[2]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world, count = self._share()
        if self.shuffle:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
            order += order[: count * world - self.size]  # pad, as DistributedSampler does
        else:
            order = list(range(self.size))
        return ((self.epoch, index) for index in order[rank::world])


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: Ctrl-C is the main process's to handle (it stops after the epoch).

    A terminal sends SIGINT to every process of the group; a worker dying of it would crash the epoch.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
