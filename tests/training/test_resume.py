"""Crash safety end to end: SIGKILL mid-run then --resume equals an uninterrupted run, Ctrl-C, atomic saves."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segcli.config.schema import Experiment
from tests.support import DEMO_CLASSES, run_segcli, wandb_history

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
  scheduler: {name: ReduceLROnPlateau, params: {patience: 0, factor: 0.5}, monitor: val/loss}
  ema: {decay: 0.9}
  average: {start_epoch: 3}
  early_stopping: {monitor: val/mIoU, patience: 5}
  log_predictions: {count: 2, worst: 0}
  state_every_seconds: 0  # a state every epoch: the kills below resume from the epoch before them
experiments:
  exp: {}
  workers:
    num_workers: 2
  sparse:
    state_every_seconds: 3600
  stops:
    early_stopping: {monitor: val/mIoU, patience: 1, min_delta: 0.9}
  diverge:
    optimizer: {name: SGD}
    scheduler: null
    lr: 1.0e+20
"""
RUN = "tiny-exp"


@pytest.fixture
def config(in_tmp_cwd) -> Path:
    path = in_tmp_cwd / "tiny.yaml"
    path.write_text(EXPERIMENTS)
    return path


def _args(config: Path, dataset: Path, output: Path, *extra: str, experiment: str = "exp") -> list[str]:
    return ["train", "-c", str(config), "-e", experiment, "--dataset", str(dataset), "--classes", DEMO_CLASSES,
            "--output-dir", str(output), *extra]  # fmt: skip


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "segcli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for_epochs(run_dir: Path, epochs: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = run_dir / "run.json"
        try:
            if json.loads(record.read_text())["epochs_completed"] >= epochs:
                return
        except (FileNotFoundError, ValueError):
            pass
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("training made no progress")


def _state(output: Path, run: str = RUN) -> dict:
    return torch.load(output / "checkpoints" / run / "state_latest.ckpt", weights_only=True)


def _without_timing(value):
    """Callback states minus the seconds each epoch took: the only thing a resume may change."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _assert_equal(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (where, sorted(a.keys() ^ b.keys()))
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{index}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, (where, a, b)


def _assert_same_run(resumed: Path, clean: Path, run: str = RUN) -> None:
    """Every piece of state: weights, optimizer, scheduler, early stopping, EMA, SWA, best, history, RNG;
    and the files written from it."""
    a, b = _state(resumed, run), _state(clean, run)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        _assert_equal(a[key], b[key], key)
    _assert_equal(_without_timing(a["callbacks"]), _without_timing(b["callbacks"]), "callbacks")
    for name in ("ckpt_latest.pth", "ckpt_best.pth", "ema_model.pth", "average_model.pth"):
        exists = (clean / "checkpoints" / run / name).exists()
        assert (resumed / "checkpoints" / run / name).exists() == exists, name
        if not exists:  # an early stop before the average's start epoch: no average_model.pth in either
            continue
        x = torch.load(resumed / "checkpoints" / run / name, weights_only=True)
        y = torch.load(clean / "checkpoints" / run / name, weights_only=True)
        _assert_equal(x["state_dict"], y["state_dict"], name)
        _assert_equal(x["metrics"], y["metrics"], name)


def _clean(dataset: Path, folder: Path, *extra: str, experiment: str = "exp") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "tiny.yaml").write_text(EXPERIMENTS)
    result = run_segcli(*_args(folder / "tiny.yaml", dataset, folder / "out", *extra, experiment=experiment),
                        cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out"


@pytest.fixture(scope="module")
def clean_run(tiny_dataset, module_folder) -> Path:
    return _clean(tiny_dataset, module_folder)


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_sigkill_then_resume_equals_an_uninterrupted_run(config, tiny_dataset, in_tmp_cwd, clean_run, delay):
    output = in_tmp_cwd / "out"
    run_dir = output / "checkpoints" / RUN
    process = _start(_args(config, tiny_dataset, output), in_tmp_cwd)
    _wait_for_epochs(run_dir, 2, process)
    time.sleep(delay)
    process.kill()
    process.wait()
    record = json.loads((run_dir / "run.json").read_text())
    assert not record["finished"] and record["epochs_completed"] < 5, "the kill came too late to test a resume"

    state_epochs = _state(output)["epoch"] + 1
    resumed = run_segcli(*_args(config, tiny_dataset, output, "--resume"), cwd=in_tmp_cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch {state_epochs}, from " in resumed.stdout  # the summary says where it continued
    _assert_same_run(output, clean_run)
    after = json.loads((run_dir / "run.json").read_text())
    assert after["finished"] and after["wandb_id"] == record["wandb_id"]  # the same W&B run continues
    assert {p.name.split("-")[-1] for p in (output / "wandb").glob("offline-run-*")} == {record["wandb_id"]}
    rows = wandb_history(output)
    train_rows = [row for row in rows if "train/mIoU" in row]
    assert all(not math.isnan(row["train/mIoU"]) for row in train_rows), "a resume logged an empty epoch's NaN"
    epochs = [row["epoch"] for row in train_rows]
    # One row per epoch, 1-based, none repeated (W&B's own service may drop the last row before a kill -9).
    assert epochs == sorted(set(epochs)) and set(epochs) >= {1, 3, 4, 5} and set(epochs) <= {1, 2, 3, 4, 5}

    again = run_segcli(*_args(config, tiny_dataset, output, "--resume"), cwd=in_tmp_cwd)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_between_states_a_kill_leaves_nothing_to_resume_and_the_last_epoch_always_writes_one(
    config, tiny_dataset, in_tmp_cwd
):
    """README: the state is written once `state_every_seconds` have passed, and always at the epoch training stops
    at; a run killed before its first state has nothing to continue from, and the error says why and what to do."""
    output = in_tmp_cwd / "out"
    run_dir = output / "checkpoints" / "tiny-sparse"
    args = _args(config, tiny_dataset, output, experiment="sparse")
    process = _start(args, in_tmp_cwd)
    _wait_for_epochs(run_dir, 2, process)
    process.kill()
    process.wait()
    assert (run_dir / "ckpt_latest.pth").exists() and not (run_dir / "state_latest.ckpt").exists()
    resumed = run_segcli(*args, "--resume", cwd=in_tmp_cwd)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert "every 3600 s: `state_every_seconds`" in resumed.stderr and "--overwrite" in resumed.stderr
    finished = run_segcli(*args, "--overwrite", "--max-epochs", "2", cwd=in_tmp_cwd)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert _state(output, "tiny-sparse")["epoch"] == 1  # the last epoch's state (0-based), 3600 s notwithstanding


def test_reduce_on_plateau_trains_and_halves_the_rate(clean_run):
    """ReduceLROnPlateau was refused as an "unknown scheduler" though the README documents it."""
    history = _state(clean_run)["callbacks"]["EpochHistory"]["history"]
    assert history[0]["lr"] == pytest.approx(0.001)
    assert any(row["lr"] < 0.001 for row in history)  # patience 0: the first worse val/loss halves it


def test_early_stopping_survives_a_resume(config, tiny_dataset, in_tmp_cwd):
    """The state was saved before EarlyStopping counted the epoch: a resumed run never stopped early."""
    clean = _clean(tiny_dataset, in_tmp_cwd / "clean", experiment="stops")
    clean_epochs = _state(clean, "tiny-stops")["epoch"]
    assert clean_epochs < 4  # patience 1 with an improvement nothing reaches: it stops early
    output = in_tmp_cwd / "out"
    process = _start(_args(config, tiny_dataset, output, experiment="stops"), in_tmp_cwd)
    _wait_for_epochs(output / "checkpoints" / "tiny-stops", 1, process)
    process.kill()
    process.wait()
    resumed = run_segcli(*_args(config, tiny_dataset, output, "--resume", experiment="stops"), cwd=in_tmp_cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(early stop)" in resumed.stdout
    _assert_same_run(output, clean, "tiny-stops")


@pytest.mark.parametrize(
    ("how", "experiment"), [("--resume", "exp"), ("--resume-from", "exp"), ("--resume", "workers")],
    ids=["resume", "from", "workers"],
)  # fmt: skip
def test_a_finished_run_extends_to_a_larger_max_epochs(config, tiny_dataset, in_tmp_cwd, how, experiment):
    """`--resume --max-epochs 3` on a finished 2-epoch run trains epoch 3: the same as 3 epochs at once; so does
    `--resume-from` a copy of its state file. With DataLoader workers (the default) Lightning made the train
    iterator before it told the sampler the epoch, and the workers' first batches of the resumed epoch had
    epoch 0's order and flips (found on camvid-mini: every other test here runs without workers)."""
    run = f"tiny-{experiment}"
    clean = _clean(tiny_dataset, in_tmp_cwd / "clean", "--max-epochs", "3", experiment=experiment)
    output = in_tmp_cwd / "out"
    first = run_segcli(*_args(config, tiny_dataset, output, "--max-epochs", "2", experiment=experiment),
                       cwd=in_tmp_cwd)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((output / "checkpoints" / run / "run.json").read_text())
    resume = ["--resume"]
    if how == "--resume-from":
        saved = in_tmp_cwd / "saved-state.ckpt"
        (output / "checkpoints" / run / "state_latest.ckpt").rename(saved)
        resume = ["--resume-from", str(saved)]
    extended = run_segcli(*_args(config, tiny_dataset, output, *resume, "--max-epochs", "3", experiment=experiment),
                          cwd=in_tmp_cwd)  # fmt: skip
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "already finished" not in extended.stdout and "epochs run" in extended.stdout
    _assert_same_run(output, clean, run)
    after = json.loads((output / "checkpoints" / run / "run.json").read_text())
    assert after["epochs_completed"] == 3 and after["finished"] and after["wandb_id"] == record["wandb_id"]


def test_ctrl_c_stops_after_the_epoch_and_resume_finishes_it(config, tiny_dataset, in_tmp_cwd, clean_run):
    output = in_tmp_cwd / "out"
    run_dir = output / "checkpoints" / RUN
    process = _start(_args(config, tiny_dataset, output), in_tmp_cwd)
    _wait_for_epochs(run_dir, 1, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert "continue with --resume" in stderr and "Traceback" not in stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert not record["finished"] and 1 <= record["epochs_completed"] < 5
    assert _state(output)["epoch"] == record["epochs_completed"] - 1  # the stopped epoch was saved whole

    resumed = run_segcli(*_args(config, tiny_dataset, output, "--resume"), cwd=in_tmp_cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(output, clean_run)


def test_resume_without_a_state_is_a_user_error(config, tiny_dataset, in_tmp_cwd):
    result = run_segcli(*_args(config, tiny_dataset, in_tmp_cwd / "out", "--resume"), cwd=in_tmp_cwd)
    assert result.returncode == 2 and "no training state" in result.stderr


def test_non_finite_loss_stops_with_exit_3_and_writes_no_weights(config, tiny_dataset, in_tmp_cwd):
    args = _args(config, tiny_dataset, in_tmp_cwd / "out")
    args[args.index("exp")] = "diverge"
    result = run_segcli(*args, cwd=in_tmp_cwd)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "error: the training loss became NaN or infinite at epoch 1, step" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((in_tmp_cwd / "out" / "checkpoints" / "tiny-diverge").glob("*.pth"))


SAVE_LOOP = """
import sys, torch
from pathlib import Path
from segcli.files import save_torch
path = Path(sys.argv[1])
value = 0
while True:
    value += 1
    save_torch({"value": torch.full((256, 1024), float(value)), "check": value}, path)
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


def test_a_state_whose_history_lives_elsewhere_is_refused(clean_run, tmp_path):
    """A state written before the history had its own callback would resume with an empty history: refused."""
    from segcli.errors import CheckpointError
    from segcli.training.preflight import check_resume_state

    state = _state(clean_run)
    experiment = Experiment.model_validate(state["hyper_parameters"]["experiment"])
    assert check_resume_state(clean_run / "checkpoints" / RUN / "state_latest.ckpt", experiment)[0] == 5
    state["callbacks"]["RunCheckpoints"] = state["callbacks"].pop("EpochHistory")
    older = tmp_path / "state_latest.ckpt"
    torch.save(state, older)
    with pytest.raises(CheckpointError, match="older segcli.*--overwrite"):
        check_resume_state(older, experiment)


def test_resuming_a_finished_run_does_not_read_its_state(clean_run, tiny_dataset, config, in_tmp_cwd):
    """`--resume` of a run that already finished says so and exits 0 before any state is read (one written by an
    older segcli, or a damaged one, would otherwise be refused)."""
    import shutil

    output = in_tmp_cwd / "copy"
    shutil.copytree(clean_run, output)
    (output / "checkpoints" / RUN / "state_latest.ckpt").write_bytes(b"never read")
    again = run_segcli(*_args(config, tiny_dataset, output, "--resume"), cwd=in_tmp_cwd)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-2000:]
