"""W&B mode selection, fallback and folder, and the `cache: ram` dataset cache."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segcli.artifacts.model_info import Normalization
from segcli.config.schema import Experiment
from segcli.data.dataset import RamCache, SegmentationDataset
from segcli.data.io import list_pairs, read_image, read_mask
from segcli.data.transforms import build_pipeline
from segcli.errors import ConfigError
from segcli.training import preflight
from segcli.training.trackers import TrackedRun, WandbTracker
from segcli.training.trackers.wandb_tracker import wandb_mode
from tests.inference.support import IMAGENET


@pytest.mark.parametrize(
    ("offline", "environment", "expected"),
    [
        (True, {"WANDB_MODE": "online", "WANDB_API_KEY": "k"}, "offline"),  # --offline wins
        (False, {"WANDB_MODE": "disabled"}, "disabled"),  # WANDB_MODE is respected
        (False, {"WANDB_API_KEY": "k"}, "online"),
        (False, {}, "offline"),  # no key: offline, never an error or a prompt
    ],
)
def test_wandb_mode(offline, environment, expected, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    assert wandb_mode(offline) == expected


def _tracked(output: Path, offline: bool = False) -> TrackedRun:
    return TrackedRun(name="n", output_dir=output, run_dir=output, config={}, offline=offline, wandb_id="r")


def test_wandb_that_cannot_start_online_falls_back_to_offline(monkeypatch, caplog, tmp_path):
    import wandb

    made = []

    def fake_init(mode: str, **kwargs):
        made.append(mode)
        if mode == "online":
            raise ConnectionError("api.wandb.ai unreachable")
        return SimpleNamespace(project="p", id="r")

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setenv("WANDB_MODE", "online")
    with caplog.at_level(logging.WARNING, logger="segcli"):
        tracker = WandbTracker.start(_tracked(tmp_path))
    assert tracker.mode == "offline" and made == ["online", "offline"]
    assert [record.getMessage() for record in caplog.records] == [
        "warning: W&B could not start online (api.wandb.ai unreachable); logging offline instead"
    ]


def test_ram_cache_serves_the_decoded_files(tiny_dataset):
    pairs = list_pairs(tiny_dataset, "train")
    cache = RamCache(pairs, in_channels=3, workers=2)
    for index, pair in enumerate(pairs):
        image, mask = cache.get(index)
        assert np.array_equal(image, read_image(pair.image)) and np.array_equal(mask, read_mask(pair.mask))
    image, _ = cache.get(0)
    image[:] = 0  # a transform writing into its input must not damage the cache
    assert np.array_equal(cache.get(0)[0], read_image(pairs[0].image))
    assert cache.images[0].is_shared()

    pipeline = build_pipeline([], "train_transforms", Normalization(**IMAGENET), fill_label=255)
    cached = SegmentationDataset(pairs, pipeline, cache=cache)[(0, 1)]
    decoded = SegmentationDataset(pairs, pipeline)[(0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(cached, decoded, strict=True))


def test_ram_cache_estimate_and_refusal(monkeypatch):
    from collections import Counter

    assert RamCache.estimate_bytes(Counter({(360, 480): 10}), 3) == 10 * 360 * 480 * 4
    assert RamCache.estimate_bytes(Counter({(360, 480): 10}), 3, bytes_per_value=2) == 10 * 360 * 480 * 7
    monkeypatch.setattr(preflight, "available_memory", lambda: 10 * 2**30)
    preflight.check_memory(6 * 2**30)  # fits in 70% of 10 GiB
    with pytest.raises(ConfigError, match="cache: ram needs about 8.0 GiB but only 10.0 GiB"):
        preflight.check_memory(8 * 2**30)


def test_channels_last_trains_a_step():
    from segcli.models.task import SegmentationTask

    experiment = Experiment.model_validate(
        {
            "model": {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 3},
            "channels_last": True,
        }
    )
    task = SegmentationTask(experiment.model_dump(mode="json"), ["a", "b", "c"])
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    loss = task.criterion(task(images), masks)
    loss.backward()
    assert torch.isfinite(loss)
    assert task.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_wandb_gets_an_absolute_folder(in_tmp_cwd, monkeypatch):
    """A relative --output-dir reached W&B as is; a W&B service started elsewhere (by a parent process, whose
    WANDB_SERVICE the child inherits) resolved it against its own working directory and wrote files there."""
    import wandb

    received = {}

    def fake_init(**kwargs):
        received.update(kwargs)
        return SimpleNamespace(project="p", id="r")

    monkeypatch.setattr(wandb, "init", fake_init)
    tracker = WandbTracker.start(_tracked(Path("out"), offline=True))
    assert received["dir"] == str(in_tmp_cwd / "out") and Path(tracker.save_dir).is_absolute()
