"""Every bad input: one clear `error:` message (what, where, how to fix), exit 2, no traceback, nothing created.

The cases run in-process through `segcli.cli.app.main` (the real error boundary) to stay fast.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcli.cli.app import main
from tests.support import DEMO_CLASSES, assert_user_error, fill_the_disk, run_segcli

GOOD_MODEL = "model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}\n"
GOOD_DEFAULTS = "defaults: {batch_size: 2, max_epochs: 1, num_workers: 0}\n"


def experiment_file(experiment: str = "{}", model: str = GOOD_MODEL, defaults: str = GOOD_DEFAULTS) -> str:
    return f"{model}{defaults}experiments:\n  exp: {experiment}\n"


@dataclass
class Case:
    name: str
    fragments: list[str]
    config: str = field(default_factory=experiment_file)
    args: list[str] = field(default_factory=list)
    env_file: str | None = None
    dataset_edit: str | None = None  # a key of DATASET_EDITS
    no_classes: bool = False


def _first(folder: Path) -> Path:
    return sorted(folder.glob("*.png"))[0]


def _corrupt_image(root: Path) -> None:
    _first(root / "train" / "images").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def _mask_value(root: Path) -> None:
    path = _first(root / "train" / "labels")
    mask = np.array(Image.open(path))
    mask[0, :5] = 7
    Image.fromarray(mask).save(path)


def _size_mismatch(root: Path) -> None:
    path = _first(root / "val" / "labels")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(path)


def _no_layout(root: Path) -> None:
    shutil.rmtree(root / "val")
    shutil.rmtree(root / "train")
    (root / "images").mkdir()


DATASET_EDITS = {
    "corrupt": _corrupt_image,
    "mask_value": _mask_value,
    "size": _size_mismatch,
    "layout": _no_layout,
}

CASES = [
    Case("yaml syntax", ["tiny.yaml:4", "invalid YAML"], config="model: {arch: unet}\nexperiments:\n  exp: [\n"),
    Case("empty file", ["tiny.yaml", "file is empty"], config=""),
    Case("top level not a mapping", ["top level must be a mapping", "list"], config="- model\n- experiments\n"),
    Case("unknown top-level key", ["unknown key 'modle'", "'model'"], config="modle: {}\n" + experiment_file()),
    Case(
        "unknown key in defaults",
        ["defaults.batch_sise", "did you mean 'batch_size'"],
        config=experiment_file(defaults="defaults: {batch_sise: 2}\n"),
    ),
    Case(
        "experiment overrides an unknown key",
        ["experiments.exp.lerning_rate", "unknown key"],
        config=experiment_file("{lerning_rate: 0.1}"),
    ),
    Case(
        "wrong type",
        ["experiments.exp.batch_size", "integer"],
        config=experiment_file("{batch_size: big}"),
    ),
    Case("zero batch size", ["batch_size", "greater than 0"], config=experiment_file("{batch_size: 0}")),
    Case("negative lr", ["experiments.exp.lr", "greater than 0"], config=experiment_file("{lr: -0.1}")),
    Case("unknown experiment", ["no experiment 'ex'", "did you mean 'exp'"], args=["-e", "ex"]),
    Case(
        "unknown arch",
        ["model.arch", "unknown architecture 'unet3'", "'unet'"],
        config=experiment_file(model="model: {arch: unet3, encoder_weights: null, classes: 4}\n"),
    ),
    Case(
        "unknown encoder",
        ["model.encoder_name", "'resnet19'", "resnet18"],
        config=experiment_file(model=GOOD_MODEL.replace("resnet18", "resnet19")),
    ),
    Case(
        "unknown encoder weights",
        ["model.encoder_weights", "'imagenet22k'", "encoder_weights: null"],
        config=experiment_file(model=GOOD_MODEL.replace("null", "imagenet22k")),
    ),
    Case(
        "unknown transform",
        ["train_transforms[0].name", "'horizontal_flipp'", "horizontal_flip"],
        config=experiment_file("{train_transforms: [{name: horizontal_flipp}]}"),
    ),
    Case(
        "bad transform params",
        ["train_transforms[1].params", "resize has no parameter 'widht'", "did you mean 'width'"],
        config=experiment_file(
            experiment="{train_transforms: [{name: horizontal_flip}, {name: resize, params: {height: 64, widht: 64}}]}"
        ),
    ),
    Case(
        "bad transform value",
        ["val_transforms[0].params", "invalid parameters for horizontal_flip"],
        config=experiment_file("{val_transforms: [{name: horizontal_flip, params: {p: 3}}]}"),
    ),
    Case(
        "unknown optimizer",
        ["optimizer.name", "'Adamw'", "AdamW"],
        config=experiment_file("{optimizer: {name: Adamw}}"),
    ),
    Case(
        "bad optimizer params",
        ["optimizer.params", "no parameter 'momentun'", "momentum"],
        config=experiment_file("{optimizer: {name: SGD, params: {momentun: 0.9}}}"),
    ),
    Case(
        "unknown scheduler",
        ["scheduler.name", "'CosineLR'"],
        config=experiment_file("{scheduler: {name: CosineLR}}"),
    ),
    Case(
        "bad scheduler params",
        ["scheduler.params", "CosineAnnealingLR has no parameter 't_max'", "T_max"],
        config=experiment_file("{scheduler: {name: CosineAnnealingLR, params: {t_max: 10}}}"),
    ),
    Case(
        "early stopping monitor never logged",
        ["early_stopping.monitor", "'val/iou' is never logged"],
        config=experiment_file("{early_stopping: {monitor: val/iou}}"),
    ),
    Case(
        "a name that is code never runs",
        ["optimizer.name: unknown optimizer"],
        config=experiment_file("{optimizer: {name: \"__import__('os').system('touch pwned')\"}}"),
    ),
    Case("classes differ from CLASS_NAMES", ["model.classes is 4", "lists 3 names"], args=["--classes", "a,b,c"]),
    Case("missing CLASS_NAMES", ["no class names", "CLASS_NAMES"], no_classes=True),
    Case("empty CLASS_NAMES", ["CLASS_NAMES is empty"], no_classes=True, env_file="CLASS_NAMES=\n"),
    Case("missing DATASET_PATH folder", ["nowhere does not exist", "DATASET_PATH"], args=["--dataset", "nowhere"]),
    Case("dataset without the layout", ["missing-split", "train"], dataset_edit="layout"),
    Case("corrupt image", ["unreadable-image", "train_0000.png"], dataset_edit="corrupt"),
    Case("mask value out of range", ["mask-values", "values 7 outside the classes 0..3"], dataset_edit="mask_value"),
    Case("image/mask size mismatch", ["size-mismatch", "val_0000.png"], dataset_edit="size"),
    Case(
        "transforms that give a batch images of several sizes",  # any one size works: batches are padded
        ["train_transforms produce images of different sizes", "add a resize or crop"],
        config=experiment_file("{train_transforms: [{name: random_scale, params: {scale_limit: 0.5, p: 1.0}}]}"),
    ),
    Case("output directory not writable", ["not writable", "--output-dir"], args=["--output-dir", "afile/out"]),
    Case("malformed .env line", [".env:2", "KEY=VALUE"], env_file="WANDB_PROJECT=x\nthis line is wrong\n"),
    Case("resume without a state", ["no training state", "without --resume"], args=["--resume"]),
    Case(
        "resume from a file that is not a state",
        ["not a segcli training state", "segcli never loads pickled code"],
        args=["--resume-from", "afile"],
    ),
    Case(
        "resume from another architecture",
        ["was trained with model", "same model block"],
        args=["--resume-from", "fpn_state.ckpt"],
    ),
    Case(
        "normalize in one transform list",  # the val pipeline would have normalised differently
        ["train_transforms[0]: normalisation", "experiment key `normalize:`"],
        config=experiment_file("{train_transforms: [{name: normalize, params: {mean: 0.5, std: 0.2}}]}"),
    ),
    Case(
        "three normalisation values for a one-channel model",
        ["normalize.mean has 3 values but model.in_channels is 1"],
        config=experiment_file(
            model="model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4, in_channels: 1}\n",
            experiment="{normalize: {mean: [0.4, 0.4, 0.4], std: [0.2, 0.2, 0.2]}}",
        ),
    ),
    Case(
        "in_channels that the images do not have",  # crashed mid-sanity-check with a traceback
        ["model.in_channels is 4", "have 3 channel(s)", "`model.in_channels: 3`"],
        config=experiment_file(
            model="model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4, in_channels: 4}\n",
            experiment="{normalize: dataset}",
        ),
    ),
    Case(
        "val_ema monitor without ema",
        ["monitor.metric", "val_ema/* needs `ema:`"],
        config=experiment_file("{monitor: val_ema/mIoU}"),
    ),
    Case(
        "crop larger than the images",
        ["train_transforms", "(128, 128) vs (64, 64)", "crop no larger than the images", "pad_if_needed"],
        config=experiment_file("{train_transforms: [{name: random_crop, params: {height: 128, width: 128}}]}"),
    ),
    Case(
        "ReduceLROnPlateau stepped per batch",
        ["scheduler.interval", "interval: epoch"],
        config=experiment_file("{scheduler: {name: ReduceLROnPlateau, interval: step}}"),
    ),
]
if not torch.cuda.is_available():
    CASES.append(Case("gpu that does not exist", ["gpu: 3", "no CUDA GPU", "--cpu"], experiment_file("{gpu: 3}")))


@pytest.fixture
def restore_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    sys.argv = ["segcli", *argv]
    with pytest.raises(SystemExit) as stopped:
        main()
    out, err = capsys.readouterr()
    return stopped.value.code, out, err


def test_at_least_25_bad_inputs():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_input(case: Case, tiny_dataset, in_tmp_cwd, restore_environ, capsys, monkeypatch):
    dataset = in_tmp_cwd / "data"
    shutil.copytree(tiny_dataset, dataset)
    if case.dataset_edit:
        DATASET_EDITS[case.dataset_edit](dataset)
    (in_tmp_cwd / "tiny.yaml").write_text(case.config)
    (in_tmp_cwd / "afile").write_text("not a folder, not a checkpoint")
    fpn = {"experiment": {"model": {"arch": "FPN", "encoder_weights": None, "classes": 4}}}
    torch.save({"hyper_parameters": fpn}, in_tmp_cwd / "fpn_state.ckpt")
    if case.env_file is not None:
        (in_tmp_cwd / ".env").write_text(case.env_file)
    argv = ["train", "-c", "tiny.yaml", "-e", "exp", "--dataset", str(dataset), "--output-dir", "out"]
    if not case.no_classes:
        argv += ["--classes", DEMO_CLASSES]
    argv += case.args  # later options win in Typer, so a case can replace a default
    before = sorted(p.relative_to(in_tmp_cwd) for p in in_tmp_cwd.rglob("*"))

    code, out, err = _run_main(argv, capsys)

    assert code == 2, (code, out[-2000:], err[-2000:])
    assert err.startswith("error: ") and "Traceback" not in err + out
    for fragment in case.fragments:
        assert fragment in err, (fragment, err)
    after = sorted(p.relative_to(in_tmp_cwd) for p in in_tmp_cwd.rglob("*"))
    assert after == before, "a bad input created or removed files"


def test_disk_full_while_saving_is_clear_and_writes_no_checkpoint(
    tiny_dataset, in_tmp_cwd, restore_environ, capsys, monkeypatch
):
    fill_the_disk(monkeypatch, room=100_000)  # the first checkpoint (~57 MB) does not fit
    (in_tmp_cwd / "tiny.yaml").write_text(experiment_file())
    argv = ["train", "-c", "tiny.yaml", "-e", "exp", "--dataset", str(tiny_dataset), "--classes", DEMO_CLASSES]
    code, out, err = _run_main([*argv, "--output-dir", "out"], capsys)
    assert code == 2, err[-2000:]
    assert "error: disk full while writing" in err and "--resume" in err
    assert not list((in_tmp_cwd / "out" / "checkpoints").rglob("*.pth"))


def test_a_run_whose_first_state_did_not_fit_points_to_overwrite(
    tiny_dataset, in_tmp_cwd, restore_environ, capsys, monkeypatch
):
    """The weights fit, the training state did not: with no state to continue from, `--resume` and a plain
    re-run both point to --overwrite (they used to send the user from one to the other)."""
    (in_tmp_cwd / "tiny.yaml").write_text(experiment_file())
    argv = ["train", "-c", "tiny.yaml", "-e", "exp", "--dataset", str(tiny_dataset), "--classes", DEMO_CLASSES]
    with monkeypatch.context() as full:
        fill_the_disk(full, room=100_000_000)  # ckpt_latest.pth (~57 MB) fits, state_latest.ckpt does not
        code, out, err = _run_main([*argv, "--output-dir", "out"], capsys)
    assert code == 2 and "error: disk full while writing" in err and "state_latest.ckpt" in err, err[-2000:]
    assert list((in_tmp_cwd / "out" / "checkpoints").rglob("ckpt_latest.pth"))
    for extra in (["--resume"], []):
        code, out, err = _run_main([*argv, "--output-dir", "out", *extra], capsys)
        assert code == 2 and "--overwrite" in err and "continue it with --resume" not in err, err
        assert "start the run without --resume" not in err, err


def test_make_demo_dataset_into_a_folder_it_cannot_create(in_tmp_cwd, capsys):
    (in_tmp_cwd / "afile").write_text("x")
    code, out, err = _run_main(["make-demo-dataset", "afile/demo", "--train", "1", "--val", "1"], capsys)
    assert code == 2 and err.startswith("error: cannot create afile/demo/train/images") and "writable PATH" in err, err
    assert "Traceback" not in err and out == ""


def test_unreachable_weights_fail_within_seconds(tiny_dataset, in_tmp_cwd):
    """No HF_HUB_OFFLINE here: segcli itself must notice there is no network instead of retrying for ~25 s."""
    (in_tmp_cwd / "w.yaml").write_text(
        experiment_file(model="model: {arch: unet, encoder_name: resnet18, encoder_weights: imagenet, classes: 4}\n")
    )
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(in_tmp_cwd / "hf")  # an empty cache
    argv = ["train", "-c", "w.yaml", "-e", "exp", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES]

    def timed(environment: dict):
        started = time.monotonic()
        result = run_segcli(*argv, cwd=in_tmp_cwd, env=environment, replace_env=True)
        return result, time.monotonic() - started

    result, seconds = timed(env)
    if result.returncode == 0:
        pytest.skip("this machine can download the weights")
    assert_user_error(result, "model.encoder_weights", "encoder_weights: null")
    # Against the same failure with the cache alone from the start (start-up is 10 s on a slow machine): the
    # connection test may add its 3 s, huggingface_hub's retries would add about 25 s.
    offline, floor = timed({**env, "HF_HUB_OFFLINE": "1"})
    assert_user_error(offline, "model.encoder_weights", "encoder_weights: null")
    assert seconds - floor < 10, (seconds, floor)
