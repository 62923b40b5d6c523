"""`segcli preview-samples`: a deterministic, readable picture with a legend."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from segcli.drawing.colours import legend_entries, palette
from segcli.drawing.pictures import TILE_HEIGHT
from tests.support import DEMO_CLASSES, assert_user_error, run_segcli

AUGMENTING = """
model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults:
  train_transforms:
    - {name: random_crop, params: {height: 32, width: 48}}
    - {name: random_brightness_contrast, params: {p: 1.0}}
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


def test_augmented_shows_transformed_pixels(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "aug.yaml").write_text(AUGMENTING)
    result = _preview(in_tmp_cwd, tiny_dataset, "-c", "aug.yaml", "-e", "crop", "--augmented", "-n", "1", "-o", "a.png")
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(in_tmp_cwd / "a.png").convert("RGB"))
    # A 48x32 crop shown at TILE_HEIGHT rows keeps the 3:2 aspect: the image tile is 1.5x as wide as high.
    first_tile = picture[30 : 30 + TILE_HEIGHT, 8 : 8 + int(1.5 * TILE_HEIGHT)]
    assert first_tile.std() > 10  # real picture content, not a flat normalised field
    assert first_tile.mean() > 30  # displayable 0..255 pixels, never normalised values


def test_legend_names_the_ignored_label():
    entries = legend_entries(["a", "b"], ignore_index=255)
    assert [label for label, _ in entries] == ["0 a", "1 b", "255 ignored"]


def test_an_empty_split_is_a_user_error(in_tmp_cwd):
    empty = in_tmp_cwd / "empty"
    for kind in ("images", "labels"):
        (empty / "train" / kind).mkdir(parents=True)
    assert_user_error(_preview(in_tmp_cwd, empty), "no image/mask pairs")
    assert not (in_tmp_cwd / "preview.png").exists()


def test_a_broken_dataset_is_drawn_anyway_with_non_classes_in_white(tiny_dataset, in_tmp_cwd):
    """Previews are how people investigate a broken dataset: draw it, say what is wrong, show the bad values."""
    broken = in_tmp_cwd / "broken"
    shutil.copytree(tiny_dataset, broken)
    for path in sorted((broken / "train" / "labels").glob("*.png")):
        mask = np.array(Image.open(path))
        mask[:8, :8] = 11  # a void-like value that is not a class
        Image.fromarray(mask).save(path)
    result = _preview(in_tmp_cwd, broken, "-n", "2")
    assert result.returncode == 0, result.stderr
    assert "warning: split 'train'" in result.stderr and "mask-values" in result.stderr
    picture = np.asarray(Image.open(in_tmp_cwd / "preview.png").convert("RGB"))
    mask_tile = picture[30 : 30 + TILE_HEIGHT, 8 + TILE_HEIGHT + 8 : 8 + 2 * TILE_HEIGHT + 8]
    assert (mask_tile == 255).all(axis=2).any()  # white: not a class
    entries = legend_entries(DEMO_CLASSES.split(","), None, [11])
    assert entries[-1] == ("value 11, not a class", (255, 255, 255))


def test_augmented_needs_an_experiment(tiny_dataset, in_tmp_cwd):
    assert_user_error(_preview(in_tmp_cwd, tiny_dataset, "--augmented"), "--config FILE --experiment NAME")


@pytest.mark.slow
def test_wandb_offline_logs_the_samples(tiny_dataset, in_tmp_cwd):
    result = _preview(in_tmp_cwd, tiny_dataset, "--wandb", "--offline", "-n", "2")
    assert result.returncode == 0, result.stderr
    runs = list((in_tmp_cwd / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"samples/train" in runs[0].read_bytes()


def test_augmented_with_a_crop_larger_than_the_images_is_a_user_error(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "big.yaml").write_text(AUGMENTING.replace("height: 32, width: 48", "height: 352, width: 480"))
    result = _preview(in_tmp_cwd, tiny_dataset, "-c", "big.yaml", "-e", "crop", "--augmented")
    assert_user_error(result, "train_transforms", "crop no larger than the images")
    assert not (in_tmp_cwd / "preview.png").exists()
