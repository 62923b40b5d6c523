"""Sweeps (`-e all`, repeated -e), `--set` overrides, `--dry-run`, `segcli schema` and completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from segcli.config.loader import parse_overrides
from segcli.config.naming import override_suffix
from segcli.errors import ConfigError
from tests.support import CAMVID_CLASSES, DEMO_CLASSES, REPO, assert_user_error, run_segcli

TWO = """
model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults: {batch_size: 4, max_epochs: 1, num_workers: 0, lr: 0.001}
experiments:
  small-lr: {lr: 0.0001}
  broken: {model: {arch: unetpp}}
  big-batch: {batch_size: 8}
"""


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["lr=3e-4", "model.encoder_name=resnet50", "early_stopping.patience=5", "gpu=null"]) == {
        "lr": 0.0003,
        "model.encoder_name": "resnet50",
        "early_stopping.patience": 5,
        "gpu": None,
    }
    assert parse_overrides(["train_transforms=[{name: horizontal_flip}]"]) == {
        "train_transforms": [{"name": "horizontal_flip"}]
    }
    for bad in ("lr", "=3", "a..b=1", "lr=[1,"):
        with pytest.raises(ConfigError, match="--set"):
            parse_overrides([bad])


def test_override_suffix_is_short_stable_and_distinct():
    assert override_suffix({}) == ""
    assert override_suffix({"lr": 0.1}) == override_suffix({"lr": 0.1})
    assert override_suffix({"lr": 0.1}) != override_suffix({"lr": 0.2})
    assert len(override_suffix({"lr": 0.1})) == len("-set") + 6


DRY = """
model: {arch: UnetPlusPlus, encoder_name: resnet34, encoder_weights: null, classes: 4}
defaults: {batch_size: 32, lr: 0.001}
experiments:
  experiment-lr: {}
"""


def test_dry_run_prints_the_resolved_experiment_model_and_normalisation(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "dry.yaml").write_text(DRY)
    result = run_segcli("train", "-c", "dry.yaml", "-e", "experiment-lr", "--dry-run", "--set", "lr=3e-4",
                        "--set", "model.encoder_name=resnet18", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES,
                        cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load("\n".join(line for line in result.stdout.splitlines() if not line.startswith("#")))
    assert resolved["lr"] == 0.0003 and resolved["model"]["encoder_name"] == "resnet18"
    assert resolved["batch_size"] == 32 and resolved["model"]["arch"] == "UnetPlusPlus"
    assert f"# run dry-experiment-lr{override_suffix({'lr': 0.0003, 'model.encoder_name': 'resnet18'})}" in (
        result.stdout
    )
    assert "parameters, batches padded to multiples of 32 (reflected; the padding is never scored)" in result.stdout
    assert "# normalisation: imagenet: (pixel / 255 - mean) / std" in result.stdout
    assert "8 train / 4 val pairs, uint8" in result.stdout
    assert not (in_tmp_cwd / "checkpoints").exists() and not (in_tmp_cwd / "wandb").exists()
    unet = run_segcli("train", "-c", "dry.yaml", "-e", "experiment-lr", "--dry-run", "--set", "model.arch=Unet",
                      "--dataset", tiny_dataset, "--classes", DEMO_CLASSES, cwd=in_tmp_cwd)  # fmt: skip
    assert "parameters, any image size (the architecture pads by itself)" in unet.stdout, unet.stderr[-2000:]


def test_dry_run_runs_the_checks_train_makes_first(tiny_dataset, in_tmp_cwd):
    """A misspelt monitor used to pass --dry-run and fail only once training had started."""
    (in_tmp_cwd / "dry.yaml").write_text(DRY)
    base = ["train", "-c", "dry.yaml", "-e", "experiment-lr", "--dry-run", "--dataset", tiny_dataset,
            "--classes", DEMO_CLASSES]  # fmt: skip
    assert_user_error(run_segcli(*base, "--set", "monitor=val/mIOU", cwd=in_tmp_cwd), "monitor.metric", "val/mIoU")
    assert_user_error(run_segcli(*base, "--set", "model.classes=3", cwd=in_tmp_cwd), "CLASS_NAMES lists 4 names")


def test_set_errors_name_the_command_line(in_tmp_cwd):
    config = REPO / "experiments" / "unetpp.yaml"
    base = ["train", "-c", config, "-e", "experiment-lr", "--dry-run"]
    assert_user_error(run_segcli(*base, "--set", "lr=fast", cwd=in_tmp_cwd), "command-line option lr")
    assert_user_error(
        run_segcli(*base, "--set", "early_stopping.patiense=5", cwd=in_tmp_cwd),
        "command-line option early_stopping.patiense",
        "did you mean 'patience'",
    )


@pytest.mark.slow
def test_sweep_runs_every_experiment_and_reports_failures(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "two.yaml").write_text(TWO)
    result = run_segcli("train", "-c", "two.yaml", "-e", "all", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES,
                        "--output-dir", "out", "--set", "max_epochs=1", cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]  # one experiment failed; the others ran
    assert "error: experiment broken: model.arch: unknown architecture 'unetpp'" in result.stderr
    suffix = override_suffix({"max_epochs": 1})
    runs = sorted(p.name for p in (in_tmp_cwd / "out" / "checkpoints").iterdir())
    assert runs == [f"two-big-batch{suffix}", f"two-small-lr{suffix}"]
    table = result.stdout[result.stdout.index("sweep: best validation scores") :]
    for text in ("small-lr", "big-batch", "broken", "failed: model.arch", "ok"):
        assert text in table, text


@pytest.mark.slow
def test_sweep_on_camvid_mini(camvid_mini, in_tmp_cwd):
    (in_tmp_cwd / "camvid.yaml").write_text(
        (REPO / "experiments" / "camvid.yaml").read_text().replace("  full:", "  mini-lr: {lr: 0.002}\n  full:")
    )
    result = run_segcli("train", "-c", "camvid.yaml", "-e", "mini", "-e", "mini-lr", "--max-epochs", "1",
                        "--dataset", camvid_mini, "--classes", CAMVID_CLASSES, "--output-dir", "out",
                        cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (in_tmp_cwd / "out" / "checkpoints").iterdir()) == ["camvid-mini", "camvid-mini-lr"]
    assert "sweep: best validation scores" in result.stdout


def test_schema_validates_the_shipped_experiment_files(in_tmp_cwd):
    result = run_segcli("schema", cwd=in_tmp_cwd)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        validator.validate(yaml.safe_load(path.read_text()))
    bad = yaml.safe_load(TWO.replace("lr: 0.0001", "lr: 0.0001, batch_sise: 3"))
    assert any("batch_sise" in error.message for error in validator.iter_errors(bad))
    assert not validator.is_valid({"model": {"arch": "unet", "classes": 2}, "experiments": {"e": {"lr": -1}}})


def test_experiment_names_complete_from_the_config(in_tmp_cwd):
    (in_tmp_cwd / "two.yaml").write_text(TWO)
    env = {**os.environ, "_SEGCLI_COMPLETE": "complete_bash", "COMP_WORDS": "segcli train -c two.yaml -e s"}
    script = Path(sys.executable).parent / "segcli"  # completion keys on the program name
    result = subprocess.run([script], cwd=in_tmp_cwd, env={**env, "COMP_CWORD": "5"}, capture_output=True, text=True)
    assert result.stdout.split() == ["small-lr"]
