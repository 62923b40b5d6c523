"""The dataset check (`check_dataset`, `check_dataset_cached`, `DatasetReport`) on small generated datasets."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segcli.data.checks import WARNING, DatasetReport, check_dataset, check_dataset_cached
from segcli.data.synthetic import make_dataset

CLASSES = ["background", "disc", "square", "triangle"]
SPLITS = ("train", "val")


def small_dataset(tmp_path: Path, train: int = 3, val: int = 2, seed: int = 0) -> Path:
    """train_0000..  / val_0000.. pairs of 32x32 RGB images and 4-class masks."""
    return make_dataset(tmp_path / "dataset", train=train, val=val, size=(32, 32), seed=seed)


def check(root: Path, classes=CLASSES, splits=SPLITS, **kwargs) -> DatasetReport:
    kwargs.setdefault("workers", 1)
    return check_dataset(root, splits, list(classes), **kwargs)


def errors(report: DatasetReport) -> set[tuple[str, str, str | None]]:
    return {(p.kind, p.split, p.file) for p in report.errors}


def only(report: DatasetReport, kind: str):
    """The single problem of that kind."""
    found = [p for p in report.problems if p.kind == kind]
    assert len(found) == 1, (kind, report.problems)
    return found[0]


def read_mask(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- clean data and exact statistics ---------------------------------------------------------


def test_clean_dataset_has_no_problems(tiny_dataset):
    report = check(tiny_dataset)
    assert report.problems == []
    assert report.errors == [] and report.warnings == []
    assert {split: stats.pairs for split, stats in report.splits.items()} == {"train": 8, "val": 4}
    assert sum(report.splits["train"].class_pixels) == 8 * 64 * 64
    assert sum(report.splits["val"].class_pixels) == 4 * 64 * 64
    assert report.splits["train"].image_sizes == Counter({(64, 64): 8})
    assert report.splits["train"].channels == Counter({3: 8})
    assert report.splits["train"].ignored_pixels == 0
    assert report.from_cache is False


def test_class_pixels_and_image_sizes_are_exact(tmp_path):
    root = tmp_path / "hand"
    for split in SPLITS:
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
    # train: two 4x6 (height x width) images; first: 4 ones, 6 twos, 14 zeros; second: 4 ones, 20 zeros
    first = np.zeros((4, 6), np.uint8)
    first[0, :4] = 1
    first[1:, 5] = 2
    first[3, :3] = 2
    second = np.zeros((4, 6), np.uint8)
    second[2, 1:5] = 1
    for name, mask in (("a.png", first), ("b.png", second)):
        write_png(root / "train" / "images" / name, np.full((4, 6, 3), 90, np.uint8))
        write_png(root / "train" / "labels" / name, mask)
    # val: one 5 (high) x 3 (wide) image, all class 2
    write_png(root / "val" / "images" / "c.png", np.full((5, 3, 3), 90, np.uint8))
    write_png(root / "val" / "labels" / "c.png", np.full((5, 3), 2, np.uint8))

    report = check(root, classes=["zero", "one", "two"])
    assert report.problems == []
    train, val = report.splits["train"], report.splits["val"]
    assert train.class_pixels == [14 + 20, 4 + 4, 6]
    assert val.class_pixels == [0, 0, 15]
    assert train.image_sizes == Counter({(4, 6): 2})
    assert val.image_sizes == Counter({(5, 3): 1})
    assert (train.pairs, val.pairs) == (2, 1)


def test_progress_callbacks_see_every_pair(tmp_path):
    root = small_dataset(tmp_path, train=3, val=2)
    totals, pairs = [], []
    check(root, on_total=totals.append, on_pair=lambda: pairs.append(1))
    assert totals == [5]
    assert len(pairs) == 5


# --- one test per problem kind ---------------------------------------------------------------


def test_image_without_mask(tmp_path):
    root = small_dataset(tmp_path)
    (root / "train" / "labels" / "train_0001.png").unlink()
    report = check(root)
    assert errors(report) == {("image-without-mask", "train", "train_0001.png")}
    assert "labels/train_0001" in only(report, "image-without-mask").detail
    assert report.splits["train"].pairs == 2


def test_mask_without_image(tmp_path):
    root = small_dataset(tmp_path)
    (root / "val" / "images" / "val_0000.png").unlink()
    report = check(root)
    assert errors(report) == {("mask-without-image", "val", "val_0000.png")}
    assert report.splits["val"].pairs == 1


def test_missing_val_folder(tmp_path):
    root = small_dataset(tmp_path)
    shutil.rmtree(root / "val")
    report = check(root)
    assert errors(report) == {("missing-split", "val", None)}
    assert str(root / "val") in only(report, "missing-split").detail
    assert report.splits["val"].pairs == 0
    assert report.splits["train"].pairs == 3


def test_missing_labels_folder_is_one_problem_not_one_per_image(tmp_path):
    root = small_dataset(tmp_path)
    shutil.rmtree(root / "train" / "labels")
    report = check(root)
    assert errors(report) == {("missing-split", "train", None)}
    assert str(root / "train" / "labels") in only(report, "missing-split").detail


def test_a_labels_folder_under_another_name_is_named_with_the_rename(tmp_path):
    root = small_dataset(tmp_path)
    (root / "train" / "labels").rename(root / "train" / "masks")
    report = check(root)
    assert errors(report) == {("missing-split", "train", None)}
    assert "found masks/: rename the one holding the labels to labels/" in only(report, "missing-split").detail


def test_empty_split(tmp_path):
    root = small_dataset(tmp_path)
    for kind in ("images", "labels"):
        shutil.rmtree(root / "val" / kind)
        (root / "val" / kind).mkdir()
    report = check(root)
    assert errors(report) == {("empty-split", "val", None)}
    assert report.splits["val"].pairs == 0


def test_a_stray_file_is_a_warning_not_an_error(tmp_path):
    """A notes.txt in images/ must not block training."""
    root = small_dataset(tmp_path)
    (root / "train" / "images" / "notes.txt").write_text("collected in 2021\n")
    report = check(root)
    assert report.errors == []
    assert only(report, "not-an-image").severity == WARNING and report.splits["train"].pairs == 3


def test_nested_folders_are_reported_not_ignored_silently(tmp_path):
    root = small_dataset(tmp_path)
    (root / "train" / "images" / "more").mkdir()
    shutil.copy(root / "train" / "images" / "train_0000.png", root / "train" / "images" / "more" / "x.png")
    problem = only(check(root), "nested-folders")
    assert problem.severity == WARNING and "more/" in problem.detail and "not read" in problem.detail


def test_jpeg_masks_are_named_as_the_cause(tmp_path):
    root = small_dataset(tmp_path)
    png = root / "train" / "labels" / "train_0001.png"
    cv2.imwrite(str(png.with_suffix(".jpg")), read_mask(png) * 60, [cv2.IMWRITE_JPEG_QUALITY, 50])
    png.unlink()
    report = check(root)
    assert "save masks as PNG" in only(report, "jpeg-masks").detail
    assert "a JPEG mask" in only(report, "mask-values").detail


def test_a_value_just_past_the_classes_in_every_mask_is_named_as_a_void_label(tmp_path):
    """CamVid without --ignore-index: 468 errors and no hint, before."""
    root = small_dataset(tmp_path)
    for path in (root / "train" / "labels").glob("*.png"):
        mask = read_mask(path)
        mask[0, :4] = 4  # just past classes 0..3
        write_png(path, mask)
    report = check(root)
    hint = [p for p in report.errors if p.kind == "mask-values" and p.file is None]
    assert len(hint) == 1 and "looks like a void/unlabelled label" in hint[0].detail
    assert "`--ignore-index 4`" in hint[0].detail and "`ignore_index: 4`" in hint[0].detail


@pytest.mark.parametrize("damage", ["truncated", "random-bytes"])
def test_unreadable_image(tmp_path, damage):
    root = small_dataset(tmp_path)
    image = root / "train" / "images" / "train_0001.png"
    if damage == "truncated":
        truncate(image)
    else:
        image.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    report = check(root)
    assert errors(report) == {("unreadable-image", "train", "train_0001.png")}
    assert report.splits["train"].image_sizes == Counter({(32, 32): 2})  # the unreadable one is not counted


def test_unreadable_mask(tmp_path):
    root = small_dataset(tmp_path)
    truncate(root / "val" / "labels" / "val_0001.png")
    report = check(root)
    assert errors(report) == {("unreadable-mask", "val", "val_0001.png")}
    assert only(report, "unreadable-mask").detail.startswith("cannot decode the mask")


def test_size_mismatch(tmp_path):
    root = small_dataset(tmp_path)
    write_png(root / "train" / "labels" / "train_0002.png", np.zeros((16, 32), np.uint8))
    report = check(root)
    assert errors(report) == {("size-mismatch", "train", "train_0002.png")}
    assert only(report, "size-mismatch").detail == "image is 32x32 but mask is 32x16 (WxH)"


def test_rgb_mask_is_not_single_channel(tmp_path):
    root = small_dataset(tmp_path)
    path = root / "val" / "labels" / "val_0000.png"
    Image.fromarray(np.stack([read_mask(path) * 60] * 3, axis=-1)).save(path)
    report = check(root)
    assert errors(report) == {("mask-not-single-channel", "val", "val_0000.png")}
    detail = only(report, "mask-not-single-channel").detail
    assert "3 channels" in detail and "colour-coded" in detail


def test_palette_masks_are_read_as_indices(tmp_path):
    root = small_dataset(tmp_path)
    before = check(root)
    for path in sorted((root / "train" / "labels").iterdir()):
        indices = read_mask(path)
        mask = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
        mask.putpalette([0, 0, 0, 220, 60, 60, 60, 200, 80, 70, 90, 230])
        mask.save(path)
        assert Image.open(path).mode == "P"
    after = check(root)
    assert errors(after) == set()
    assert after.splits["train"].class_pixels == before.splits["train"].class_pixels


def test_mask_values_outside_the_classes(tmp_path):
    root = small_dataset(tmp_path)
    for name in ("train_0000.png", "train_0002.png"):
        path = root / "train" / "labels" / name
        mask = read_mask(path)
        mask[:3, :3] = 7
        write_png(path, mask)
    report = check(root)
    assert errors(report) == {
        ("mask-values", "train", "train_0000.png"),
        ("mask-values", "train", "train_0002.png"),
    }
    assert all(p.detail == "values 7 outside the classes 0..3" for p in report.errors)
    assert report.splits["train"].bad_values == {7: [2, ["train_0000.png", "train_0002.png"]]}
    assert report.splits["val"].bad_values == {}


def binary_dataset(tmp_path: Path) -> Path:
    """Two classes, masks saved as 0/255 like binary masks from an image editor."""
    root = small_dataset(tmp_path)
    for path in (root / "train" / "labels").iterdir():
        write_png(path, np.where(read_mask(path) > 0, 255, 0).astype(np.uint8))
    return root


def test_binary_255_masks_suggest_dividing_by_255(tmp_path):
    root = binary_dataset(tmp_path)
    report = check(root, classes=["background", "shape"], splits=["train"])
    problem = only(report, "binary-255-masks")
    assert (problem.split, problem.file) == ("train", None)
    assert "0/255 values like saved binary masks" in problem.detail and "`label_map: {255: 1}`" in problem.detail
    assert report.splits["train"].binary_255_masks == 3
    assert {p.kind for p in report.errors} == {"binary-255-masks", "mask-values"}


def test_some_255_pixels_in_a_normal_mask_are_mask_values_not_binary(tmp_path):
    root = small_dataset(tmp_path)
    path = root / "train" / "labels" / "train_0001.png"
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 1
    mask[20:24, 20:24] = 2
    mask[0, :] = 255
    write_png(path, mask)
    report = check(root)
    assert errors(report) == {("mask-values", "train", "train_0001.png")}
    assert "binary-255-masks" not in {p.kind for p in report.problems}
    assert report.splits["train"].binary_255_masks == 0
    assert report.splits["train"].bad_values == {255: [1, ["train_0001.png"]]}


def test_ignore_index_255_is_counted_not_reported(tmp_path):
    root = small_dataset(tmp_path)
    for name in ("train_0000.png", "train_0001.png"):
        path = root / "train" / "labels" / name
        mask = read_mask(path)
        mask[0, :] = 255  # 32 pixels each
        mask[1:, 0] = 255  # 31 more
        write_png(path, mask)
    plain = check(root)
    assert {p.kind for p in plain.errors} == {"mask-values"}

    report = check(root, ignore_index=255)
    assert report.errors == []
    assert report.splits["train"].ignored_pixels == 2 * 63
    assert report.splits["val"].ignored_pixels == 0
    assert sum(report.splits["train"].class_pixels) == 3 * 32 * 32 - 2 * 63
    assert report.splits["train"].bad_values == {}


def test_binary_masks_with_ignore_index_255_are_not_binary_255(tmp_path):
    root = binary_dataset(tmp_path)
    report = check(root, classes=["background", "shape"], splits=["train"], ignore_index=255)
    assert "binary-255-masks" not in {p.kind for p in report.problems}
    assert "mask-values" not in {p.kind for p in report.problems}


def test_channel_mismatch_names_the_odd_file(tmp_path):
    root = small_dataset(tmp_path)
    path = root / "train" / "images" / "train_0001.png"
    cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    report = check(root)
    problem = only(report, "channel-mismatch")
    assert (problem.split, problem.file) == ("train", None)
    assert "train_0001.png" in problem.detail
    assert "1 image(s) have 1 channel(s) while 2 have 3" in problem.detail
    assert report.splits["train"].channels == Counter({3: 2, 1: 1})
    assert errors(report) == {("channel-mismatch", "train", None)}


def test_class_never_seen_is_a_warning(tiny_dataset):
    report = check(tiny_dataset, classes=[*CLASSES, "hexagon"])
    assert report.errors == []
    problem = only(report, "class-never-seen")
    assert problem.severity == WARNING
    assert (problem.split, problem.file) == ("train", None)
    assert "hexagon" in problem.detail and "4" in problem.detail
    assert report.warnings == [problem]


def test_every_problem_is_reported_in_one_call(tmp_path):
    root = small_dataset(tmp_path, train=6, val=3)
    (root / "train" / "images" / "train_0000.png").unlink()  # orphan mask
    truncate(root / "train" / "images" / "train_0001.png")
    mask = read_mask(root / "train" / "labels" / "train_0002.png")
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(root / "train" / "labels" / "train_0002.png")
    mask = read_mask(root / "train" / "labels" / "train_0003.png")
    mask[0, 0] = 9
    write_png(root / "train" / "labels" / "train_0003.png", mask)
    write_png(root / "val" / "labels" / "val_0000.png", np.zeros((8, 8), np.uint8))
    truncate(root / "val" / "labels" / "val_0001.png")
    (root / "val" / "labels" / "extra.txt").write_text("x")
    report = check(root)
    assert errors(report) == {
        ("mask-without-image", "train", "train_0000.png"),
        ("unreadable-image", "train", "train_0001.png"),
        ("mask-not-single-channel", "train", "train_0002.png"),
        ("mask-values", "train", "train_0003.png"),
        ("size-mismatch", "val", "val_0000.png"),
        ("unreadable-mask", "val", "val_0001.png"),
    }
    assert {(p.kind, p.file) for p in report.warnings} >= {("not-an-image", "extra.txt")}


# --- determinism, serialisation, cache ------------------------------------------------------


@pytest.fixture
def messy_dataset(tmp_path) -> Path:
    root = small_dataset(tmp_path, train=10, val=4, seed=3)
    (root / "train" / "labels" / "train_0004.png").unlink()
    truncate(root / "train" / "images" / "train_0005.png")
    for name in ("train_0006.png", "train_0008.png"):
        mask = read_mask(root / "train" / "labels" / name)
        mask[5, :] = 200
        write_png(root / "train" / "labels" / name, mask)
    path = root / "val" / "images" / "val_0002.png"
    cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    return root


def test_same_report_with_one_or_three_workers(messy_dataset):
    one = check(messy_dataset, workers=1)
    three = check(messy_dataset, workers=3)
    assert len(one.problems) >= 5
    assert one.problems == three.problems
    assert one.splits == three.splits
    assert one.to_dict() == three.to_dict()


def test_to_dict_json_round_trip(messy_dataset):
    report = check(messy_dataset, ignore_index=255)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["summary"]["by_kind"] == {
        "channel-mismatch": 1,
        "image-without-mask": 1,
        "mask-values": 2,
        "unreadable-image": 1,
    }
    assert data["summary"]["pairs"] == {"train": 9, "val": 4}
    again = DatasetReport.from_dict(data)
    assert again.problems == report.problems
    assert again.splits == report.splits
    assert again.splits["train"].bad_values == {200: [2, ["train_0006.png", "train_0008.png"]]}
    assert (again.root, again.class_names, again.ignore_index) == (messy_dataset, CLASSES, 255)
    assert again == report


def test_cached_check_is_reused_until_a_file_changes(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEGCLI_CACHE_DIR", str(cache))
    root = small_dataset(tmp_path)

    first = check_dataset_cached(root, SPLITS, CLASSES, workers=1)
    assert first.from_cache is False
    assert len(list(cache.glob("*.json"))) == 1

    second = check_dataset_cached(root, SPLITS, CLASSES, workers=1)
    assert second.from_cache is True
    assert second.problems == first.problems
    assert second.splits == first.splits

    other_classes = check_dataset_cached(root, SPLITS, [*CLASSES, "hexagon"], workers=1)
    assert other_classes.from_cache is False
    assert "class-never-seen" in {p.kind for p in other_classes.problems}

    touched = root / "train" / "images" / "train_0000.png"  # same bytes, newer mtime: checked again
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert check_dataset_cached(root, SPLITS, CLASSES, workers=1).from_cache is False
    assert check_dataset_cached(root, SPLITS, CLASSES, workers=1).from_cache is True

    path = root / "val" / "labels" / "val_0001.png"
    old = path.stat()
    mask = read_mask(path)
    mask[:4, :4] = 7
    write_png(path, mask)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 5_000_000_000))
    assert path.stat().st_mtime_ns != old.st_mtime_ns

    third = check_dataset_cached(root, SPLITS, CLASSES, workers=1)
    assert third.from_cache is False
    assert ("mask-values", "val", "val_0001.png") in errors(third)
    assert ("mask-values", "val", "val_0001.png") not in errors(first)
    assert check_dataset_cached(root, SPLITS, CLASSES, workers=1).from_cache is True


# --- bugs -----------------------------------------------------------------------------------


def test_a_notes_file_sharing_a_stem_does_not_hide_the_image(tmp_path):
    root = small_dataset(tmp_path)
    (root / "train" / "images" / "train_0000.txt").write_text("photographed at noon\n")
    report = check(root)
    assert report.errors == [] and only(report, "not-an-image").file == "train_0000.txt"
    assert report.splits["train"].pairs == 3


def test_truncated_jpeg_image_is_unreadable(tmp_path):
    root = small_dataset(tmp_path)
    png = root / "train" / "images" / "train_0001.png"
    jpg = png.with_suffix(".jpg")
    cv2.imwrite(str(jpg), cv2.imread(str(png)))
    png.unlink()
    truncate(jpg)
    report = check(root)
    assert errors(report) == {("unreadable-image", "train", "train_0001.jpg")}
