"""How images become model inputs and outputs map back, end to end: odd sizes for every kind of size multiple,
padding never trained on or scored, `evaluate` reproducing the logged val metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from segcli.artifacts.checkpoints import read_checkpoint
from segcli.artifacts.folders import RunDir, RunRecord
from segcli.artifacts.model_info import ModelInfo, Normalization
from segcli.config.schema import Experiment, TransformSpec
from segcli.data.io import read_image
from segcli.data.synthetic import make_dataset
from segcli.data.transforms import build_pipeline
from segcli.files import BackgroundWriter, save_torch
from segcli.inference.engine import InferenceOptions, scale_warning, to_batch
from segcli.inference.evaluate import evaluate_split
from segcli.inference.export import export
from segcli.inference.loading import load_checkpoint_model, open_model
from segcli.models.task import SegmentationTask
from segcli.training.finish import worst_images
from segcli.training.preflight import preflight
from segcli.training.run import RunOptions, train
from tests.inference.support import read_png, run_main
from tests.support import DEMO_CLASSES

CLASSES = DEMO_CLASSES.split(",")
ODD = (45, 67)  # (height, width): a multiple of none of 8, 16, 32
SMALL = {  # small decoders keep the runs cheap
    "unet": {"decoder_channels": [32, 16, 16, 8, 8]},
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "deeplabv3plus": {"decoder_channels": 32},
}


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("odd"), train=4, val=3, size=ODD, seed=5)


def experiment(arch: str, **keys) -> Experiment:
    model = {"arch": arch, "encoder_name": "resnet18", "encoder_weights": None, "classes": 4, "params": SMALL[arch]}
    base = {"model": model, "batch_size": 2, "max_epochs": 1, "num_workers": 0, "average": None,
            "log_predictions": {"count": 0, "worst": 0}}  # fmt: skip
    return Experiment.model_validate({**base, **keys})


def run(exp: Experiment, dataset: Path, output: Path) -> RunDir:
    train(exp, RunOptions(dataset=dataset, class_names=CLASSES, run_name="run", experiment_name="e",
                          output_dir=output, progress=False))  # fmt: skip
    return RunDir(output / "checkpoints" / "run")


def assert_same_metrics(stored: dict[str, float], measured: dict[str, float]) -> None:
    for key in ("val/mIoU", "val/mDCC", "val/pixel_accuracy", *(f"val/IoU/{name}" for name in CLASSES)):
        a, b = stored[key], measured[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-4), (key, a, b)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "multiple"), [("unet", 1), ("fpn", 32), ("deeplabv3plus", 16)])
def test_odd_sizes_train_and_evaluate_reproduces_the_logged_val_metrics(odd_dataset, tmp_path, arch, multiple):
    """45x67 images, no transforms: each batch is padded to the architecture's multiple and the logits cropped back,
    in training as in `evaluate`, so both score the same pixels the same way."""
    run_dir = run(experiment(arch), odd_dataset, tmp_path)
    checkpoint = read_checkpoint(run_dir.best)
    assert checkpoint.info.size_multiple == multiple
    evaluation = evaluate_split(open_model(run_dir.best), odd_dataset, "val", InferenceOptions(batch_size=2))
    assert_same_metrics(checkpoint.metrics, evaluation.metrics)
    assert int(evaluation.matrix.sum()) == 3 * ODD[0] * ODD[1]


@pytest.mark.slow
@pytest.mark.parametrize("ignore_index", [None, 7])
def test_a_pad_in_the_transforms_is_never_scored(odd_dataset, tmp_path, ignore_index):
    """`pad_if_needed` to 64x96 in both lists, without `fill_mask`: validation counts exactly the images' own pixels
    (Albumentations would fill the mask with 0, the first class, and score it)."""
    pad = [{"name": "pad_if_needed", "params": {"min_height": 64, "min_width": 96}}]
    exp = experiment("fpn", train_transforms=pad, val_transforms=pad, ignore_index=ignore_index)
    run_dir = run(exp, odd_dataset, tmp_path)
    logged = np.array(RunRecord.read(run_dir).report["best_matrix"])
    labels = np.concatenate([read_png(path).ravel() for path in sorted((odd_dataset / "val" / "labels").glob("*"))])
    assert logged.sum(1).tolist() == np.bincount(labels, minlength=4).tolist()  # every target pixel, once


@pytest.mark.parametrize(
    "transform",
    [
        {"name": "pad_if_needed", "params": {"min_height": 64, "min_width": 96}},
        {"name": "affine", "params": {"translate_px": {"x": 20, "y": 0}, "p": 1.0}},
        {"name": "rotate", "params": {"limit": [30, 30], "p": 1.0}},
    ],
)
@pytest.mark.parametrize("ignore_index", [None, 7])
def test_padded_and_uncovered_mask_pixels_are_never_trained_on(transform, ignore_index):
    """Pads and the borders a warp uncovers hold the label the loss and the metrics leave out: the experiment's
    ignore_index, or an internal one without it. An explicit `fill_mask` is kept."""
    exp = experiment("unet", ignore_index=ignore_index)
    task = SegmentationTask(exp.model_dump(mode="json"), CLASSES)
    assert task.never_scored == (7 if ignore_index is not None else 255)
    pipeline = build_pipeline([TransformSpec(**transform)], "train_transforms", Normalization(mode="image"),
                              seed=0, fill_label=task.never_scored)  # fmt: skip
    image = np.random.default_rng(0).integers(0, 256, (*ODD, 3), dtype=np.uint8)
    mask = np.ones(ODD, np.uint8)  # class 1 everywhere: any 0 in the output would be a fill scored as class 0
    out = pipeline(image=image, mask=mask)
    target = out["mask"].long()[None]
    filled = target != 1
    assert filled.any() and set(target[filled].unique().tolist()) == {task.never_scored}
    # Predictions wrong only where the mask was filled cost no more than right ones, and are not counted.
    right = torch.full((1, 4, *target.shape[1:]), -10.0)
    right[:, 1] = 10.0
    wrong_at_fills = right.clone()
    wrong_at_fills[:, 0][filled] = 30.0
    assert float(task.criterion(wrong_at_fills, target)) == pytest.approx(float(task.criterion(right, target)))
    matrix = task.new_confusion_matrix()
    matrix.update(wrong_at_fills.max(1).indices, target)
    assert matrix.compute().tolist()[1] == [0, int((~filled).sum()), 0, 0]

    kept = build_pipeline([TransformSpec(name=transform["name"], params={**transform["params"], "fill_mask": 3})],
                          "train_transforms", Normalization(mode="image"),
                          seed=0, fill_label=task.never_scored)(image=image, mask=mask)["mask"]  # fmt: skip
    assert set(kept.unique().tolist()) == {1, 3}


# --- a model trained on resized images -----------------------------------------------------------

SOURCE, TRAINED = (66, 90), (32, 48)  # (height, width): the images as stored, and the size training resized them to
RESIZE = [{"name": "resize", "params": {"height": TRAINED[0], "width": TRAINED[1]}}]


@pytest.fixture(scope="module")
def resized_run(module_folder) -> tuple[Path, RunDir]:
    """Unet trained 2 epochs with `resize` to 48x32 in both lists, on 90x66 images."""
    dataset = make_dataset(module_folder / "data", train=6, val=4, size=SOURCE, seed=9)
    exp = experiment("unet", max_epochs=2, lr=0.01, train_transforms=RESIZE, val_transforms=RESIZE,
                     log_predictions={"count": 0, "worst": 2})  # fmt: skip
    return dataset, run(exp, dataset, module_folder / "out")


@pytest.mark.slow
def test_the_checkpoint_carries_the_training_geometry(resized_run):
    _, run_dir = resized_run
    info = read_checkpoint(run_dir.best).info
    assert info.resize == list(TRAINED) and info.input_size == list(TRAINED)
    assert info.val_transforms == RESIZE


@pytest.mark.slow
@pytest.mark.parametrize("resize", [None, TRAINED, (SOURCE[0], SOURCE[1])])
def test_evaluate_reproduces_the_logged_val_metrics_of_a_resized_run(resized_run, resize):
    """Scored as validation scored the images (their val pipeline on image and mask), whatever `resize` says; the
    images' own size is scored too, with the probabilities resized back."""
    dataset, run_dir = resized_run
    checkpoint = read_checkpoint(run_dir.best)
    evaluation = evaluate_split(open_model(run_dir.best), dataset, "val", InferenceOptions(resize=resize))
    assert_same_metrics(checkpoint.metrics, evaluation.metrics)
    assert int(evaluation.matrix.sum()) == 4 * TRAINED[0] * TRAINED[1]
    own = evaluation.at_image_size
    assert own is not None and int(own.matrix.sum()) == 4 * SOURCE[0] * SOURCE[1]
    assert own.model_input == ("each image at its own size" if resize is None else
                               f"resized to {resize[1]}x{resize[0]} (WxH), probabilities resized back")  # fmt: skip


@pytest.mark.slow
def test_inference_resizes_exactly_as_the_training_pipeline(resized_run):
    """One resize: the model's input for a 90x66 image is what the val pipeline makes of it, to the bit."""
    dataset, run_dir = resized_run
    info = read_checkpoint(run_dir.best).info
    image = read_image(sorted((dataset / "val" / "images").glob("*"))[0])
    pipeline = build_pipeline([TransformSpec(**spec) for spec in RESIZE], "val_transforms", info.normalization,
                              fill_label=255)  # fmt: skip
    expected = pipeline(image=image, mask=np.zeros(SOURCE, np.uint8))["image"]
    assert torch.equal(to_batch([image], info, TRAINED)[0], expected)
    sixteen = (image.astype(np.uint16) * 257)[:, :, :1]  # and for 16-bit data
    grey = Normalization(mode="explicit", mean=[0.5], std=[0.25], max_pixel_value=65535.0)
    grey_info = info.model_copy(update={"in_channels": 1, "normalization": grey})
    expected = build_pipeline([TransformSpec(**spec) for spec in RESIZE], "val_transforms", grey, fill_label=255)(
        image=sixteen, mask=np.zeros(SOURCE, np.uint8))["image"]  # fmt: skip
    assert torch.equal(to_batch([sixteen], grey_info, TRAINED)[0], expected)


@pytest.mark.slow
def test_predict_and_exports_apply_the_training_size_by_default(resized_run, tmp_path, capsys):
    """No --resize: the model runs at 48x32 and the masks come back at 90x66; `--resize none` runs it at 90x66;
    an export's sidecar carries the size, so the export predicts the same masks."""
    dataset, run_dir = resized_run
    images = dataset / "val" / "images"
    outputs = {}
    for name, extra in (("default", []), ("explicit", ["--resize", f"{TRAINED[1]}x{TRAINED[0]}"]),
                        ("none", ["--resize", "none"])):  # fmt: skip
        result = run_main(capsys, "predict", run_dir.path, images, "-o", tmp_path / name, *extra)
        assert result.returncode == 0, result.stderr
        outputs[name] = [read_png(path) for path in sorted((tmp_path / name).glob("*.png"))]
        assert {mask.shape for mask in outputs[name]} == {SOURCE}
        assert ("the size it was trained at" in result.stderr) == (name == "default")
    assert all(np.array_equal(a, b) for a, b in zip(outputs["default"], outputs["explicit"], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(outputs["default"], outputs["none"], strict=True))
    exported = export(run_dir.best, "torchscript", tmp_path / "model.pt", height=32, width=64)
    assert json.loads(exported.sidecar.read_text())["resize"] == list(TRAINED)
    assert run_main(capsys, "predict", exported.path, images, "-o", tmp_path / "export").returncode == 0
    from_export = [read_png(path) for path in sorted((tmp_path / "export").glob("*.png"))]
    assert all(np.array_equal(a, b) for a, b in zip(outputs["default"], from_export, strict=True))


@pytest.mark.slow
def test_the_worst_images_are_scored_as_validation_scored_them(resized_run):
    """finish's worst images: each val image's own mIoU as validation scored it, drawn at the val pipeline's size."""
    dataset, run_dir = resized_run
    exp = experiment("unet", max_epochs=2, train_transforms=RESIZE, val_transforms=RESIZE)
    plan = preflight(exp, dataset=dataset, class_names=CLASSES, experiment_name="e")
    writer = BackgroundWriter()
    try:
        worst = worst_images(plan, run_dir, torch.device("cpu"), 2, writer)
    finally:
        writer.close()
    validated = evaluate_split(open_model(run_dir.best), dataset, "val", InferenceOptions(resize=None))
    assert [(s.name, s.mIoU) for s in worst.per_image] == [(s.name, s.mIoU) for s in validated.per_image]
    assert [sample.mask.shape for sample in worst.worst_samples] == [TRAINED, TRAINED]
    assert [sample.prediction.shape for sample in worst.worst_samples] == [TRAINED, TRAINED]


def test_the_scale_warning_fires_from_a_quarter_larger_and_names_the_exact_resize():
    info = read_info_without_geometry().model_copy(update={"input_size": [32, 48]})
    assert scale_warning(info, 32, 48) is None and scale_warning(info, 36, 54) is None  # 1.125x
    warning = scale_warning(info, 42, 63)  # 1.31x
    assert warning is not None and "--resize 48x32" in warning and "1.31x" in warning
    assert "--resize 48x32" in scale_warning(info, 24, 36)  # 0.75x


def read_info_without_geometry() -> ModelInfo:
    return ModelInfo(arch="unet", encoder_name="resnet18", in_channels=3, classes=4, class_names=CLASSES,
                     ignore_index=None, normalization=Normalization(mode="image"))  # fmt: skip


@pytest.mark.slow
def test_an_older_checkpoint_takes_its_geometry_from_its_experiment(resized_run, tmp_path):
    """Files written before checkpoints stored val_transforms: the experiment in them says how they were validated."""
    _, run_dir = resized_run
    payload = torch.load(run_dir.best, weights_only=True)
    for key in ("val_transforms", "resize"):
        del payload["model"][key]
    save_torch(payload, tmp_path / "old.pth")
    info = load_checkpoint_model(tmp_path / "old.pth")[1]
    assert info.val_transforms == RESIZE and info.resize == list(TRAINED)
