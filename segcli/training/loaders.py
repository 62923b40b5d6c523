"""The training and validation datasets and DataLoaders, built from a `Plan` exactly as `train` uses them."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from segcli.data.dataset import EpochSampler, RamCache, SegmentationDataset, ignore_interrupts_in_worker
from segcli.training.preflight import SPLITS, Plan


def make_datasets(plan: Plan) -> dict[str, SegmentationDataset]:
    exp, channels = plan.experiment, plan.experiment.model.in_channels
    reading = {"label_lookup": plan.label_lookup, "never_scored": plan.task.never_scored}
    datasets = {}
    for split in SPLITS:
        cache = RamCache(plan.pairs[split], channels, plan.workers, **reading) if exp.cache == "ram" else None
        datasets[split] = SegmentationDataset(plan.pairs[split], plan.pipelines[split], in_channels=channels,
                                              seed=exp.seed, cache=cache, **reading)  # fmt: skip
    return datasets


def make_loaders(plan: Plan, datasets: dict[str, SegmentationDataset], epoch: int = 0) -> dict[str, DataLoader]:
    """`epoch` (0-based): the one training starts at. Lightning makes the train iterator, whose workers start
    prefetching, before it tells the sampler the epoch: a resumed run's first batches must not be epoch 0's."""
    exp, workers = plan.experiment, plan.workers
    loaders = {}
    for split, dataset in datasets.items():
        loaders[split] = DataLoader(
            dataset,
            batch_size=exp.batch_size,
            sampler=EpochSampler(len(dataset), exp.seed, shuffle=split == "train", epoch=epoch),
            drop_last=split == "train" and len(dataset) > exp.batch_size,  # no 1-image BatchNorm batch
            num_workers=workers,
            pin_memory=plan.accelerator == "gpu",
            persistent_workers=workers > 0,
            worker_init_fn=ignore_interrupts_in_worker,
            generator=torch.Generator().manual_seed(exp.seed),  # worker seeds; leaves the global RNG alone
        )
    return loaders
