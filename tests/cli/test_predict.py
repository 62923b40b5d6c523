"""`segcli predict`: masks of the input size for any size, exports as input, skips, tiles, user errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segcli.inference.engine import InferenceOptions
from segcli.inference.export import export
from segcli.inference.loading import open_model
from tests.inference.support import make_checkpoint, read_png, run_main, write_png
from tests.support import assert_user_error, heavy_imports, run_segcli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "ckpt_best.pth", seed=4)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """odd.png 97x131 and small.png 64x64 RGB, gray.png 50x70 single-channel."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    write_png(folder / "odd.png", rng.integers(0, 256, (97, 131, 3), dtype=np.uint8))
    write_png(folder / "small.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    write_png(folder / "gray.png", rng.integers(0, 256, (50, 70), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


SIZES = {"odd": (97, 131), "small": (64, 64), "gray": (50, 70)}


def _expected_masks(model: Path, folder: Path, options: InferenceOptions | None = None) -> dict[str, np.ndarray]:
    from segcli.data.io import read_image

    predictor = open_model(model)
    return {stem: predictor.predict([read_image(folder / f"{stem}.png")], options)[0] for stem in SIZES}


def test_masks_have_the_input_size_and_unreadable_files_are_skipped(checkpoint, images, in_tmp_cwd):
    broken = in_tmp_cwd / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    output = in_tmp_cwd / "masks"
    result = run_segcli("predict", checkpoint, images, broken, "--output", output, "--overlay", cwd=in_tmp_cwd)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "WARN" not in result.stderr  # OpenCV's own noise is silenced
    assert f"skipped {broken}" in result.stderr and "1 of 4 inputs could not be read" in result.stderr
    assert "wrote 3 masks" in result.stdout
    assert sorted(p.name for p in output.glob("*.png")) == ["gray.png", "odd.png", "small.png"]
    expected = _expected_masks(checkpoint, images)
    for stem, size in SIZES.items():
        mask = read_png(output / f"{stem}.png")
        assert mask.shape == size and mask.dtype == np.uint8 and mask.max() < 4
        np.testing.assert_array_equal(mask, expected[stem])
        overlay = read_png(output / "overlays" / f"{stem}.png")
        assert overlay.shape[2] == 3 and overlay.shape[0] > size[0]  # the legend sits below the picture
    assert len({mask.tobytes() for mask in expected.values()}) == 3


def test_a_truncated_jpeg_is_skipped_for_the_reason_the_dataset_check_gives(checkpoint, in_tmp_cwd):
    """predict printed libjpeg's `Premature end of JPEG file`, wrote a mask for the half-grey picture and exited 0,
    while validate-dataset called the same file truncated: one readability rule, reported, skipped, exit 1."""
    import cv2

    from segcli.data.checks import check_dataset

    root = in_tmp_cwd / "data"
    images, labels = root / "val" / "images", root / "val" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    picture = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(images / "whole.jpg"), picture)
    data = (images / "whole.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 2])
    for stem in ("whole", "cut"):
        write_png(labels / f"{stem}.png", np.zeros((48, 64), np.uint8))
    output = in_tmp_cwd / "masks"
    result = run_segcli("predict", checkpoint, images, "--output", output, cwd=in_tmp_cwd)
    assert result.returncode == 1, result.stderr
    assert "Premature end" not in result.stderr and "Traceback" not in result.stderr
    assert sorted(path.name for path in output.glob("*.png")) == ["whole.png"]
    skipped = [line for line in result.stderr.splitlines() if line.startswith(f"skipped {images / 'cut.jpg'}: ")]
    assert len(skipped) == 1, result.stderr
    reason = skipped[0].split(": ", 1)[1]
    report = check_dataset(root, ["val"], ["background", "disc", "square", "triangle"], workers=1)
    assert [(problem.file, problem.detail) for problem in report.errors] == [("cut.jpg", reason)]
    assert "truncated" in reason


def test_counts_are_in_words_of_the_right_number(checkpoint, images, tmp_path, capsys):
    """ "wrote 1 mask ... and 1 overlays": one of each is singular."""
    result = run_main(capsys, "predict", checkpoint, images / "small.png", "-o", tmp_path, "--overlay",
                      "--probabilities", "8")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote 1 mask to {tmp_path} and 1 overlay to {tmp_path / 'overlays'}, 4 probability maps" in result.stdout


def test_images_the_model_cannot_take_are_named_once_as_such(tmp_path, images, capsys):
    """A 4-band model on RGB PNGs named the mismatch per file, then "4 of 4 inputs could not be read": they were
    read; they do not fit the model. One message says so, and what does fit is still predicted."""
    model = make_checkpoint(tmp_path / "four.pth", in_channels=4)
    bands = write_png(tmp_path / "bands.png", np.random.default_rng(2).integers(0, 256, (40, 48, 4), dtype=np.uint8))
    result = run_main(capsys, "predict", model, images, bands, "-o", tmp_path / "masks")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "could not be read" not in result.stderr and "skipped" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "channel" in line]
    assert lines == ["3 of 4 inputs were not predicted: they have 1 or 3 channel(s) and the model takes 4 "
                     "(model.in_channels), e.g. gray.png, odd.png, small.png"], result.stderr  # fmt: skip
    assert "wrote 1 mask" in result.stdout and (tmp_path / "masks" / "bands.png").is_file()


@pytest.mark.parametrize("fmt", ["torchscript", "state-dict", "onnx", "smp"])
def test_exports_predict_like_the_checkpoint(checkpoint, images, tmp_path, capsys, fmt):
    exported = export(checkpoint, fmt, tmp_path / f"model-{fmt}", height=64, width=64, check=False).path
    result = run_main(capsys, "predict", exported, images / "odd.png", images / "small.png", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert f"({fmt} {exported})" in result.stdout
    expected = _expected_masks(checkpoint, images)
    for stem in ("odd", "small"):
        mask = read_png(tmp_path / "out" / f"{stem}.png")
        agreement = float(np.mean(mask == expected[stem]))
        assert agreement == 1.0 if fmt != "onnx" else agreement > 0.999


def test_tiles_flip_tta_and_padding_to_the_size_multiple(images, tmp_path, capsys):
    """FPN needs multiples of 32: 97x131 is padded; --tile 40 becomes 64x64 tiles."""
    fpn = make_checkpoint(tmp_path / "fpn.pth", arch="fpn")
    args = ["--tile", "40", "--overlap", "0.5", "--tta", "flip", "--batch-size", "3"]
    result = run_main(capsys, "predict", fpn, images, "-o", tmp_path / "out", *args)
    assert result.returncode == 0, result.stderr
    options = InferenceOptions(batch_size=3, tile=40, overlap=0.5, flip_tta=True)
    expected = _expected_masks(fpn, images, options)
    plain = _expected_masks(fpn, images)
    for stem, size in SIZES.items():
        mask = read_png(tmp_path / "out" / f"{stem}.png")
        assert mask.shape == size
        np.testing.assert_array_equal(mask, expected[stem])
    assert any(not np.array_equal(expected[stem], plain[stem]) for stem in SIZES)  # the options took effect


@pytest.mark.parametrize("classes", [2, 4])
def test_probability_maps_are_the_foregrounds_for_binary_models_and_one_per_class_otherwise(
    checkpoint, images, tmp_path, capsys, classes
):
    """`classes: 2` (softmax) wrote <stem>/0_background.png and 1_vessel.png; vessel, membrane and cell scorers
    (ROC AUC, best-threshold F1) want one foreground map per image, as `classes: 1` (sigmoid) writes."""
    from segcli.data.io import read_image

    names = ["background", "vessel"] if classes == 2 else None
    model = make_checkpoint(tmp_path / "binary.pth", class_names=names, seed=5) if classes == 2 else checkpoint
    output = tmp_path / "out"
    result = run_main(capsys, "predict", model, images / "odd.png", "-o", output, "--probabilities", "16")
    assert result.returncode == 0, result.stderr
    expected = open_model(model).probabilities([read_image(images / "odd.png")], InferenceOptions())[0].numpy()
    written = sorted(str(path.relative_to(output / "probabilities")) for path in (output / "probabilities").rglob("*"))
    if classes == 2:
        assert written == ["odd.png"]
        foreground = read_png(output / "probabilities" / "odd.png")
        assert foreground.dtype == np.uint16 and foreground.shape == SIZES["odd"]
        assert np.abs(foreground.astype(np.int64) - np.rint(expected[1] * 65535)).max() <= 1  # class 1's probability
    else:
        assert written == ["odd", "odd/0_background.png", "odd/1_disc.png", "odd/2_square.png", "odd/3_triangle.png"]


def test_user_errors(checkpoint, images, tmp_path, capsys):
    output = tmp_path / "out"
    assert_user_error(run_main(capsys, "predict", checkpoint, tmp_path / "nope.png", "-o", output), "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_main(capsys, "predict", checkpoint, empty, "-o", output), "no images")
    twin = write_png(tmp_path / "other" / "odd.png", np.zeros((8, 8, 3), np.uint8))
    result = run_main(capsys, "predict", checkpoint, images, twin, "-o", output)
    assert_user_error(result, "share a stem", "odd.png", "different --output folders")
    assert_user_error(run_main(capsys, "predict", images / "odd.png", images, "-o", output), "segcli checkpoint")
    assert not output.exists()
    result = run_main(capsys, "predict", checkpoint, images, "-o", images)
    assert_user_error(result, "would overwrite input images")
    assert_user_error(run_main(capsys, "predict", checkpoint, images, "-o", images / "odd.png"), "is a file")
    missing_output = run_main(capsys, "predict", checkpoint, images)
    assert missing_output.returncode == 2 and "--output" in missing_output.stderr


@pytest.mark.parametrize("command", ["predict", "evaluate", "export-checkpoint"])
def test_help_does_not_import_torch(command, in_tmp_cwd):
    heavy, code, output = heavy_imports([command, "--help"], in_tmp_cwd)
    assert heavy == [] and code == 0 and "Usage" in output
