"""Region-of-interest masks (<split>/roi/): outside them nothing is trained on, checked, scored or drawn as a class."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcli.artifacts.model_info import Normalization
from segcli.config.schema import Experiment
from segcli.data.dataset import SegmentationDataset
from segcli.data.io import Pair, list_pairs, read_pair
from segcli.data.transforms import build_pipeline
from segcli.drawing.colours import IGNORED_COLOUR
from segcli.drawing.pictures import HEADER, MARGIN, TILE_HEIGHT
from segcli.models.losses import build_loss
from tests.support import DEMO_CLASSES, run_segcli

MODEL = {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 4}


def disc_roi(size: tuple[int, int], inside: int = 255) -> np.ndarray:
    """A centred disc of `inside`, 0 elsewhere (a retina's field of view)."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    radius = min(size) * 0.4
    return np.where((yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2 < radius**2, inside, 0).astype(np.uint8)


def add_roi(root: Path, outside_label: int | None = None, inside: int = 255) -> Path:
    """A roi/ beside images/ and labels/ in every split; `outside_label`: also overwrite the labels outside it."""
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        (split_dir / "roi").mkdir(exist_ok=True)
        for label_path in sorted((split_dir / "labels").glob("*.png")):
            label = np.array(Image.open(label_path))
            roi = disc_roi(label.shape, inside)
            Image.fromarray(roi).save(split_dir / "roi" / label_path.name)
            if outside_label is not None:
                label[roi == 0] = outside_label
                Image.fromarray(label).save(label_path)
    return root


@pytest.fixture
def two_outsides(tiny_dataset, tmp_path) -> tuple[Path, Path]:
    """The tiny dataset with a roi/, labels outside it set to class 3 in one copy and to 200 (no class) in the other."""
    return (add_roi(Path(shutil.copytree(tiny_dataset, tmp_path / "three")), 3),
            add_roi(Path(shutil.copytree(tiny_dataset, tmp_path / "garbage")), 200))  # fmt: skip


def test_pairs_carry_their_region_mask_and_read_it_as_never_scored_outside(two_outsides):
    three, garbage = two_outsides
    pairs = list_pairs(three, "train")
    assert all(pair.roi == three / "train" / "roi" / pair.image.name for pair in pairs)
    image, mask = read_pair(pairs[0], 3, None, never_scored=255)
    roi = disc_roi(mask.shape)
    assert (mask[roi == 0] == 255).all() and (mask[roi != 0] < 4).all()
    _, wide = read_pair(pairs[0], 3, None, never_scored=65535)  # beyond 255 classes: a uint8 mask cannot hold it
    assert wide.dtype == np.uint16 and (wide[roi == 0] == 65535).all()
    assert np.array_equal(read_pair(list_pairs(garbage, "train")[0], 3, None, 255)[1], mask)
    assert list_pairs(three, "train", roi=three / "val" / "roi")[0].roi is None  # another folder: its own stems


@pytest.mark.parametrize("cache", [False, True])
def test_the_loss_is_the_same_whatever_labels_are_stored_outside_the_region(two_outsides, cache):
    """The training loss of one batch from each copy: equal with roi/, different once roi/ is gone (so the test
    can tell). Through the RAM cache too, which reads the pairs once."""
    from segcli.data.dataset import RamCache

    experiment = Experiment.model_validate({"model": MODEL})
    loss = build_loss(experiment.loss, 255)
    normalization = Normalization(mode="imagenet", mean=[0.5] * 3, std=[0.25] * 3)
    pipeline = build_pipeline([], "test", normalization, fill_label=255)
    logits = torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(0))

    def batch_loss(pairs: list[Pair]) -> float:
        reading = {"label_lookup": None, "never_scored": 255}
        kept = RamCache(pairs, 3, 1, **reading) if cache else None
        dataset = SegmentationDataset(pairs, pipeline, cache=kept, **reading)
        masks = torch.stack([dataset[index][1] for index in range(4)])
        return float(loss(logits, masks))

    three, garbage = (list_pairs(root, "train")[:4] for root in two_outsides)
    assert batch_loss(three) == pytest.approx(batch_loss(garbage), abs=1e-6)
    without = [Pair(pair.image, pair.mask) for pair in three]
    assert batch_loss(without) != pytest.approx(batch_loss(three), abs=1e-3)


def test_validate_dataset_reports_a_missing_a_wrong_size_and_a_non_binary_region_mask(two_outsides, tmp_path):
    root = two_outsides[1]
    ok = run_segcli("validate-dataset", "--dataset", root, "--classes", DEMO_CLASSES, "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr  # the labels' 200 lies outside every region: not checked
    root = two_outsides[0]  # labels without values that are no class: the region masks' problems alone
    rois = root / "train" / "roi"
    (rois / "train_0001.png").unlink()
    Image.fromarray(disc_roi((32, 64))).save(rois / "train_0002.png")
    grey = disc_roi((64, 64))
    grey[0, 0] = 128
    Image.fromarray(grey).save(rois / "train_0003.png")
    result = run_segcli("validate-dataset", "--dataset", root, "--classes", DEMO_CLASSES, "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = json.loads(result.stdout)["problems"]
    assert {(p["kind"], p["file"]) for p in problems if p["severity"] == "error"} == {
        ("missing-roi", "train_0001.png"), ("roi-size-mismatch", "roi/train_0002.png"),
        ("roi-not-binary", "roi/train_0003.png")}  # fmt: skip
    details = " ".join(p["detail"] for p in problems)
    assert "every image needs its region mask" in details and "64x32" in details and "0, 128, 255" in details
    text = run_segcli("validate-dataset", "--dataset", root, "--classes", DEMO_CLASSES, cwd=tmp_path)
    assert text.returncode == 1 and "3 error(s) in 3 file(s)" in text.stdout, text.stdout


def test_preview_draws_outside_the_region_as_ignored(tiny_dataset, tmp_path):
    """A region of the left half only, no ignore_index: the mask column's right half is the ignored colour (not the
    white of values that are no class), its left half the classes' colours."""
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    (root / "train" / "roi").mkdir()
    for label_path in (root / "train" / "labels").glob("*.png"):
        half = np.zeros((64, 64), np.uint8)
        half[:, :32] = 1
        Image.fromarray(half).save(root / "train" / "roi" / label_path.name)
    result = run_segcli("preview-samples", "--dataset", root, "--classes", DEMO_CLASSES, "-n", "1", "-o", "p.png",
                        cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    top, left = 2 * HEADER, 2 * MARGIN + TILE_HEIGHT  # the mask tile: the second of the first row
    mask_tile = picture[top : top + TILE_HEIGHT, left : left + TILE_HEIGHT].reshape(TILE_HEIGHT, TILE_HEIGHT, 3)
    assert (mask_tile[:, TILE_HEIGHT // 2 + 2 :] == IGNORED_COLOUR).all()
    assert not (mask_tile[:, : TILE_HEIGHT // 2 - 2] == IGNORED_COLOUR).all(axis=2).any()  # classes have colours
    assert "255 ignored" not in result.stdout + result.stderr  # drawn as ignored, not reported as values


def test_k_fold_pools_keep_each_pairs_region_mask(two_outsides):
    """Folds pool train and val: a val image in a fold's training set still brings its own val/roi/ file."""
    from segcli.training.folds import split_folds

    root = two_outsides[0]
    pooled = list_pairs(root, "train") + list_pairs(root, "val")
    for fold in split_folds(pooled, 3, 0, None):
        for pair in fold:
            assert pair.roi == pair.image.parent.parent / "roi" / pair.image.name
