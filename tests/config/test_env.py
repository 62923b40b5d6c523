"""README promises about the environment: .env never overrides a set variable; the default W&B project and the
default dataset-check cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


def test_every_dataset_command_resolves_its_inputs_in_one_order(tmp_path, monkeypatch):
    """README: --dataset / --classes win over DATASET_PATH / CLASS_NAMES from the environment or .env;
    validate-dataset with an experiment and no names at all calls its classes class0..; plan may go without."""
    from segcli.errors import ConfigError

    (tmp_path / "from-env").mkdir()
    (tmp_path / "given").mkdir()
    monkeypatch.chdir(tmp_path)
    for key in ("DATASET_PATH", "CLASS_NAMES"):
        monkeypatch.delenv(key, raising=False)
    assert env.data_inputs(tmp_path / "given", "a,b") == env.DataInputs(tmp_path / "given", ["a", "b"])
    assert env.data_inputs(tmp_path / "given", default_count=3).class_names == ["class0", "class1", "class2"]
    assert env.data_inputs(tmp_path / "given", required=False).class_names is None
    with pytest.raises(ConfigError, match="no class names: pass --classes"):
        env.data_inputs(tmp_path / "given")
    with pytest.raises(ConfigError, match="no dataset: pass --dataset"):
        env.data_inputs(None, "a,b")
    (tmp_path / ".env").write_text(f"DATASET_PATH={tmp_path / 'from-env'}\nCLASS_NAMES=x, y\n")
    inputs = env.data_inputs(None, required=False)
    assert inputs == env.DataInputs(tmp_path / "from-env", ["x", "y"])
    assert env.data_inputs(tmp_path / "given", "a,b", default_count=5).class_names == ["a", "b"]
    with pytest.raises(ConfigError, match="missing does not exist"):
        env.dataset_input(tmp_path / "missing")
    for key in ("DATASET_PATH", "CLASS_NAMES"):  # written by load_env_file, outside monkeypatch's bookkeeping
        monkeypatch.delenv(key)
