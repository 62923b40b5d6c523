"""`segcli preview-samples`: a deterministic, readable picture with a legend."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from segcli.data.visualize import TILE_HEIGHT, legend_entries, palette
from tests.support import DEMO_CLASSES, assert_user_error, run_segcli

AUGMENTING = """
model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults:
  train_transforms:
    - {name: random_crop, params: {height: 32, width: 48}}
    - {name: normalize, params: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
experiments:
  crop: {}
"""


def _preview(tmp, dataset, *extra):
    return run_segcli("preview-samples", "--dataset", dataset, "--classes", DEMO_CLASSES, *extra, cwd=tmp)


def test_grid_has_one_row_per_sample_and_a_full_legend(tiny_dataset, in_tmp_cwd):
    result = _preview(in_tmp_cwd, tiny_dataset, "-n", "3", "--seed", "1", "-o", "out/p.png")
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(in_tmp_cwd / "out" / "p.png").convert("RGB"))
    assert picture.shape[0] > 3 * TILE_HEIGHT  # three rows of tiles, headers and the legend
    assert picture.shape[1] >= 3 * TILE_HEIGHT  # image | mask | overlay of square 64x64 samples
    legend = picture[3 * TILE_HEIGHT + 3 * 30 :].reshape(-1, 3)
    colours = {tuple(c) for c in legend.tolist()}
    for index, colour in enumerate(palette(4)):
        assert tuple(int(v) for v in colour) in colours, f"no legend swatch for class {index}"


def test_same_seed_same_picture_other_seed_other_picture(tiny_dataset, in_tmp_cwd):
    for name, seed in (("a.png", "3"), ("b.png", "3"), ("c.png", "4")):
        assert _preview(in_tmp_cwd, tiny_dataset, "--seed", seed, "-n", "2", "-o", name).returncode == 0
    read = lambda name: np.asarray(Image.open(in_tmp_cwd / name))  # noqa: E731
    assert np.array_equal(read("a.png"), read("b.png"))
    assert not np.array_equal(read("a.png"), read("c.png"))


def test_augmented_shows_transformed_and_denormalised_pixels(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "aug.yaml").write_text(AUGMENTING)
    result = _preview(in_tmp_cwd, tiny_dataset, "-c", "aug.yaml", "-e", "crop", "--augmented", "-n", "1", "-o", "a.png")
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(in_tmp_cwd / "a.png").convert("RGB"))
    # A 48x32 crop shown at TILE_HEIGHT rows keeps the 3:2 aspect: the image tile is 1.5x as wide as high.
    first_tile = picture[30 : 30 + TILE_HEIGHT, 8 : 8 + int(1.5 * TILE_HEIGHT)]
    assert first_tile.std() > 10  # real picture content, not a flat normalised field
    assert first_tile.mean() > 30  # de-normalised back to 0..255 pixels


def test_legend_names_the_ignored_label():
    entries = legend_entries(["a", "b"], ignore_index=255)
    assert [label for label, _ in entries] == ["0 a", "1 b", "255 ignored"]


def test_empty_split_and_bad_dataset_fail_with_exit_2(tiny_dataset, in_tmp_cwd):
    empty = in_tmp_cwd / "empty"
    for kind in ("images", "labels"):
        (empty / "train" / kind).mkdir(parents=True)
    assert_user_error(_preview(in_tmp_cwd, empty), "failed the dataset check", "empty-split")

    broken = in_tmp_cwd / "broken"
    shutil.copytree(tiny_dataset, broken)
    next((broken / "train" / "images").glob("*.png")).write_bytes(b"not a png")
    assert_user_error(_preview(in_tmp_cwd, broken), "unreadable-image")
    assert not (in_tmp_cwd / "preview.png").exists()


def test_augmented_needs_an_experiment(tiny_dataset, in_tmp_cwd):
    assert_user_error(_preview(in_tmp_cwd, tiny_dataset, "--augmented"), "--config FILE --experiment NAME")


@pytest.mark.slow
def test_wandb_offline_logs_the_samples(tiny_dataset, in_tmp_cwd):
    result = _preview(in_tmp_cwd, tiny_dataset, "--wandb", "--offline", "-n", "2")
    assert result.returncode == 0, result.stderr
    runs = list((in_tmp_cwd / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"samples/train" in runs[0].read_bytes()
