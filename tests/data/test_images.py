"""Images as they come: 16-bit and float data, N-band and multi-page TIFF, 0/255 and id-coded masks, scale."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from segcli.config.schema import Experiment
from segcli.data.checks import check_dataset
from segcli.data.io import decode_image, label_lookup, map_labels, read_image, read_mask
from segcli.data.synthetic import make_sample
from segcli.inference.export import export
from segcli.training.run import RunOptions, train
from tests.inference.support import read_png, run_main
from tests.support import run_segcli

SIZE = (32, 32)


def write_dataset(root: Path, *, image, mask, suffix: str = ".png", mask_suffix: str = ".png", train: int = 6,
                  val: int = 3, seed: int = 0, size: tuple[int, int] = SIZE) -> Path:  # fmt: skip
    """`image(rgb, labels)` and `mask(labels)` turn a generated RGB sample (labels 0..3) into the stored files."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rgb, labels = make_sample(size, rng)
            name = f"{split}_{index}"
            _write(root / split / "images" / f"{name}{suffix}", image(rgb, labels))
            _write(root / split / "labels" / f"{name}{mask_suffix}", mask(labels))
    return root


def _write(path: Path, array: np.ndarray) -> None:
    if path.suffix in (".tif", ".tiff") and array.ndim == 3:  # bands as samples of each pixel, like GDAL's default
        tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig")
    elif path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array, photometric="minisblack")
    elif array.ndim == 3:
        cv2.imwrite(str(path), cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
    else:
        cv2.imwrite(str(path), array)


def twelve_bit_grey(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (rgb.mean(2) * 16).astype(np.uint16)  # 0..4080: 12-bit data in a 16-bit PNG


def four_bands(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """R, G, B and a "near-infrared" band that alone tells the classes apart (uint16)."""
    nir = (labels.astype(np.uint16) * 1000 + 500).astype(np.uint16)
    return np.dstack([rgb.astype(np.uint16) * 64, nir])


def _train(root: Path, output: Path, classes: list[str], **keys):
    experiment = Experiment.model_validate(
        {
            "model": {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": len(classes)},
            "batch_size": 3, "max_epochs": 2, "num_workers": 0, "lr": 0.01, "average": None,
            "log_predictions": {"count": 0, "worst": 0}, **keys,
        }
    )  # fmt: skip
    options = RunOptions(dataset=root, class_names=classes, run_name="run", experiment_name="e", output_dir=output,
                         progress=False)  # fmt: skip
    return train(experiment, options), output / "checkpoints" / "run"


# --- reading and checking ---------------------------------------------------------------------


def test_sixteen_bit_pngs_keep_their_depth_and_the_check_names_it(tmp_path):
    """They were squashed to 8 bits without a word (and previews were nearly black)."""
    root = write_dataset(tmp_path / "d", image=twelve_bit_grey, mask=lambda labels: labels.astype(np.uint8))
    image = read_image(root / "train" / "images" / "train_0.png", channels=1)
    assert image.dtype == np.uint16 and image.max() > 255
    report = check_dataset(root, ["train", "val"], ["bg", "disc", "square", "triangle"], workers=1)
    train_stats = report.splits["train"]
    assert train_stats.dtype == "uint16" and train_stats.bits_used == 12 and train_stats.max_pixel_value() == 4095
    mean, std = train_stats.channel_mean_std(4095)
    pixels = np.concatenate([read_image(p, 1)[::4, ::4].ravel() for p in (root / "train" / "images").iterdir()])
    assert mean[0] == pytest.approx(pixels.mean() / 4095, rel=1e-6) and std[0] == pytest.approx(pixels.std() / 4095)
    result = run_segcli("validate-dataset", "--dataset", root, "--classes", "bg,disc,square,triangle", cwd=tmp_path)
    assert "uint16, max" in result.stdout and "12-bit data" in result.stdout


@pytest.mark.parametrize("kind", ["8-bit", "12-in-16-bit", "float"])
def test_the_bit_depth_reported_is_the_one_in_the_files(tmp_path, capsys, kind):
    """`train --dry-run` said "uint8, 1-bit values" for ordinary 8-bit images and `validate-dataset --json` gave
    "max_value": 0.0: the maximum was measured for deeper images only. Checked against Pillow and tifffile."""
    import math

    from PIL import Image

    writers = {
        "8-bit": (lambda rgb, labels: rgb, ".png"),
        "12-in-16-bit": (twelve_bit_grey, ".png"),
        "float": (lambda rgb, labels: rgb.mean(2).astype(np.float32) / 97, ".tif"),
    }
    image, suffix = writers[kind]
    root = write_dataset(tmp_path / "d", image=image, mask=lambda labels: labels.astype(np.uint8), suffix=suffix)
    train_images = sorted((root / "train" / "images").iterdir())
    values = [tifffile.imread(path) if suffix == ".tif" else np.asarray(Image.open(path)) for path in train_images]
    top = max(float(array.max()) for array in values)
    expected_bits = {"8-bit": 8, "12-in-16-bit": math.ceil(math.log2(top + 1)), "float": None}[kind]
    classes = "bg,disc,square,triangle"
    checked = run_main(capsys, "validate-dataset", "--dataset", root, "--classes", classes, "--split", "train",
                       "--json")  # fmt: skip
    assert json.loads(checked.stdout)["splits"]["train"]["max_value"] == pytest.approx(top, rel=1e-6)
    channels = 3 if kind == "8-bit" else 1
    (tmp_path / "e.yaml").write_text(
        f"model: {{arch: unet, encoder_name: resnet18, encoder_weights: null, in_channels: {channels}, classes: 4}}\n"
        f"defaults: {{normalize: {'imagenet' if kind == '8-bit' else 'dataset'}}}\nexperiments: {{e: {{}}}}\n"
    )
    planned = run_main(capsys, "train", "-c", tmp_path / "e.yaml", "-e", "e", "--dataset", root, "--classes", classes,
                       "--dry-run", "--output-dir", tmp_path / "out")  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    data_line = next(line for line in planned.stdout.splitlines() if line.startswith("# data:"))
    dtype = values[0].dtype.name
    if expected_bits:
        assert f", {dtype}, {expected_bits}-bit values," in data_line, data_line
    else:
        assert f", {dtype}, " in data_line and "-bit" not in data_line, data_line
    assert kind != "12-in-16-bit" or expected_bits == 12


def test_float_tiff_and_multipage_tiff_are_read_whole(tmp_path):
    values = np.random.default_rng(0).random((8, 9)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", values)
    assert np.array_equal(read_image(tmp_path / "f.tif", 1)[..., 0], values)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as writer:
        for band in range(5):
            writer.write(np.full((8, 9), band, np.uint16))
    bands = read_image(tmp_path / "pages.tif", 5)
    assert bands.shape == (8, 9, 5) and bands[0, 0].tolist() == [0, 1, 2, 3, 4]  # every page, never the first
    planar = np.stack([np.full((8, 9), band, np.uint16) for band in range(5)])
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="minisblack", planarconfig="separate")
    assert read_image(tmp_path / "planar.tif", 5)[0, 0].tolist() == [0, 1, 2, 3, 4]
    with tifffile.TiffWriter(tmp_path / "odd.tif") as writer:
        writer.write(np.zeros((8, 9), np.uint8))
        writer.write(np.zeros((4, 4), np.uint8))
    with pytest.raises(OSError, match="multi-page TIFF odd.tif has 2 pages"):
        read_image(tmp_path / "odd.tif", 1)


def test_gif_ppm_pgm_and_webp_images_are_read_as_written(tmp_path):
    """They were "not an image file (ignored)" in the dataset check and "no images" for predict."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    grey = rng.integers(0, 4096, (9, 11), dtype=np.uint16)  # 12-bit data in a 16-bit PGM
    Image.fromarray(rgb).save(tmp_path / "pillow.ppm")
    cv2.imwrite(str(tmp_path / "opencv.ppm"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "deep.pgm"), grey)
    Image.fromarray(rgb).save(tmp_path / "lossless.webp", lossless=True)
    palette = Image.fromarray(rgb).quantize(colors=16)  # a GIF holds palette indices
    palette.save(tmp_path / "photo.gif")
    for name in ("pillow.ppm", "opencv.ppm", "lossless.webp"):
        assert np.array_equal(read_image(tmp_path / name, 3), rgb), name
    deep = read_image(tmp_path / "deep.pgm", 1)
    assert deep.dtype == np.uint16 and np.array_equal(deep[:, :, 0], grey)
    gif = read_image(tmp_path / "photo.gif", 3)
    assert gif.dtype == np.uint8 and np.array_equal(gif, np.array(palette.convert("RGB")))  # the palette's colours
    transparent = Image.fromarray(rgb).quantize(colors=16)
    transparent.save(tmp_path / "transparent.gif", transparency=0)  # OpenCV decodes this one as 4 channels
    assert decode_image(tmp_path / "transparent.gif").shape == (9, 11, 3)  # every GIF has 3: one channel count
    (tmp_path / "broken.gif").write_bytes((tmp_path / "photo.gif").read_bytes()[:40])
    with pytest.raises(OSError, match="cannot decode image broken.gif"):
        read_image(tmp_path / "broken.gif", 3)


def test_gif_pgm_and_webp_masks_hold_their_labels(tmp_path):
    """A palette GIF's indices are its labels, like a palette PNG's; PGM and lossless WebP masks hold values."""
    from PIL import Image

    labels = np.random.default_rng(1).integers(0, 3, (9, 11), dtype=np.uint8)
    indexed = Image.fromarray(labels, mode="P")
    indexed.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])  # colours that are not the labels
    indexed.save(tmp_path / "indexed.gif")
    assert np.array_equal(read_mask(tmp_path / "indexed.gif"), labels)
    binary = np.where(labels > 0, 255, 0).astype(np.uint8)  # a vessel mask saved as 0/255
    Image.fromarray(binary).save(tmp_path / "binary.gif", optimize=False)
    assert np.array_equal(read_mask(tmp_path / "binary.gif"), binary)
    Image.fromarray(labels).save(tmp_path / "labels.pgm")
    Image.fromarray(labels).save(tmp_path / "labels.webp", lossless=True)
    for name in ("labels.pgm", "labels.webp"):
        assert np.array_equal(read_mask(tmp_path / name), labels), name


def test_a_dataset_of_gif_ppm_pgm_and_webp_files_is_checked_and_predicted(tmp_path, capsys):
    """The retinal-vessel layouts: PPM or GIF photos, 0/255 GIF masks (`label_map: {255: 1}`); WebP and PGM too."""
    from PIL import Image

    from tests.inference.support import make_checkpoint

    root = tmp_path / "d"
    rng = np.random.default_rng(2)
    files = {"train": [("a.ppm", "a.gif"), ("b.webp", "b.webp")], "val": [("c.gif", "c.pgm"), ("d.ppm", "d.gif")]}
    for split, names in files.items():
        for image_name, mask_name in names:
            rgb, labels = make_sample(SIZE, rng)
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / split / "images" / image_name, lossless=True)
            mask = np.where(labels > 0, 255, 0).astype(np.uint8)
            Image.fromarray(mask).save(root / split / "labels" / mask_name, optimize=False, lossless=True)
    report = check_dataset(root, ["train", "val"], ["background", "vessel"], workers=1, label_map={255: 1})
    assert report.problems == [] and report.splits["train"].pairs == 2 and report.splits["val"].pairs == 2
    assert report.splits["train"].class_pixels[1] > 0  # 255 counted as the vessel class
    cv2.imwrite(str(root / "val" / "images" / "e.pgm"), (rgb.mean(2) * 16).astype(np.uint16))  # 16-bit grey
    checkpoint = make_checkpoint(tmp_path / "model.pth", class_names=["background", "vessel"])
    result = run_main(capsys, "predict", checkpoint, root / "val" / "images", "-o", tmp_path / "masks")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "masks").glob("*.png")) == ["c.png", "d.png", "e.png"]


# --- training on them --------------------------------------------------------------------------


def test_twelve_bit_grey_trains_with_its_bit_depth_stored_and_checked(tmp_path, capsys):
    """The checkpoint (and an export's sidecar) store the training data's dtype and scale; predict and evaluate of
    images of another depth say so once, naming both."""
    root = write_dataset(tmp_path / "d", image=twelve_bit_grey, mask=lambda labels: labels.astype(np.uint8))
    result, run_dir = _train(root, tmp_path / "out", ["bg", "disc", "square", "triangle"],
                             model={"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None,
                                    "classes": 4, "in_channels": 1}, normalize="dataset")  # fmt: skip
    model = torch.load(run_dir / "ckpt_best.pth", weights_only=True)["model"]
    normalization = model["normalization"]
    assert normalization["mode"] == "dataset" and normalization["max_pixel_value"] == 4095.0
    assert 0.05 < normalization["mean"][0] < 0.95 and normalization["std"][0] > 0.01
    assert result.best_metrics["val/mIoU"] > 0
    assert model["image_dtype"] == "uint16" and model["image_scale"] == 4095.0

    eight_bit = tmp_path / "eight"  # the same pixels saved as 8-bit, as a converter would
    for kind in ("images", "labels"):
        (eight_bit / "val" / kind).mkdir(parents=True)
        for path in (root / "val" / kind).iterdir():
            pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(eight_bit / "val" / kind / path.name), (pixels // 16).astype(np.uint8) if kind == "images"
                        else pixels)  # fmt: skip
    message = "the model was trained on uint16 12-bit data (0..4095); these images are uint8"
    same = run_main(capsys, "predict", run_dir, root / "val" / "images", "-o", tmp_path / "same")
    assert same.returncode == 0 and "warning" not in same.stderr
    other = run_main(capsys, "predict", run_dir, eight_bit / "val" / "images", "-o", tmp_path / "other")
    assert other.returncode == 0 and other.stderr.count(message) == 1, other.stderr  # once for 3 images
    evaluated = run_main(capsys, "evaluate", run_dir, "--dataset", eight_bit)
    assert evaluated.returncode == 0 and evaluated.stderr.count(message) == 1, evaluated.stderr
    full_range = tmp_path / "full" / "a.png"
    full_range.parent.mkdir()
    cv2.imwrite(str(full_range), np.full(SIZE, 65535, np.uint16))
    exported = export(run_dir / "ckpt_best.pth", "torchscript", tmp_path / "model.pt", height=32, width=32)
    sidecar = json.loads(exported.sidecar.read_text())
    assert sidecar["image_dtype"] == "uint16" and sidecar["image_scale"] == 4095.0
    beyond = run_main(capsys, "predict", exported.path, full_range.parent, "-o", tmp_path / "beyond")
    assert beyond.returncode == 0 and "uint16 12-bit data (0..4095); these images hold 16-bit values" in beyond.stderr


@pytest.mark.parametrize(("kind", "stored", "channels"), [("rgb-to-grey", 3, 1), ("4-bands-to-rgb", 4, 3),
                                                        ("rgba-to-grey", 4, 1), ("grey-to-rgb", 1, 3)])  # fmt: skip
def test_normalize_dataset_measures_the_channels_the_model_gets(tmp_path, kind, stored, channels):
    """README's conversions (RGB to grey, 4 bands to 3, ...) with `normalize: dataset` were refused: "needs the
    training images' statistics, and none were measured". The statistics are those of the converted images,
    sampled as the dataset check samples (every 4th row and column)."""
    from segcli.training.preflight import preflight

    writers = {
        3: (lambda rgb, labels: rgb, ".png"),
        4: (four_bands, ".tif"),
        1: (twelve_bit_grey, ".png"),
    }
    image, suffix = writers[stored]
    if kind == "rgba-to-grey":  # an RGBA PNG, alpha varying
        image, suffix = (lambda rgb, labels: np.dstack([rgb, (labels * 60 + 10).astype(np.uint8)])), ".png"
    root = write_dataset(tmp_path / "d", image=image, mask=lambda labels: labels.astype(np.uint8), suffix=suffix)
    experiment = Experiment.model_validate(
        {"model": {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 4,
                   "in_channels": channels}, "normalize": "dataset"}
    )  # fmt: skip
    plan = preflight(experiment, dataset=root, class_names=["bg", "disc", "square", "triangle"], experiment_name="e")
    converted = np.concatenate([read_image(path, channels)[::4, ::4].reshape(-1, channels).astype(np.float64)
                                for path in sorted((root / "train" / "images").iterdir())])  # fmt: skip
    scale = plan.normalization.max_pixel_value
    assert plan.normalization.mode == "dataset" and len(plan.normalization.mean) == channels
    assert plan.normalization.mean == pytest.approx(list(converted.mean(0) / scale), abs=2e-4)
    assert plan.normalization.std == pytest.approx(list(converted.std(0) / scale), abs=2e-4)


def test_four_band_tiffs_train_predict_and_export_with_parity(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", image=four_bands, mask=lambda labels: labels.astype(np.uint8), suffix=".tif")
    model = {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 4, "in_channels": 4}
    result, run_dir = _train(root, tmp_path / "out", ["bg", "disc", "square", "triangle"], model=model,
                             normalize="dataset", max_epochs=3)  # fmt: skip
    assert result.best_metrics["val/mIoU"] > 0 and result.epochs_run == 3
    masks = tmp_path / "masks"
    predicted = run_main(capsys, "predict", run_dir, root / "val" / "images", "-o", masks, "--overlay")
    assert predicted.returncode == 0, predicted.stderr
    assert read_png(masks / "val_0.png").shape == SIZE and (masks / "overlays" / "val_0.png").is_file()
    exported = run_main(capsys, "export-checkpoint", run_dir, "--height", "32", "--width", "32", "--json")
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    assert document["check"]["passed"] and document["model"]["in_channels"] == 4
    onnx_masks = tmp_path / "onnx_masks"
    assert run_main(capsys, "predict", document["path"], root / "val" / "images", "-o", onnx_masks).returncode == 0
    for path in masks.glob("*.png"):
        agreement = (read_png(path) == read_png(onnx_masks / path.name)).mean()
        assert agreement > 0.999, path.name


@pytest.mark.parametrize("classes", [2, 1])
def test_binary_masks_saved_as_0_255_train_through_the_label_map(tmp_path, capsys, classes):
    """2 classes (softmax) or smp's binary convention (`classes: 1`, sigmoid): 0/255 masks via {255: 1}."""
    root = write_dataset(tmp_path / "d", image=lambda rgb, labels: rgb,
                         mask=lambda labels: np.where(labels > 0, 255, 0).astype(np.uint8))  # fmt: skip
    model = {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": classes}
    result, run_dir = _train(root, tmp_path / "out", ["background", "shape"], model=model, label_map={255: 1})
    best = result.best_metrics
    if classes == 1:  # the headline is the foreground's IoU, as usual for binary segmentation
        assert best["val/mIoU"] == pytest.approx(best["val/IoU/shape"])
    assert best["val/IoU/shape"] > 0.1
    output = tmp_path / "predicted"
    result = run_main(capsys, "predict", run_dir, root / "val" / "images", "-o", output, "--probabilities", "16")
    assert result.returncode == 0, result.stderr
    probability = read_png(output / "probabilities" / "val_0.png")  # the foreground's, for both set-ups
    assert probability.dtype == np.uint16 and probability.shape == SIZE
    mask = read_png(output / "val_0.png")
    assert np.array_equal(mask == 1, probability > 32767)  # the mask is the probability above 0.5
    assert not (output / "probabilities" / "val_0").exists()
    evaluation = run_main(capsys, "evaluate", run_dir, "--dataset", root, "--json")
    assert evaluation.returncode == 0, evaluation.stderr  # the stored label map applies to the labels too


def test_id_coded_masks_are_remapped_with_unknown_ids_ignored(tmp_path):
    """Cityscapes-style: stored ids 7, 8, 26 are the classes; ids 0 and 1 go to ignore_index 255."""
    ids = np.array([7, 8, 26, 1], np.uint8)  # label 3 is stored as id 1 (ignored)

    def id_mask(labels: np.ndarray) -> np.ndarray:
        mask = ids[labels]
        mask[0, :] = 0
        return mask

    root = write_dataset(tmp_path / "d", image=lambda rgb, labels: rgb, mask=id_mask)
    label_map = {7: 0, 8: 1, 26: 2, 0: 255, 1: 255}
    report = check_dataset(root, ["train"], ["road", "car", "sky"], 255, workers=1, label_map=label_map)
    assert report.errors == []
    masks = [read_mask(p) for p in (root / "train" / "labels").iterdir()]
    assert report.splits["train"].ignored_pixels == sum(int(((m == 0) | (m == 1)).sum()) for m in masks)
    hint = check_dataset(root, ["train"], ["road", "car", "sky"], 255, workers=1)
    assert hint.errors  # without the map the ids are not classes
    result, _ = _train(root, tmp_path / "out", ["road", "car", "sky"], ignore_index=255, label_map=label_map)
    assert result.epochs_run == 2


def test_resize_runs_the_model_at_its_training_scale(tmp_path, capsys):
    """A model trained on 32x32 meets 64x64 images: a warning names --resize; with it masks keep the input size."""
    root = write_dataset(tmp_path / "d", image=lambda rgb, labels: rgb, mask=lambda labels: labels.astype(np.uint8))
    _, run_dir = _train(root, tmp_path / "out", ["bg", "disc", "square", "triangle"])
    big_root = tmp_path / "big"
    for kind, interpolation in (("images", cv2.INTER_LINEAR), ("labels", cv2.INTER_NEAREST)):
        (big_root / "val" / kind).mkdir(parents=True)
        for path in (root / "val" / kind).iterdir():
            picture = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(
                str(big_root / "val" / kind / path.name), cv2.resize(picture, (96, 96), interpolation=interpolation)
            )
    big = big_root / "val" / "images"
    plain = run_main(capsys, "predict", run_dir, big, "-o", tmp_path / "plain")
    assert "trained on 32x32" in plain.stderr and "--resize 32x32" in plain.stderr
    resized = run_main(capsys, "predict", run_dir, big, "-o", tmp_path / "resized", "--resize", "32x32")
    assert resized.returncode == 0 and "warning" not in resized.stderr
    assert read_png(tmp_path / "resized" / "val_0.png").shape == (96, 96)
    evaluated = run_main(capsys, "evaluate", run_dir, "--dataset", big_root, "--split", "val")
    assert evaluated.returncode == 0 and "--resize 32x32" in evaluated.stderr  # evaluate warns the same way
    evaluated = run_main(capsys, "evaluate", run_dir, "--dataset", big_root, "--split", "val", "--resize", "32x32")
    assert evaluated.returncode == 0 and "warning" not in evaluated.stderr


def test_rgba_pngs_and_compressed_tiffs_are_read_as_the_model_needs(tmp_path):
    """README: RGBA converts to RGB; LZW- and deflate-compressed TIFFs read like uncompressed ones."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((8, 10), 200, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert np.array_equal(read_image(tmp_path / "a.png", 3), rgb)
    bands = rng.integers(0, 4096, (8, 10, 4), dtype=np.uint16)
    for compression in ("lzw", "deflate"):
        path = tmp_path / f"{compression}.tif"
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="contig", compression=compression)
        assert np.array_equal(read_image(path, 4), bands), compression


def test_previews_show_the_chosen_bands_stretched_from_the_2nd_to_the_98th_percentile(tmp_path):
    """`--bands 4,2,1` picks bands 1-based; 16-bit data is stretched by percentiles, so 12-bit content is visible."""
    from segcli.drawing.colours import display_image, parse_bands

    ramp = np.arange(100, dtype=np.uint16).reshape(10, 10) * 40  # 0..3960: 12-bit content
    image = np.dstack([ramp, ramp // 2, ramp // 4, 4000 - ramp])
    shown = display_image(image, parse_bands("4,2,1"))
    assert shown.shape == (10, 10, 3) and shown.dtype == np.uint8
    low, high = np.percentile(image[:, :, [3, 1, 0]].astype(np.float32), (2, 98))
    expected_red = ((4000 - ramp - low) / (high - low) * 255).clip(0, 255).astype(np.uint8)
    assert np.array_equal(shown[:, :, 0], expected_red)  # band 4 drawn as red
    assert shown[:, :, 0][0, 0] == 255 and shown[:, :, 2][0, 0] == 0  # the brightest band-4 pixel, the darkest band 1
    four_band = write_dataset(tmp_path / "d", image=four_bands, mask=lambda labels: labels.astype(np.uint8),
                              suffix=".tif")  # fmt: skip
    result = run_segcli("preview-samples", "--dataset", four_band, "--classes", "bg,disc,square,triangle",
                        "--bands", "4,2,1", "-o", tmp_path / "p.png", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    refused = run_segcli("preview-samples", "--dataset", four_band, "--classes", "bg,disc,square,triangle",
                         "--bands", "5,2,1", "-o", tmp_path / "q.png", cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "band 5 does not exist" in refused.stderr


def test_the_label_map_table_and_mapped_masks_are_small_integers():
    table = label_lookup({255: 1, 7: 300})
    assert table.dtype == np.uint16  # 65536 entries: 128 KiB rather than int64's 512 KiB
    assert map_labels(np.array([[0, 255]], np.uint8), label_lookup({255: 1})).dtype == np.uint8
    assert map_labels(np.array([[7, 255]], np.uint8), table).tolist() == [[300, 1]]
