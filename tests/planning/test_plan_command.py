"""`segcli plan` on generated datasets of every kind segcli reads: the decisions, then training without edits."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcli.config.loader import load_experiment_file, resolve_experiment
from tests.data.test_images import four_bands, twelve_bit_grey, write_dataset
from tests.inference.support import run_main
from tests.support import CAMVID_CLASSES, assert_user_error, run_segcli

ODD = (50, 70)  # (height, width): not multiples of 32
IDS = {"road": 7, "sidewalk": 8, "car": 26}


def _rgb(rgb, labels):
    return rgb


def _palette_png(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30, 30, 30, 200] + [0] * 756)
    image.save(path)


def _void_row(labels):
    labels = labels.copy()
    labels[0, :] = 4  # a void label just past the 4 classes, in every mask
    return labels


KINDS = {
    # kind: (writer keyword arguments, --classes or None)
    "grey16": ({"image": twelve_bit_grey, "mask": lambda labels: labels}, None),
    "tiff4": ({"image": four_bands, "mask": lambda labels: labels, "suffix": ".tif"}, None),
    "binary255": ({"image": _rgb, "mask": lambda labels: ((labels > 0) * 255).astype(np.uint8)}, None),
    "idcoded": ({"image": _rgb, "mask": lambda labels: np.array([0, 7, 8, 26], np.uint8)[labels]}, None),
    "void": ({"image": _rgb, "mask": _void_row}, "background,disc,square,triangle"),
    "palette": ({"image": _rgb, "mask": lambda labels: labels}, None),
    "large": ({"image": _rgb, "mask": lambda labels: labels, "size": (1030, 1100), "train": 3, "val": 2}, None),
}


def make_kind(root: Path, kind: str) -> Path:
    writer, _ = KINDS[kind]
    write_dataset(root, **{"size": ODD, "train": 8, "val": 4, **writer})
    if kind == "idcoded":
        for path in root.glob("*/labels/*.png"):  # a few pixels of another id (1) that is not a class
            mask = np.array(Image.open(path))
            mask[-1, :3] = 1
            Image.fromarray(mask).save(path)
        (root / "dataset.json").write_text(json.dumps({"labels": IDS}))
    if kind == "palette":
        for path in root.glob("*/labels/*.png"):
            _palette_png(path, np.array(Image.open(path)))
        (root / "classes.txt").write_text("background\ndisc\nsquare\ntriangle\n")
    return root


def plan_kind(tmp_path: Path, capsys, kind: str) -> tuple[dict, object, Path]:
    root = make_kind(tmp_path / kind, kind)
    path = tmp_path / f"{kind}.yaml"
    classes = KINDS[kind][1]
    args = ["plan", root, "--output", path, "--budget", "2h", "--device", "cpu", "--json"]
    result = run_main(capsys, *args, *(["--classes", classes] if classes else []))
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    experiment = resolve_experiment(load_experiment_file(path), document["experiment"], path)
    return document, experiment, root


def _decision(document: dict, key: str) -> dict:
    return next(d for d in document["decisions"] if d["key"] == key)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_plans_for_every_kind_of_data(tmp_path, capsys, in_tmp_cwd, kind):
    document, exp, _ = plan_kind(tmp_path, capsys, kind)
    for transform in exp.train_transforms:
        if transform.name == "random_crop":
            assert transform.params["height"] % 32 == 0 and transform.params["width"] % 32 == 0
    assert "measured" in _decision(document, "batch_size")["reason"]
    assert 0.8 * document["budget_seconds"] <= document["estimate_seconds"] <= document["budget_seconds"]
    assert exp.max_epochs == document["epochs"]
    expected_channels = {"grey16": 1, "tiff4": 4}.get(kind, 3)
    assert exp.model.in_channels == expected_channels
    assert exp.normalize == "dataset"  # no weights offline; and none fit 1 or 4 bands anyway
    if kind == "grey16":
        assert "12-bit" in _decision(document, "model.in_channels")["reason"]
        assert "random_rotate_90" in [t.name for t in exp.train_transforms]  # microscopy
    if kind == "tiff4":
        assert any("aerial" in note for note in document["notes"])
    if kind == "binary255":
        assert exp.label_map == {255: 1} and exp.model.classes == 2 and exp.ignore_index is None
    if kind == "idcoded":
        assert exp.label_map == {7: 0, 8: 1, 26: 2, 0: 255, 1: 255} and exp.ignore_index == 255
        assert document["class_names"] == list(IDS)
    if kind == "void":
        assert exp.ignore_index == 4 and exp.model.classes == 4 and exp.label_map is None
        assert "just past the 4 classes" in _decision(document, "ignore_index")["reason"]
    if kind == "palette":
        assert document["class_names"] == ["background", "disc", "square", "triangle"] and exp.label_map is None
    if kind == "large":
        assert [t.name for t in exp.val_transforms] == ["center_crop"]
        assert exp.train_transforms[0].name == "random_crop" and exp.train_transforms[0].params["height"] == 256
        assert any("--tile 256" in note for note in document["notes"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_plan_trains_without_edits(tmp_path, capsys, in_tmp_cwd, kind):
    """The printed command, as it is (plus one epoch and an output folder)."""
    document, _, _ = plan_kind(tmp_path, capsys, kind)
    command = shlex.split(document["train_command"])
    assert command[:2] == ["segcli", "train"]
    args = [*command[1:], "--max-epochs", "1", "--cpu", "--output-dir", tmp_path / "runs", "--offline"]
    result = run_main(capsys, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "runs" / "checkpoints").glob("*/ckpt_best.pth"))


def _plan_twice(tmp_path: Path, capsys, in_tmp_cwd: Path, *second: str) -> dict:
    """Class names from CLASS_NAMES; a second plan needs --overwrite; only the plan file is ever written."""
    root = make_kind(tmp_path / "data", "void")
    before = {path for path in tmp_path.rglob("*")}
    result = run_main(capsys, "plan", root, "--budget", "2h", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {path for path in tmp_path.rglob("*")} - before == {in_tmp_cwd / "data.yaml"}
    assert f"segcli train -c data.yaml -e data --dataset {root} --classes {KINDS['void'][1]}" in result.stdout
    rerun = run_main(capsys, "plan", root, "--budget", "2h", "--device", "cpu")
    assert rerun.returncode == 2 and "already exists; pass --overwrite" in rerun.stderr
    replaced = run_main(capsys, "plan", root, "--budget", "3h", "--device", "cpu", "--overwrite", "--json", *second)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert {path for path in tmp_path.rglob("*")} - before == {in_tmp_cwd / "data.yaml"}
    assert "budget 180 min" in (in_tmp_cwd / "data.yaml").read_text()
    return json.loads(replaced.stdout)


def test_the_plan_file_is_all_that_is_written(tmp_path, capsys, in_tmp_cwd, monkeypatch):
    monkeypatch.setenv("CLASS_NAMES", KINDS["void"][1])
    document = _plan_twice(tmp_path, capsys, in_tmp_cwd)
    assert "--lr-test measures it" in _decision(document, "lr")["reason"]


@pytest.mark.slow
def test_the_learning_rate_range_test_writes_nothing_either(tmp_path, capsys, in_tmp_cwd, monkeypatch):
    monkeypatch.setenv("CLASS_NAMES", KINDS["void"][1])
    document = _plan_twice(tmp_path, capsys, in_tmp_cwd, "--lr-test")
    assert "range test" in _decision(document, "lr")["reason"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "soon"], "--budget soon: write a duration"),
        (["--memory", "lots"], "--memory lots: write an amount"),
        (["--budget", "1s"], "shorter than one epoch"),
    ],
)
def test_bad_plan_options_are_one_error_line(tmp_path, in_tmp_cwd, args, message):
    root = make_kind(tmp_path / "data", "binary255")
    assert_user_error(run_segcli("plan", root, "--device", "cpu", *args, cwd=in_tmp_cwd), message)


def test_camvid_mini_plan(camvid_mini, tmp_path, capsys, in_tmp_cwd):
    """The printed table shows every planned value as the file holds it (brackets included)."""
    path = tmp_path / "camvid-mini.yaml"
    result = run_main(capsys, "plan", camvid_mini, "--output", path, "--budget", "10m", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    exp = resolve_experiment(load_experiment_file(path), "camvid-mini", path)
    assert exp.ignore_index == 11 and exp.loss.class_weights == "median_frequency"
    assert "{terms: [cross_entropy, dice], class_weights: median_frequency}" in result.stdout
    # class names from its dataset.json, void dropped
    assert f"-e camvid-mini --dataset {camvid_mini} --classes {CAMVID_CLASSES}\n" in result.stdout
    assert "--folds 5 --fold-groups '^[^_]+'" in result.stdout
    for line in path.read_text().splitlines():
        if "  # " in line and not line.startswith("#"):
            value = line.split("  # ")[0].split(": ", 1)[-1].strip().removeprefix("- ")
            assert value in result.stdout, value
