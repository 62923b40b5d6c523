"""Crash safety end to end: SIGKILL mid-run then --resume equals an uninterrupted run, Ctrl-C, atomic saves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support import DEMO_CLASSES, run_segcli

pytestmark = pytest.mark.slow

EXPERIMENTS = """
model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults:
  batch_size: 4
  lr: 0.001
  max_epochs: 5
  num_workers: 0
  train_transforms:
    - {name: horizontal_flip, params: {p: 0.5}}
    - {name: random_rotate_90, params: {p: 0.5}}
  scheduler: {name: StepLR, params: {step_size: 2, gamma: 0.5}}
experiments:
  exp: {}
  diverge:
    optimizer: {name: SGD}
    lr: 1.0e+20
"""
RUN = "tiny-exp"


@pytest.fixture
def config(in_tmp_cwd) -> Path:
    path = in_tmp_cwd / "tiny.yaml"
    path.write_text(EXPERIMENTS)
    return path


def _args(config: Path, dataset: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "-c", str(config), "-e", "exp", "--dataset", str(dataset), "--classes", DEMO_CLASSES,
            "--output-dir", str(output), *extra]  # fmt: skip


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "segcli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for_epochs(run_dir: Path, epochs: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = run_dir / "run.json"
        if record.is_file() and json.loads(record.read_text())["epochs_completed"] >= epochs:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("training made no progress")


def _final(output: Path) -> dict:
    return torch.load(output / "checkpoints" / RUN / "ckpt_latest.pth", weights_only=True)


@pytest.fixture(scope="module")
def clean_run(tiny_dataset, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("clean")
    (folder / "tiny.yaml").write_text(EXPERIMENTS)
    result = run_segcli(*_args(folder / "tiny.yaml", tiny_dataset, folder / "out"), cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return _final(folder / "out")


def _assert_same_run(resumed: dict, clean: dict) -> None:
    assert resumed["epoch"] == clean["epoch"] == 4
    # Bit-for-bit on CPU: same shuffles, same augmentations, same kernels.
    for key, value in clean["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert resumed["history"] == clean["history"]


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_sigkill_then_resume_equals_an_uninterrupted_run(config, tiny_dataset, in_tmp_cwd, clean_run, delay):
    output = in_tmp_cwd / "out"
    run_dir = output / "checkpoints" / RUN
    process = _start(_args(config, tiny_dataset, output), in_tmp_cwd)
    _wait_for_epochs(run_dir, 1, process)
    time.sleep(delay)
    process.kill()
    process.wait()
    record = json.loads((run_dir / "run.json").read_text())
    assert not record["finished"] and record["epochs_completed"] < 5, "the kill came too late to test a resume"

    resumed = run_segcli(*_args(config, tiny_dataset, output, "--resume"), cwd=in_tmp_cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(_final(output), clean_run)
    after = json.loads((run_dir / "run.json").read_text())
    assert after["finished"] and after["wandb_id"] == record["wandb_id"]  # the same W&B run continues
    assert {p.name.split("-")[-1] for p in (output / "wandb").glob("offline-run-*")} == {record["wandb_id"]}

    again = run_segcli(*_args(config, tiny_dataset, output, "--resume"), cwd=in_tmp_cwd)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_ctrl_c_stops_after_the_epoch_and_resume_finishes_it(config, tiny_dataset, in_tmp_cwd, clean_run):
    output = in_tmp_cwd / "out"
    run_dir = output / "checkpoints" / RUN
    process = _start(_args(config, tiny_dataset, output), in_tmp_cwd)
    _wait_for_epochs(run_dir, 1, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "continue with --resume" in stderr and "Traceback" not in stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert not record["finished"] and 1 <= record["epochs_completed"] < 5
    assert _final(output)["epoch"] == record["epochs_completed"] - 1  # the stopped epoch was saved whole

    resumed = run_segcli(*_args(config, tiny_dataset, output, "--resume"), cwd=in_tmp_cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(_final(output), clean_run)


def test_resume_without_a_state_is_a_user_error(config, tiny_dataset, in_tmp_cwd):
    result = run_segcli(*_args(config, tiny_dataset, in_tmp_cwd / "out", "--resume"), cwd=in_tmp_cwd)
    assert result.returncode == 2 and "no training state" in result.stderr


def test_non_finite_loss_stops_with_exit_3_and_writes_no_weights(config, tiny_dataset, in_tmp_cwd):
    args = _args(config, tiny_dataset, in_tmp_cwd / "out")
    args[args.index("exp")] = "diverge"
    result = run_segcli(*args, cwd=in_tmp_cwd)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "error: the training loss became" in result.stderr and "at epoch 1, step" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((in_tmp_cwd / "out" / "checkpoints" / "tiny-diverge").glob("*.pth"))


SAVE_LOOP = """
import sys, torch
from pathlib import Path
from segcli.training.checkpoints import atomic_save
path = Path(sys.argv[1])
value = 0
while True:
    value += 1
    atomic_save({"value": torch.full((256, 1024), float(value)), "check": value}, path)
"""


def test_kill_during_saves_never_leaves_a_broken_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    for attempt in range(12):
        process = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)])
        while not path.exists():
            time.sleep(0.01)
        time.sleep(0.05 + 0.037 * attempt)  # land at different moments of a write
        process.send_signal(signal.SIGKILL)
        process.wait()
        payload = torch.load(path, weights_only=True)
        assert torch.all(payload["value"] == payload["check"]), attempt
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt.pth"]
    assert all(name.endswith(".tmp") for name in leftovers)  # a killed write leaves at most its temp file


def test_state_file_is_plain_data(config, tiny_dataset, in_tmp_cwd):
    result = run_segcli(*_args(config, tiny_dataset, in_tmp_cwd / "out", "--max-epochs", "1"), cwd=in_tmp_cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(in_tmp_cwd / "out" / "checkpoints" / RUN / "state_latest.ckpt", weights_only=True)
    assert state["epoch"] == 0 and "optimizer_states" in state and state["hyper_parameters"]["experiment"]
    assert os.path.getsize(in_tmp_cwd / "out" / "checkpoints" / RUN / "run.json") > 0
