"""W&B mode selection, fallback and early start, and the `cache: ram` dataset cache."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from segcli.config.schema import Experiment
from segcli.data.dataset import RamCache, SegmentationDataset
from segcli.data.io import list_pairs, read_image, read_mask
from segcli.data.transforms import build_pipeline
from segcli.errors import ConfigError
from segcli.training import preflight, tracking
from segcli.training.wandb_service import wandb_mode
from tests.inference.support import IMAGENET
from tests.support import REPO


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


def test_wandb_that_cannot_start_online_falls_back_to_offline(monkeypatch, recwarn):
    made = []

    def fake_init(mode: str, **kwargs):
        made.append(mode)
        if mode == "online":
            raise ConnectionError("api.wandb.ai unreachable")
        return object()

    monkeypatch.setattr(tracking.wandb, "init", fake_init)
    with pytest.warns(UserWarning, match="logging offline instead"):
        run, mode = tracking.init_run(mode="online", project="p")
    assert mode == "offline" and made == ["online", "offline"]


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

    pipeline = build_pipeline([], "train_transforms", IMAGENET)
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
    received = {}

    def fake_init(**kwargs):
        received.update(kwargs)
        return object(), "offline"

    monkeypatch.setattr(tracking, "init_run", fake_init)
    logger = tracking.start_logger(project="p", name="n", run_id="r", save_dir=Path("out"), mode="offline", config={})
    assert logger.experiment is not None  # waits for the background start
    assert received["dir"] == str(in_tmp_cwd / "out") and Path(logger.save_dir).is_absolute()


def test_wandbs_launch_modules_are_imported_before_torch_on_the_calling_thread():
    """After torch they cost 1.4 s of CPU; on a thread of their own they raced torch's import and paid it."""
    probe = (
        "import sys\n"
        "from segcli.training import wandb_service\n"
        "wandb_service._setup = lambda: None\n"
        "wandb_service.start_service('offline')\n"
        "print('IMPORTED', 'wandb.sdk.launch.inputs.internal' in sys.modules, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "LOCAL_RANK": "0", "NODE_RANK": "0"})  # fmt: skip
    assert "IMPORTED True False" in result.stdout, result.stdout + result.stderr


def test_the_wandb_service_starts_early_unless_disabled_or_another_process(monkeypatch):
    from segcli.training import wandb_service

    calls = []
    monkeypatch.setattr(wandb_service, "_setup", lambda: calls.append(1))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("NODE_RANK", raising=False)
    wandb_service.start_service("disabled")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a second process of a multi-process run never logs
    wandb_service.start_service("offline")
    monkeypatch.setenv("LOCAL_RANK", "0")
    wandb_service.start_service("offline")
    for thread in threading.enumerate():
        if thread.name == "segcli-wandb-service":
            thread.join(timeout=10)
    assert calls == [1]


def test_wandb_images_downscale_large_masks_of_any_integer_type():
    """Validation masks arrive as int64 (torch's labels); PIL cannot resize those, so images over 512 px failed."""
    from segcli.drawing.pictures import Sample
    from segcli.training import tracking

    mask = np.zeros((1024, 1100), np.int64)
    mask[:512, :] = 3
    mask[-1, -1] = 255
    image = np.zeros((1024, 1100, 3), np.uint8)
    assert len(tracking.wandb_images([Sample("big", image, mask, prediction=mask)], ["a", "b", "c", "d"], 255)) == 1
    small = tracking._downscaled(mask, nearest=True)
    assert small.shape == (477, tracking.MAX_LOGGED_SIDE) and set(np.unique(small).tolist()) <= {0, 3, 255}
    assert small[0, 0] == 3 and small[-1, 0] == 0
