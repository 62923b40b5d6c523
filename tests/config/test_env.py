"""README promises about the environment: .env never overrides a set variable; the default W&B project and the
default dataset-check cache folder."""

from __future__ import annotations

import os
from pathlib import Path

from segcli.config import env
from segcli.data.check_report import cache_dir


def test_env_file_fills_in_but_never_overrides_a_set_variable(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("DATASET_PATH=/from/env-file\nCLASS_NAMES=a,b\n")
    monkeypatch.setenv("DATASET_PATH", "/from/shell")
    monkeypatch.delenv("CLASS_NAMES", raising=False)
    env.load_env_file(tmp_path / ".env")
    assert os.environ["DATASET_PATH"] == "/from/shell"
    assert os.environ["CLASS_NAMES"] == "a,b"
    monkeypatch.delenv("CLASS_NAMES")  # load_env_file wrote it outside monkeypatch's bookkeeping


def test_wandb_project_defaults_to_segcli(monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert env.wandb_project() == "segcli"
    monkeypatch.setenv("WANDB_PROJECT", "roads")
    assert env.wandb_project() == "roads" and env.wandb_project("option") == "option"


def test_dataset_check_cache_default_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGCLI_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == Path(tmp_path) / ".cache" / "segcli" / "dataset-checks"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "segcli" / "dataset-checks"
    monkeypatch.setenv("SEGCLI_CACHE_DIR", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"
