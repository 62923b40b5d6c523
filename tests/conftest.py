"""Shared fixtures. Nothing here touches the network: W&B is offline, no weights are downloaded."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import pytest

from tests.support import SHARED_DATASETS

os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "SEGCLI_CACHE_DIR": tempfile.mkdtemp(prefix="segcli-cache-"),
    }
)
for variable in ("DATASET_PATH", "CLASS_NAMES", "WANDB_PROJECT", "WANDB_API_KEY"):
    os.environ.pop(variable, None)


@pytest.fixture(autouse=True)
def _environment_restored():
    """A command run in-process loads its `.env` into os.environ, as the CLI does: no test sees another's
    (a CLASS_NAMES of two classes left behind made later `plan` runs refuse their data)."""
    with mock.patch.dict(os.environ):
        yield


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """8 train + 4 val generated 64x64 pairs, classes background/disc/square/triangle. Do not modify."""
    from segcli.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("tiny"), train=8, val=4, size=(64, 64), seed=1)


@pytest.fixture(scope="module")
def module_folder(tmp_path_factory, request) -> Path:
    """A folder for the runs a test module shares, removed after the module (tmp_path's retention leaves these)."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def camvid_mini() -> Path:
    path = SHARED_DATASETS / "camvid-mini"
    if not path.is_dir():
        pytest.skip("../shared/datasets/camvid-mini is not present")
    return path


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder, so no .env or checkpoints of the repository are picked up."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
