"""`segcli train` end to end on generated data, and its user errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support import CAMVID_CLASSES, DEMO_CLASSES, REPO, assert_user_error, run_segcli

TINY_EXPERIMENTS = """
model:
  arch: unet
  encoder_name: resnet18
  encoder_weights: null
  in_channels: 3
  classes: 4
defaults:
  batch_size: 4
  lr: 0.001
  max_epochs: 2
  num_workers: 0
  train_transforms:
    - {name: horizontal_flip, params: {p: 0.5}}
  optimizer: {name: AdamW, params: {weight_decay: 0.0001}}
  scheduler: {name: CosineAnnealingLR, params: {T_max: 2}}
  early_stopping: {monitor: val/mIoU, patience: 5}
experiments:
  exp: {}
  bad-monitor:
    early_stopping: {monitor: val/miou}
  gpu0:
    gpu: 0
"""


@pytest.fixture
def tiny_config(in_tmp_cwd) -> Path:
    path = in_tmp_cwd / "tiny.yaml"
    path.write_text(TINY_EXPERIMENTS)
    return path


def _wandb_run_file(output: Path) -> bytes:
    runs = list((output / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    return runs[0].read_bytes()


def test_train_end_to_end(tiny_config, tiny_dataset, in_tmp_cwd):
    import torch

    output = in_tmp_cwd / "out"
    result = run_segcli(
        "train", "--config", tiny_config, "--experiment", "exp", "--dataset", tiny_dataset,
        "--classes", DEMO_CLASSES, "--output-dir", output, cwd=in_tmp_cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run tiny-exp" in result.stdout
    assert "best val/mIoU" in result.stdout

    run_dir = output / "checkpoints" / "tiny-exp"
    files = {name: run_dir / name for name in ("ckpt_latest.pth", "ckpt_best.pth", "average_model.pth")}
    loaded = {name: torch.load(path, weights_only=True) for name, path in files.items()}
    assert not list(run_dir.glob(".*.tmp")), "temporary files left behind"
    for payload in loaded.values():
        model = payload["model"]
        assert payload["format"] == "segcli-checkpoint" and payload["format_version"] == 2
        assert model["arch"] == "unet" and model["encoder_name"] == "resnet18"
        assert model["classes"] == 4 and model["in_channels"] == 3
        assert model["class_names"] == DEMO_CLASSES.split(",")
        assert model["normalization"]["mode"] == "imagenet" and len(model["normalization"]["mean"]) == 3
        assert model["input_size"] == [64, 64]
        assert set(payload["metrics"]) >= {"val/mIoU", "val/mDCC", "val/loss", "val/IoU/disc", "val/Dice/triangle"}
        assert payload["experiment"]["batch_size"] == 4

    latest, best = loaded["ckpt_latest.pth"], loaded["ckpt_best.pth"]
    assert latest["epoch"] == 2  # 1-based: the weights after the second epoch
    assert best["metrics"]["val/mIoU"] >= latest["metrics"]["val/mIoU"]
    if best["epoch"] == latest["epoch"]:
        assert all(torch.equal(best["state_dict"][k], latest["state_dict"][k]) for k in latest["state_dict"])

    # The checkpoint rebuilds the model with smp alone.
    import segmentation_models_pytorch as smp

    model = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, classes=4)
    model.load_state_dict(loaded["average_model.pth"]["state_dict"])

    history = _wandb_run_file(output)
    for key in ("train/loss", "val/loss", "train/mIoU", "train/mDCC", "val/mIoU", "val/mDCC", "val/IoU/background",
                "val/Dice/triangle", "train/IoU/square", "train/Dice/disc", "samples/train", "val/predictions",
                "val_avg/mIoU", "val/worst_images", "val/confusion_matrix"):  # fmt: skip
        assert key.encode() in history, key
    for config_key in (b"class_names", b"dataset_path", b"tiny-exp", b"CosineAnnealingLR", b"normalization"):
        assert config_key in history
    synced = {p.name for p in (output / "wandb").glob("offline-run-*/files/*.pth")}
    assert synced == set(files), synced
    for name in ("metrics.csv", "results.png", "per_class.png", "confusion_matrix.png", "worst_predictions.png"):
        assert (run_dir / name).stat().st_size > 0, name

    # The same run again: refused before anything is touched, unless --overwrite (or --resume) says what to do.
    again = ["train", "-c", tiny_config, "-e", "exp", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES,
             "--output-dir", output, "--max-epochs", "1"]  # fmt: skip
    assert_user_error(run_segcli(*again, cwd=in_tmp_cwd), "--resume", "--overwrite", "--output-dir")
    assert torch.load(files["ckpt_latest.pth"], weights_only=True)["epoch"] == 2
    replaced = run_segcli(*again, "--overwrite", cwd=in_tmp_cwd)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert torch.load(files["ckpt_latest.pth"], weights_only=True)["epoch"] == 1


def test_dataset_problem_stops_before_any_run(tiny_config, tiny_dataset, in_tmp_cwd):
    broken = in_tmp_cwd / "broken"
    shutil.copytree(tiny_dataset, broken)
    from PIL import Image

    mask_path = next((broken / "train" / "labels").glob("*.png"))
    mask = np.array(Image.open(mask_path))
    mask[0, 0] = 9
    Image.fromarray(mask).save(mask_path)
    (broken / "val" / "labels" / "val_0000.png").unlink()

    output = in_tmp_cwd / "out"
    result = run_segcli("train", "-c", tiny_config, "-e", "exp", "--dataset", broken, "--classes", DEMO_CLASSES,
                    "--output-dir", output, cwd=in_tmp_cwd)  # fmt: skip
    assert_user_error(
        result, "failed the dataset check", "mask-values", mask_path.name, "image-without-mask", "val_0000.png"
    )
    assert not output.exists()


@pytest.fixture
def untidy_dataset(tiny_dataset, in_tmp_cwd) -> Path:
    """The tiny dataset with a stray notes.txt and an extra/ sub-folder: two warnings of the dataset check."""
    root = Path(shutil.copytree(tiny_dataset, in_tmp_cwd / "untidy"))
    (root / "train" / "images" / "notes.txt").write_text("how these were made")
    (root / "train" / "labels" / "extra").mkdir()
    return root


WARNINGS = ("images/notes.txt is not an image file (ignored)", "labels/ has sub-folders (extra/)")


def _in_a_terminal(args: list, cwd: Path) -> tuple[int, str]:
    """`segcli ARGS` with stdout and stderr on a pseudo-terminal, as a person runs it: (exit code, what it showed)."""
    import os
    import pty
    import re
    import subprocess
    import sys

    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"}
    process = subprocess.Popen([sys.executable, "-m", "segcli", *map(str, args)], cwd=cwd, env=env, stdin=follower,
                               stdout=follower, stderr=follower, close_fds=True)  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    code = process.wait(timeout=600)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))


@pytest.mark.slow
def test_the_terminal_shows_epochs_from_1_and_the_dataset_warnings_once_at_the_start(
    tiny_config, untidy_dataset, in_tmp_cwd
):
    """The progress bar read `Epoch 0/0` for the only epoch, with Lightning's `v_num`; and train said nothing of a
    stray notes.txt or an extra/ sub-folder, which validate-dataset warns about."""
    code, shown = _in_a_terminal(["train", "-c", tiny_config, "-e", "exp", "--dataset", untidy_dataset, "--classes",
                                  DEMO_CLASSES, "--output-dir", "out"], in_tmp_cwd)  # fmt: skip
    assert code == 0, shown[-3000:]
    assert "Epoch 1/2" in shown and "Epoch 2/2" in shown and "Epoch 0/" not in shown and "v_num" not in shown
    for warning in WARNINGS:
        assert shown.count(warning) == 1, (warning, shown[-3000:])
        assert shown.index(warning) < shown.index("Epoch 1/2")


@pytest.mark.slow
def test_a_sweep_shows_the_dataset_warnings_once_before_its_first_run(tiny_config, untidy_dataset, in_tmp_cwd):
    (in_tmp_cwd / "two.yaml").write_text(
        TINY_EXPERIMENTS.replace("max_epochs: 2", "max_epochs: 1").replace(
            "  bad-monitor:\n    early_stopping: {monitor: val/miou}\n  gpu0:\n    gpu: 0\n", "  again: {lr: 0.01}\n"
        )
    )
    result = run_segcli("train", "-c", "two.yaml", "-e", "exp", "-e", "again", "--dataset", untidy_dataset,
                        "--classes", DEMO_CLASSES, "--output-dir", "out", cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for warning in WARNINGS:
        assert result.stderr.count(warning) == 1, (warning, result.stderr)
        assert result.stderr.index(warning) < result.stderr.index("epoch 1/1")
    assert "the dataset check warns (training goes on):" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-e", "exq"], ["no experiment 'exq'", "did you mean 'exp'"]),
        (["-e", "exp", "--classes", "a,b,c"], ["model.classes is 4", "lists 3 names"]),
        (["-e", "bad-monitor"], ["early_stopping.monitor", "'val/miou' is never logged", "val/mIoU"]),
        (["-e", "exp", "--dataset", "nowhere"], ["nowhere does not exist"]),
        (["-e", "exp", "--max-epochs", "0"], ["max-epochs"]),
    ],
)
def test_user_errors(tiny_config, tiny_dataset, in_tmp_cwd, args, fragments):
    base = ["train", "-c", tiny_config, "--dataset", tiny_dataset, "--classes", DEMO_CLASSES, "--output-dir", "out"]
    result = run_segcli(*base, *args, cwd=in_tmp_cwd)
    if fragments == ["max-epochs"]:  # rejected by the option parser itself (Typer's usage error)
        assert result.returncode == 2 and "Traceback" not in result.stderr
    else:
        assert_user_error(result, *fragments)
    assert not (in_tmp_cwd / "out").exists()


def test_segcli_debug_shows_the_traceback_of_a_user_error(tiny_config, tiny_dataset, in_tmp_cwd):
    base = ["train", "-c", tiny_config, "-e", "exq", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES]
    result = run_segcli(*base, cwd=in_tmp_cwd, env={"SEGCLI_DEBUG": "1"})
    assert result.returncode == 2 and "Traceback" in result.stderr and "no experiment 'exq'" in result.stderr


def test_missing_gpu_is_a_clear_error(tiny_config, tiny_dataset, in_tmp_cwd):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_segcli("train", "-c", tiny_config, "-e", "gpu0", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES,
                    cwd=in_tmp_cwd)  # fmt: skip
    assert_user_error(result, "gpu: 0", "no CUDA GPU", "--cpu")


def test_env_file_supplies_dataset_and_classes(tiny_config, tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / ".env").write_text(f"DATASET_PATH={tiny_dataset}\nCLASS_NAMES=a,b\n")
    # CLASS_NAMES from .env (2 names) reaches the check; --classes overrides it.
    result = run_segcli("train", "-c", tiny_config, "-e", "bad-monitor", cwd=in_tmp_cwd)
    assert_user_error(result, "model.classes is 4", "2 names")
    result = run_segcli("train", "-c", tiny_config, "-e", "bad-monitor", "--classes", DEMO_CLASSES, cwd=in_tmp_cwd)
    assert_user_error(result, "early_stopping.monitor")


def test_malformed_env_line_is_reported(tiny_config, in_tmp_cwd):
    (in_tmp_cwd / ".env").write_text("DATASET_PATH=/data\nthis is not an assignment\n")
    result = run_segcli("train", "-c", tiny_config, "-e", "exp", cwd=in_tmp_cwd)
    assert_user_error(result, ".env:2", "KEY=VALUE")


@pytest.mark.slow
def test_train_camvid_mini(camvid_mini, in_tmp_cwd):
    import torch

    result = run_segcli("train", "-c", REPO / "experiments" / "camvid.yaml", "-e", "mini", "--dataset", camvid_mini,
                    "--classes", CAMVID_CLASSES, "--output-dir", in_tmp_cwd, "--offline", cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = in_tmp_cwd / "checkpoints" / "camvid-mini"
    for name in ("ckpt_latest.pth", "ckpt_best.pth", "average_model.pth"):
        model = torch.load(run_dir / name, weights_only=True)["model"]
        assert model["classes"] == 11 and model["ignore_index"] == 11
        assert model["class_names"] == CAMVID_CLASSES.split(",")
    history = _wandb_run_file(in_tmp_cwd)
    assert b"val/IoU/Bicyclist" in history and b"val/mDCC" in history
