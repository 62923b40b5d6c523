"""`segcli validate-dataset`, run as a user runs it: tables or --json, exit codes 0/1/2."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import CAMVID_CLASSES, DEMO_CLASSES, SHARED_DATASETS, assert_user_error, heavy_imports, run_segcli

BROKEN = {
    ("mask-without-image", "train", "train_0002.png"),
    ("unreadable-image", "train", "train_0003.png"),
    ("mask-not-single-channel", "val", "val_0001.png"),
    ("mask-values", "train", "train_0005.png"),
}


def validate(dataset: Path, *args, cwd: Path, classes: str | None = DEMO_CLASSES) -> subprocess.CompletedProcess:
    options = ["--classes", classes] if classes is not None else []
    return run_segcli("validate-dataset", "--dataset", dataset, *options, *args, cwd=cwd, timeout=120)


def problem_set(report: dict) -> set[tuple[str, str, str | None]]:
    return {(p["kind"], p["split"], p["file"]) for p in report["problems"]}


@pytest.fixture
def clean_copy(tiny_dataset, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_dataset, tmp_path / "clean"))


@pytest.fixture
def broken_copy(tiny_dataset, tmp_path) -> Path:
    """Four problems: an orphan mask, a truncated PNG image, an RGB mask, a mask holding 255."""
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "broken"))
    (root / "train" / "images" / "train_0002.png").unlink()
    image = root / "train" / "images" / "train_0003.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    rgb = root / "val" / "labels" / "val_0001.png"
    Image.fromarray(np.stack([np.array(Image.open(rgb)) * 60] * 3, axis=-1)).save(rgb)
    with_255 = root / "train" / "labels" / "train_0005.png"
    mask = np.array(Image.open(with_255))
    assert len(np.unique(mask)) > 1  # a normal mask, so 255 is a stray value, not a 0/255 binary mask
    mask[0, :] = 255
    Image.fromarray(mask).save(with_255)
    return root


def test_clean_dataset_is_ok_with_class_frequencies(clean_copy, in_tmp_cwd):
    result = validate(clean_copy, cwd=in_tmp_cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "OK: no errors, 0 warning(s)" in out
    assert "class pixel frequencies" in out
    assert "train: 8 pairs, val: 4 pairs" in out
    assert "train image sizes (WxH): 64x64 x8" in out
    for index, name in enumerate(DEMO_CLASSES.split(",")):
        assert f"│     {index} │ {name} " in out, name
    assert "problems" not in out.replace("class pixel frequencies", "")


def test_broken_dataset_names_every_problem(broken_copy, in_tmp_cwd):
    result = validate(broken_copy, cwd=in_tmp_cwd)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    for kind, split, name in BROKEN:
        assert kind in out, kind
        assert f"{split}/{name}" in out, name
    assert "value 255" in out
    assert "4 error(s) in 4 file(s), 0 warning(s)" in out
    assert "OK:" not in out


def test_broken_dataset_json(broken_copy, in_tmp_cwd):
    result = validate(broken_copy, "--json", cwd=in_tmp_cwd)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["summary"]["by_kind"] == {kind: 1 for kind, _, _ in BROKEN}
    assert report["summary"]["errors"] == 4
    assert report["summary"]["pairs"] == {"train": 7, "val": 4}
    assert problem_set(report) == BROKEN
    for problem in report["problems"]:
        assert {"kind", "split", "file", "detail"} <= problem.keys()
        assert problem["detail"]
    assert report["splits"]["train"]["bad_values"] == {"255": [1, ["train_0005.png"]]}


def test_split_option_checks_only_that_split(broken_copy, in_tmp_cwd):
    result = validate(broken_copy, "--split", "train", "--json", cwd=in_tmp_cwd)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["pairs"] == {"train": 7}
    assert list(report["splits"]) == ["train"]
    assert problem_set(report) == {p for p in BROKEN if p[1] == "train"}  # the RGB val mask is not seen

    only_val = json.loads(validate(broken_copy, "--split", "val", "--json", cwd=in_tmp_cwd).stdout)
    assert problem_set(only_val) == {("mask-not-single-channel", "val", "val_0001.png")}


def test_one_worker_gives_the_same_report(broken_copy, in_tmp_cwd):
    one = validate(broken_copy, "--workers", "1", "--json", cwd=in_tmp_cwd)
    many = validate(broken_copy, "--workers", "4", "--json", cwd=in_tmp_cwd)
    assert one.returncode == many.returncode == 1
    assert json.loads(one.stdout) == json.loads(many.stdout)


def test_ignore_index_row(clean_copy, in_tmp_cwd):
    mask_path = clean_copy / "val" / "labels" / "val_0000.png"
    mask = np.array(Image.open(mask_path))
    mask[:, 0] = 255
    Image.fromarray(mask).save(mask_path)
    assert validate(clean_copy, cwd=in_tmp_cwd).returncode == 1
    result = validate(clean_copy, "--ignore-index", "255", cwd=in_tmp_cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(ignored)" in result.stdout
    report = json.loads(validate(clean_copy, "--ignore-index", "255", "--json", cwd=in_tmp_cwd).stdout)
    assert report["ok"] is True
    assert report["splits"]["val"]["ignored_pixels"] == 64


def _rows(stdout: str) -> list[list[str]]:
    """The cells of every table row (rich's box characters removed)."""
    return [[cell.strip() for cell in line.strip("│┃ ").split("│")] for line in stdout.splitlines() if "│" in line]


def _shares(root: Path, split: str) -> dict[int, float]:
    """numpy only: every stored mask value's share of the split's pixels, in percent."""
    paths = sorted((root / split / "labels").iterdir())
    values = np.concatenate([np.array(Image.open(path)).ravel() for path in paths])
    counts = np.bincount(values)
    return {value: 100 * count / values.size for value, count in enumerate(counts) if count}


def test_a_void_label_is_named_once_with_its_fix_before_the_file_list(clean_copy, in_tmp_cwd):
    """CamVid without --ignore-index: `values 11 outside the classes 0..10` for 8 files, then `... and 462 more`; the
    hint (`--ignore-index 11`) was cut off. The cause and its fix come first, once; the frequencies add up to 100%
    with the unknown value's own row."""
    for path in sorted(clean_copy.glob("*/labels/*.png")):
        mask = np.array(Image.open(path))
        mask[0, :] = 4  # just past classes 0..3 in every mask, as CamVid's void 11
        Image.fromarray(mask).save(path)
    result = validate(clean_copy, cwd=in_tmp_cwd)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert out.count("--ignore-index 4") == 1, out
    first_file = out.index("values 4 outside the classes 0..3")
    assert out.index("looks like a void/unlabelled label") < first_file and "train, val: value 4" in out
    assert "1 error(s) in 12 file(s), 0 warning(s)" in out
    rows = {row[0]: row for row in _rows(out) if len(row) == 4}  # label, class, train, val
    for split, column in (("train", 2), ("val", 3)):
        shares = _shares(clean_copy, split)
        assert rows["4"][1] == "(not a class)" and rows["4"][column] == f"{shares[4]:.2f}%"
        for label in range(4):
            assert rows[str(label)][column] == f"{shares.get(label, 0.0):.2f}%", (split, label)


def test_binary_255_masks_are_one_cause_and_255_is_not_counted_into_a_class(clean_copy, in_tmp_cwd):
    """0/255 masks gave `32 error(s)` for one cause, and the first class 100% (values outside the classes were left
    out of the total)."""
    for path in sorted(clean_copy.glob("*/labels/*.png")):
        Image.fromarray(np.where(np.array(Image.open(path)) > 0, 255, 0).astype(np.uint8)).save(path)
    result = validate(clean_copy, cwd=in_tmp_cwd, classes="background,shape")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert out.count("label_map: {255: 1}") == 1 and "binary-255-masks" not in out
    assert out.index("label_map: {255: 1}") < out.index("values 255 outside the classes 0..1")
    assert "1 error(s) in 12 file(s), 1 warning(s)" in out  # the warning: class 1 never appears in train
    rows = {row[0]: row for row in _rows(out) if len(row) == 4}
    shares = _shares(clean_copy, "train")
    assert rows["0"][2] == f"{shares[0]:.2f}%" != "100.00%" and rows["1"][2] == "0.00%"
    assert rows["255"][1:3] == ["(not a class)", f"{shares[255]:.2f}%"]
    report = json.loads(validate(clean_copy, "--json", cwd=in_tmp_cwd, classes="background,shape").stdout)
    assert report["summary"]["by_kind"] == {"binary-255-masks": 2, "mask-values": 12, "class-never-seen": 1}


def test_class_never_seen_fails_only_with_strict(clean_copy, in_tmp_cwd):
    classes = DEMO_CLASSES + ",hexagon"
    lenient = validate(clean_copy, cwd=in_tmp_cwd, classes=classes)
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "class-never-seen" in lenient.stdout and "hexagon" in lenient.stdout
    assert "OK: no errors, 1 warning(s)" in lenient.stdout

    strict = validate(clean_copy, "--strict", cwd=in_tmp_cwd, classes=classes)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "0 error(s), 1 warning(s)" in strict.stdout

    strict_json = json.loads(validate(clean_copy, "--strict", "--json", cwd=in_tmp_cwd, classes=classes).stdout)
    assert strict_json["ok"] is False
    assert strict_json["summary"]["by_kind"] == {"class-never-seen": 1}


def test_missing_dataset_folder_is_a_user_error(in_tmp_cwd):
    assert_user_error(validate(in_tmp_cwd / "nowhere", cwd=in_tmp_cwd), "nowhere", "does not exist")


def test_no_dataset_at_all_is_a_user_error(in_tmp_cwd):
    result = run_segcli("validate-dataset", "--classes", DEMO_CLASSES, cwd=in_tmp_cwd)
    assert_user_error(result, "no dataset", "DATASET_PATH")


def test_no_classes_is_a_user_error(clean_copy, in_tmp_cwd):
    assert_user_error(validate(clean_copy, cwd=in_tmp_cwd, classes=None), "no class names", "CLASS_NAMES")


def test_env_file_supplies_dataset_and_classes(clean_copy, in_tmp_cwd):
    (in_tmp_cwd / ".env").write_text(f"DATASET_PATH={clean_copy}\nCLASS_NAMES={DEMO_CLASSES},hexagon\n")
    result = run_segcli("validate-dataset", "--json", cwd=in_tmp_cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["root"] == str(clean_copy)
    assert report["class_names"] == [*DEMO_CLASSES.split(","), "hexagon"]
    assert report["summary"]["pairs"] == {"train": 8, "val": 4}

    # options win over .env
    override = validate(clean_copy, "--json", cwd=in_tmp_cwd)
    assert json.loads(override.stdout)["class_names"] == DEMO_CLASSES.split(",")


def test_validate_dataset_does_not_import_torch(clean_copy, in_tmp_cwd):
    argv = ["validate-dataset", "--dataset", clean_copy, "--classes", DEMO_CLASSES, "--json"]
    heavy, code, output = heavy_imports(argv, in_tmp_cwd)
    assert code == 0 and '"ok": true' in output
    assert "torch" not in heavy and "pytorch_lightning" not in heavy


@pytest.mark.slow
def test_camvid(in_tmp_cwd):
    camvid = SHARED_DATASETS / "camvid"
    if not camvid.is_dir():
        pytest.skip("../shared/datasets/camvid is not present")
    result = validate(camvid, "--ignore-index", "11", "--json", cwd=in_tmp_cwd, classes=CAMVID_CLASSES)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["summary"]["pairs"] == {"train": 367, "val": 101}
    assert report["summary"]["errors"] == 0
    train = report["splits"]["train"]
    assert len(train["class_pixels"]) == 11
    assert all(count > 0 for count in train["class_pixels"])
    assert train["ignored_pixels"] > 0
    assert train["bad_values"] == {}


def test_an_experiment_supplies_ignore_index_label_map_and_the_class_count(clean_copy, in_tmp_cwd):
    """README: `validate-dataset -c FILE -e NAME` takes ignore_index, label_map and (without names) the class count."""
    for index, path in enumerate(sorted((clean_copy / "train" / "labels").glob("*.png"))):
        mask = np.array(Image.open(path))
        mask[0, :] = 9  # a void border, as CamVid's 11
        mask[mask == 3] = 7 if index % 2 else 3  # class 3 stored as id 7 in half of the masks
        Image.fromarray(mask).save(path)
    (in_tmp_cwd / "e.yaml").write_text(
        "model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}\n"
        "experiments:\n  void: {ignore_index: 9, label_map: {7: 3}}\n  plain: {}\n"
    )
    plain = validate(clean_copy, "-c", "e.yaml", "-e", "plain", "--json", cwd=in_tmp_cwd, classes=None)
    assert plain.returncode == 1 and json.loads(plain.stdout)["problems"]
    mapped = validate(clean_copy, "-c", "e.yaml", "-e", "void", "--json", cwd=in_tmp_cwd, classes=None)
    assert mapped.returncode == 0, mapped.stdout[-2000:]
    report = json.loads(mapped.stdout)
    assert report["ok"] and report["class_names"] == ["class0", "class1", "class2", "class3"]


def test_make_demo_dataset_writes_a_clean_reproducible_dataset(tmp_path):
    """README: `segcli make-demo-dataset PATH` writes {train,val}/{images,labels} that pass the check, per seed."""
    for name in ("a", "b"):
        made = run_segcli("make-demo-dataset", tmp_path / name, "--train", "3", "--val", "2", "--height", "40",
                          "--width", "48", cwd=tmp_path)  # fmt: skip
        assert made.returncode == 0, made.stderr
    for split, count in (("train", 3), ("val", 2)):
        for kind in ("images", "labels"):
            files = sorted((tmp_path / "a" / split / kind).glob("*.png"))
            assert len(files) == count, (split, kind)
            assert all((tmp_path / "b" / split / kind / f.name).read_bytes() == f.read_bytes() for f in files)
    assert np.array(Image.open(next((tmp_path / "a" / "val" / "images").glob("*.png")))).shape == (40, 48, 3)
    assert validate(tmp_path / "a", cwd=tmp_path).returncode == 0
