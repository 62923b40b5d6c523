"""`segcli evaluate`: training's metrics over a split, equal to a hand-computed matrix and to scoring `predict`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from segcli.data.synthetic import make_dataset
from segcli.inference.export import export
from tests.inference.support import TINY_CLASSES, make_checkpoint, read_png, run_main, write_png
from tests.support import CAMVID_CLASSES, REPO, SHARED_DATASETS, assert_user_error, run_segcli


def independent_scores(labels: Path, masks: Path, classes: int, ignore_index: int | None) -> dict:
    """numpy only: one confusion matrix over every label/predicted-mask pair, then IoU and Dice per class."""
    matrix = np.zeros((classes, classes), np.int64)
    for label_path in sorted(labels.glob("*.png")):
        label = read_png(label_path).astype(np.int64)
        predicted = read_png(masks / label_path.name).astype(np.int64)
        assert predicted.shape == label.shape, label_path.name
        valid = label != ignore_index if ignore_index is not None else np.ones_like(label, bool)
        matrix += np.bincount(label[valid] * classes + predicted[valid], minlength=classes**2).reshape(classes, -1)
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(union > 0, 2 * tp / (union + tp), np.nan)
    return {
        "matrix": matrix.tolist(),
        "iou": iou,
        "dice": dice,
        "mIoU": float(np.nanmean(iou)),
        "pixel_accuracy": float(tp.sum() / matrix.sum()),
    }


def _same(a, b) -> bool:
    """JSON null stands for NaN."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == b


# --- a hand-computed confusion matrix ------------------------------------------------------------

MASKS = [
    np.array([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [255, 255, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.uint8),
    np.array([[2, 2, 2, 2, 2, 2], [2, 2, 2, 2, 2, 2], [0, 255, 255, 255, 255, 1], [0, 0, 0, 0, 0, 0]], np.uint8),
]


@pytest.fixture
def hand_dataset(tmp_path) -> Path:
    root = tmp_path / "hand"
    rng = np.random.default_rng(0)
    for index, mask in enumerate(MASKS):
        write_png(root / "val" / "images" / f"{index}.png", rng.integers(0, 256, (4, 6, 3), dtype=np.uint8))
        write_png(root / "val" / "labels" / f"{index}.png", mask)
    return root


def test_evaluate_equals_a_hand_computed_confusion_matrix(hand_dataset, tmp_path, capsys):
    """The model always predicts class c; label 255 is ignored. Targets: a 15 pixels, b 11, c 16."""
    checkpoint = make_checkpoint(tmp_path / "c.pth", class_names=["a", "b", "c"], ignore_index=255, constant_class=2)
    result = run_main(capsys, "evaluate", checkpoint, "--dataset", hand_dataset, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["confusion_matrix"] == [[0, 0, 15], [0, 0, 11], [0, 0, 16]]
    assert document["per_class"]["a"] == {"IoU": 0.0, "Dice": 0.0, "pixels": 15}
    assert document["per_class"]["b"] == {"IoU": 0.0, "Dice": 0.0, "pixels": 11}
    assert document["per_class"]["c"]["IoU"] == pytest.approx(16 / 42)  # 16 / (16 + 26 false positives)
    assert document["per_class"]["c"]["Dice"] == pytest.approx(32 / 58)
    assert document["mIoU"] == pytest.approx(16 / 42 / 3)
    assert document["mDCC"] == pytest.approx(32 / 58 / 3)
    assert document["pixel_accuracy"] == pytest.approx(16 / 42)
    assert document["images"] == 2 and document["ignore_index"] == 255 and document["split"] == "val"
    assert document["metrics"]["val/IoU/c"] == document["per_class"]["c"]["IoU"]  # training's own keys

    exported = export(checkpoint, "torchscript", tmp_path / "c.pt", height=64, width=64).path
    from_export = json.loads(run_main(capsys, "evaluate", exported, "--dataset", hand_dataset, "--json").stdout)
    assert (
        from_export["confusion_matrix"] == document["confusion_matrix"] and from_export["model_kind"] == "torchscript"
    )

    table = run_main(capsys, "evaluate", checkpoint, "--dataset", hand_dataset)
    assert table.returncode == 0, table.stderr
    for fragment in ("0.3810", "mIoU 0.1270", "pixel accuracy 0.3810", "label 255 ignored", "15"):
        assert fragment in table.stdout, (fragment, table.stdout)


def test_a_binary_models_headline_row_is_labelled_as_the_foregrounds_scores(hand_dataset, tmp_path, capsys):
    """`classes: 1`: the row under the per-class rows read `mean` but held the foreground's IoU, not a mean.
    The model always predicts the foreground; targets (255 ignored): background 15 pixels, vessel 27."""
    for path in sorted((hand_dataset / "val" / "labels").glob("*.png")):
        mask = read_png(path)
        write_png(path, np.where(mask == 255, 255, np.minimum(mask, 1)).astype(np.uint8))
    checkpoint = make_checkpoint(tmp_path / "b.pth", class_names=["background", "vessel"], ignore_index=255,
                                 constant_class=1, binary=True)  # fmt: skip
    table = run_main(capsys, "evaluate", checkpoint, "--dataset", hand_dataset)
    assert table.returncode == 0, table.stderr
    rows = [" ".join(line.replace("│", " ").split()) for line in table.stdout.splitlines()]
    assert "vessel 0.6429 0.7826 27" in rows  # 27 / 42, 54 / 69
    assert "vessel (binary headline: mIoU, mDCC) 0.6429 0.7826 42" in rows
    assert not any(row.startswith("mean ") for row in rows)
    assert "mIoU 0.6429 mDCC 0.7826 (binary: the vessel IoU and Dice)" in " ".join(table.stdout.split())


# --- evaluate == predict + independent scoring ---------------------------------------------------


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> Path:
    """5 val pairs of 97x131 generated shapes; some label pixels are 255 (ignored)."""
    root = make_dataset(tmp_path_factory.mktemp("odd"), train=0, val=5, size=(97, 131), seed=3)
    for index, label_path in enumerate(sorted((root / "val" / "labels").glob("*.png"))):
        label = read_png(label_path)
        label[10 * index : 10 * index + 12, 20:45] = 255
        write_png(label_path, label)
    return root


def test_evaluate_equals_predict_plus_independent_scoring(odd_dataset, in_tmp_cwd, capsys):
    """`segcli predict` the split's images, score the PNGs with numpy, compare with `segcli evaluate --json`.

    FPN needs multiples of 32, so the 97x131 images also go through the padding and cropping.
    """
    checkpoint = make_checkpoint(in_tmp_cwd / "fpn.pth", arch="fpn", ignore_index=255, seed=11)
    masks = in_tmp_cwd / "masks"
    predicted = run_main(capsys, "predict", checkpoint, odd_dataset / "val" / "images", "-o", masks)
    assert predicted.returncode == 0, predicted.stderr
    evaluated = run_main(capsys, "evaluate", checkpoint, "--dataset", odd_dataset, "--split", "val", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    document = json.loads(evaluated.stdout)

    expected = independent_scores(odd_dataset / "val" / "labels", masks, 4, 255)
    assert document["confusion_matrix"] == expected["matrix"]
    for index, name in enumerate(TINY_CLASSES):
        assert _same(document["per_class"][name]["IoU"], float(expected["iou"][index])), name
        assert _same(document["per_class"][name]["Dice"], float(expected["dice"][index])), name
    assert document["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12)
    assert document["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    # The comparison means something: several classes predicted, some pixels ignored.
    predicted_classes = np.array(expected["matrix"]).sum(0)
    assert (predicted_classes > 0).sum() >= 2
    assert sum(map(sum, expected["matrix"])) < 5 * 97 * 131


def test_per_image_scores_and_the_worst_images(odd_dataset, in_tmp_cwd, capsys):
    """--per-image equals numpy on each image alone; --worst K lists the K lowest and draws them (--worst-output)."""
    checkpoint = make_checkpoint(in_tmp_cwd / "fpn.pth", arch="fpn", ignore_index=255, seed=11)
    masks = in_tmp_cwd / "masks"
    assert run_main(capsys, "predict", checkpoint, odd_dataset / "val" / "images", "-o", masks).returncode == 0
    picture = in_tmp_cwd / "worst.png"
    evaluated = run_main(capsys, "evaluate", checkpoint, "--dataset", odd_dataset, "--json", "--per-image",
                         "--worst", "2", "--worst-output", picture)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    document = json.loads(evaluated.stdout)
    per_image = {row["image"]: row for row in document["per_image"]}
    assert len(per_image) == 5
    for label_path in sorted((odd_dataset / "val" / "labels").glob("*.png")):
        alone = in_tmp_cwd / "alone" / label_path.stem
        alone.mkdir(parents=True)
        shutil.copy(label_path, alone / label_path.name)
        expected = independent_scores(alone, masks, 4, 255)
        row = per_image[label_path.name]
        assert row["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12), label_path.name
        assert row["pixels"] == sum(map(sum, expected["matrix"]))
    ranked = sorted(per_image.values(), key=lambda row: row["mIoU"])
    assert document["worst"] == [row["image"] for row in ranked[:2]]
    assert read_png(picture).shape[0] > 2 * 97  # two rows of 97-pixel-high images


def test_env_dataset_confusion_matrix_picture_and_options(odd_dataset, in_tmp_cwd):
    make_checkpoint(in_tmp_cwd / "run" / "ckpt_best.pth", ignore_index=255)
    (in_tmp_cwd / ".env").write_text(f"DATASET_PATH={odd_dataset}\n")
    picture = in_tmp_cwd / "plots" / "cm.png"
    result = run_segcli("evaluate", in_tmp_cwd / "run", "--confusion-matrix", picture, "--tile", "64", cwd=in_tmp_cwd)
    assert result.returncode == 0, result.stderr
    for name in TINY_CLASSES:
        assert name in result.stdout
    assert "mIoU" in result.stdout and "5 images" in result.stdout
    image = read_png(picture)
    assert image.ndim == 3 and image.shape[0] > 4 * 40 and image.shape[1] > 4 * 40


def test_user_errors(hand_dataset, tmp_path, capsys, in_tmp_cwd):
    checkpoint = make_checkpoint(tmp_path / "c.pth", class_names=["a", "b"], ignore_index=None)
    assert_user_error(run_main(capsys, "evaluate", checkpoint), "no dataset", "--dataset")
    result = run_main(capsys, "evaluate", checkpoint, "--dataset", hand_dataset)
    assert_user_error(result, "values 2", "255", "classes 0..1", "--label-map")  # labels 2 and 255
    result = run_main(capsys, "evaluate", checkpoint, "--dataset", hand_dataset, "--split", "test")
    assert_user_error(result, "test")


def test_masks_that_store_the_classes_differently_get_a_fix_that_works_in_evaluate(tmp_path, capsys):
    """A softmax model trained on 0/1 masks, scored on the same masks saved as 0/255: evaluate suggested
    `label_map` "in the experiment" or `--ignore-index 255`, and evaluate has neither."""
    model = make_checkpoint(tmp_path / "m.pth", class_names=["background", "vessel"], seed=2)
    rng = np.random.default_rng(4)
    for name, stored in (("zero_one", 1), ("zero_255", 255)):
        for index in range(2):
            write_png(tmp_path / name / "val" / "images" / f"{index}.png",
                      rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))  # fmt: skip
        for index in range(2):
            labels = (np.arange(24 * 40).reshape(24, 40) % (5 + index) == 0).astype(np.uint8)
            write_png(tmp_path / name / "val" / "labels" / f"{index}.png", labels * stored)
    for image in (tmp_path / "zero_one" / "val" / "images").iterdir():  # the same pictures
        shutil.copy(image, tmp_path / "zero_255" / "val" / "images" / image.name)
    refused = run_main(capsys, "evaluate", model, "--dataset", tmp_path / "zero_255")
    assert_user_error(refused, "values 255", "2 of 2 masks", "no label map", "--label-map 255:1")
    assert "experiment" not in refused.stderr and "--ignore-index" not in refused.stderr
    mapped = run_main(capsys, "evaluate", model, "--dataset", tmp_path / "zero_255", "--label-map", "255:1", "--json")
    assert mapped.returncode == 0, mapped.stderr
    plain = run_main(capsys, "evaluate", model, "--dataset", tmp_path / "zero_one", "--json")
    keys = ("mIoU", "mDCC", "pixel_accuracy", "confusion_matrix")
    assert {key: json.loads(mapped.stdout)[key] for key in keys} == {key: json.loads(plain.stdout)[key] for key in keys}
    assert_user_error(run_main(capsys, "evaluate", model, "--dataset", tmp_path / "zero_255", "--label-map", "255"),
                      "--label-map 255", "STORED:CLASS")  # fmt: skip


# --- the camvid acceptance run --------------------------------------------------------------------


@pytest.mark.slow
def test_camvid_train_export_predict_evaluate(camvid_mini, in_tmp_cwd):
    """Train 1 epoch on camvid-mini; ONNX and TorchScript pass their check; masks at 480x360; evaluate == scoring."""
    camvid = SHARED_DATASETS / "camvid"
    if not camvid.is_dir():
        pytest.skip("../shared/datasets/camvid is not present")
    trained = run_segcli("train", "-c", REPO / "experiments" / "camvid.yaml", "-e", "mini", "--dataset", camvid_mini,
                         "--classes", CAMVID_CLASSES, "--max-epochs", "1", "--output-dir", in_tmp_cwd, "--offline",
                         cwd=in_tmp_cwd)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = in_tmp_cwd / "checkpoints" / "camvid-mini"

    for fmt, name in (("onnx", "ckpt_best.onnx"), ("torchscript", "ckpt_best.torchscript.pt")):
        exported = run_segcli("export-checkpoint", run_dir, "--format", fmt, "--height", "352", "--width", "480",
                              cwd=in_tmp_cwd)  # fmt: skip
        assert exported.returncode == 0, exported.stderr[-3000:]
        check = json.loads((run_dir / f"{name}.json").read_text())["check"]
        assert check["passed"] and check["max_relative_diff"] < 1e-3 and check["min_class_agreement"] >= 0.999
        print(f"{fmt}: max relative diff {check['max_relative_diff']:.3g}")

    masks = in_tmp_cwd / "masks"
    predicted = run_segcli("predict", run_dir, camvid / "val" / "images", "-o", masks, cwd=in_tmp_cwd)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    written = sorted(masks.glob("*.png"))
    assert len(written) == len(list((camvid / "val" / "labels").glob("*.png"))) == 101
    assert {read_png(path).shape for path in written} == {(360, 480)}

    evaluated = run_segcli("evaluate", run_dir, "--dataset", camvid, "--json", cwd=in_tmp_cwd)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    document = json.loads(evaluated.stdout)
    expected = independent_scores(camvid / "val" / "labels", masks, 11, 11)
    assert document["confusion_matrix"] == expected["matrix"]
    for index, name in enumerate(CAMVID_CLASSES.split(",")):
        assert _same(document["per_class"][name]["IoU"], float(expected["iou"][index])), name
    assert document["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12)
    print(f"camvid val: mIoU {document['mIoU']:.4f}, pixel accuracy {document['pixel_accuracy']:.4f}")

    # On the split training validated on, evaluate reproduces the checkpoint's own val/mIoU.
    mini = run_segcli("evaluate", run_dir, "--dataset", camvid_mini, "--json", cwd=in_tmp_cwd)
    assert mini.returncode == 0, mini.stderr[-3000:]
    import torch

    stored = torch.load(run_dir / "ckpt_best.pth", weights_only=True)["metrics"]["val/mIoU"]
    assert json.loads(mini.stdout)["mIoU"] == pytest.approx(stored, abs=1e-3)
    print(f"camvid-mini val: evaluate mIoU {json.loads(mini.stdout)['mIoU']:.4f}, training logged {stored:.4f}")


# --- region-of-interest masks ----------------------------------------------------------------------

ROI = [  # 0: outside (neither scored nor counted), 255: inside
    np.array([[255, 255, 0, 0, 255, 255]] * 2 + [[255] * 6] * 2, np.uint8),
    np.array([[0] * 6] * 2 + [[255] * 6] * 2, np.uint8),
]


def test_evaluate_scores_only_inside_the_region_masks_of_roi_or_of_the_roi_option(hand_dataset, tmp_path, capsys):
    """Constant class c; 255 ignored. Inside the regions the targets are a 15 pixels, b 7, c 4 (a 15, b 11, c 16
    without them): the class-b pixels atop image 0 and the top half of image 1 (all c) are outside and never
    count. `--roi DIR` on the split without roi/ scores as the split with the same files in roi/."""
    checkpoint = make_checkpoint(tmp_path / "c.pth", class_names=["a", "b", "c"], ignore_index=255, constant_class=2)
    regions = tmp_path / "regions"
    with_roi = Path(shutil.copytree(hand_dataset, tmp_path / "with_roi"))
    for index, roi in enumerate(ROI):
        write_png(regions / f"{index}.png", roi)
        write_png(with_roi / "val" / "roi" / f"{index}.png", roi)
    from_option = run_main(capsys, "evaluate", checkpoint, "--dataset", hand_dataset, "--roi", regions, "--json")
    assert from_option.returncode == 0, from_option.stderr
    from_folder = run_main(capsys, "evaluate", checkpoint, "--dataset", with_roi, "--json")
    assert from_folder.returncode == 0, from_folder.stderr
    document, folder_document = json.loads(from_option.stdout), json.loads(from_folder.stdout)
    assert document["confusion_matrix"] == [[0, 0, 15], [0, 0, 7], [0, 0, 4]]
    assert document["mIoU"] == pytest.approx(4 / 26 / 3)
    assert {k: v for k, v in folder_document.items() if k != "dataset"} == {
        k: v for k, v in document.items() if k != "dataset"
    }
    missing = run_main(capsys, "evaluate", checkpoint, "--dataset", hand_dataset, "--roi", tmp_path / "nowhere")
    assert_user_error(missing, "--roi", "nowhere", "folder of region masks")
