"""Class imbalance keys: `loss.class_weights: median_frequency` and `sampling: {rare_class_crops: ...}`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcli.config.loader import load_experiment
from segcli.config.schema import Experiment
from segcli.data.transforms import RareClassCrop
from segcli.errors import ConfigError
from segcli.training.loaders import make_datasets
from segcli.training.preflight import preflight

CLASSES = ["background", "road", "pole"]


def _write(root: Path, split: str, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    for kind in ("images", "labels"):
        (root / split / kind).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / split / "labels" / f"{stem}.png")


def imbalanced_dataset(root: Path, train: int, size: int = 48, seed: int = 0) -> Path:
    """Background, a large 'road' band of varying height, and one 2x2 'pole' per image at a random place;
    a few pixels of void (255) in every mask."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", 2)):
        for index in range(count):
            mask = np.zeros((size, size), np.uint8)
            mask[size // 2 : size // 2 + int(rng.integers(4, size // 2)), :] = 1
            row, col = (int(v) for v in rng.integers(0, size - 2, 2))
            mask[row : row + 2, col : col + 2] = 2
            mask[0, : int(rng.integers(1, 6))] = 255
            image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            _write(root, split, f"{split}_{index:03d}", image, mask)
    return root


def experiment(**keys) -> Experiment:
    return Experiment.model_validate({
        "model": {"arch": "Unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": len(CLASSES),
                  "params": {"decoder_channels": [16, 8, 8, 8, 8]}},
        "ignore_index": 255, "num_workers": 0, **keys,
    })  # fmt: skip


def independent_median_frequency(root: Path) -> list[float]:
    """SegNet's definition from the mask files: freq(c) = pixels of c / valid pixels of the masks holding c."""
    pixels, holding = np.zeros(len(CLASSES)), np.zeros(len(CLASSES))
    for path in sorted((root / "train" / "labels").iterdir()):
        mask = np.array(Image.open(path))
        valid = int((mask != 255).sum())
        for label in range(len(CLASSES)):
            count = int((mask == label).sum())
            if count:
                pixels[label] += count
                holding[label] += valid
    freq = pixels / holding
    return list(np.median(freq) / freq)


def test_median_frequency_weights_equal_an_independent_computation(tmp_path):
    root = imbalanced_dataset(tmp_path / "data", train=6)
    loss = {"terms": ["cross_entropy", "dice"], "class_weights": "median_frequency"}
    plan = preflight(experiment(loss=loss), dataset=root, class_names=CLASSES, experiment_name="t", force_cpu=True)
    expected = independent_median_frequency(root)
    assert plan.experiment.loss.class_weights == pytest.approx(expected, rel=1e-9)
    weight = plan.task.criterion.terms[0].weight  # the cross-entropy term the run trains with
    assert weight.tolist() == pytest.approx(expected, rel=1e-6)
    assert expected[2] > 10 * expected[0]  # the 2x2 pole weighs far more than the background
    # what checkpoints and the training state keep: the numbers, not the rule
    assert plan.task.hparams["experiment"]["loss"]["class_weights"] == pytest.approx(expected, rel=1e-9)


def test_median_frequency_is_read_from_a_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "model: {arch: Unet, encoder_weights: null, classes: 3}\n"
        "defaults:\n  loss: {terms: [cross_entropy, dice], class_weights: median_frequency}\n"
        "experiments:\n  e: {}\n"
    )
    loaded = load_experiment(path, "e")
    assert loaded.loss.class_weights == "median_frequency"
    assert [term.name for term in loaded.loss.terms] == ["cross_entropy", "dice"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("loss: {terms: [cross_entropy], class_weights: median_frequncy}", "median_frequency"),
        ("sampling: {rare_class_crops: 1.5}", "sampling.rare_class_crops"),
        ("sampling: {rare_class_crop: 0.3}", "did you mean 'rare_class_crops'"),
        ("sampling: {rare_class_crops: 0.3, rare_classes: []}", "sampling.rare_classes"),
    ],
)
def test_bad_class_balance_keys_are_schema_errors(tmp_path, body, message):
    path = tmp_path / "exp.yaml"
    model = "model: {arch: Unet, encoder_weights: null, classes: 3}"
    path.write_text(f"{model}\ndefaults:\n  {body}\nexperiments:\n  e: {{}}\n")
    with pytest.raises(ConfigError) as raised:
        load_experiment(path, "e")
    assert message in str(raised.value) and "defaults." in str(raised.value)


def test_median_frequency_refuses_a_single_sigmoid_output(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "model: {arch: Unet, encoder_weights: null, classes: 1}\n"
        "defaults:\n  loss: {terms: [dice], class_weights: median_frequency}\nexperiments:\n  e: {}\n"
    )
    with pytest.raises(ConfigError, match="model.classes: 2"):
        load_experiment(path, "e")


def _share_with_pole(root: Path, share: float, epoch: int = 0) -> float:
    """The share of one epoch's training crops (the real dataset, as `train` builds it) holding a pole pixel."""
    crops = [{"name": "random_crop", "params": {"height": 16, "width": 16}}, {"name": "horizontal_flip"}]
    keys = {"train_transforms": crops, "sampling": {"rare_class_crops": share}}
    plan = preflight(experiment(**keys), dataset=root, class_names=CLASSES, experiment_name="t", force_cpu=True)
    dataset = make_datasets(plan)["train"]
    masks = [dataset[(epoch, index)][1] for index in range(len(dataset))]
    assert {tuple(mask.shape) for mask in masks} == {(16, 16)}
    return sum(bool((mask == 2).any()) for mask in masks) / len(masks)


def test_rare_class_crops_hold_rare_pixels_at_the_asked_share(tmp_path):
    """A 2x2 pole in a 48x48 image: a random 16x16 crop holds it about (17/48)^2 = 13% of the time. With
    rare_class_crops: 0.33 a third of the crops are centred on it, so the share is 0.33 + 0.67 * that rate."""
    root = imbalanced_dataset(tmp_path / "data", train=300, seed=3)
    natural = _share_with_pole(root, 0.0)
    assert natural < 0.25
    for asked in (0.33, 1.0):
        expected = asked + (1 - asked) * natural
        spread = 3 * math.sqrt(expected * (1 - expected) / 300) + 1e-9
        measured = _share_with_pole(root, asked)
        assert abs(measured - expected) <= spread, (asked, measured, expected, natural)


def test_a_rare_crop_is_centred_on_a_pixel_of_a_rare_class_drawn_uniformly():
    """Class 1 has one pixel, class 2 a hundred: each is the centre of about half the crops all the same."""
    import albumentations as A

    mask = np.zeros((64, 64), np.uint8)
    mask[20, 30] = 1
    mask[40:50, 10:20] = 2
    crop = A.Compose([RareClassCrop(16, 16, rare_classes=[1, 2, 3], share=1.0)], seed=0)
    centres = []
    for _ in range(400):
        out = crop(image=np.zeros((64, 64, 3), np.uint8), mask=mask)["mask"]
        assert out.shape == (16, 16)
        centres.append(int(out[8, 8]))
    assert set(centres) == {1, 2}  # class 3 is absent from the mask: never drawn
    assert abs(centres.count(1) / 400 - 0.5) <= 3 * math.sqrt(0.25 / 400)


def test_named_rare_classes_are_the_ones_sampled(tmp_path):
    root = imbalanced_dataset(tmp_path / "data", train=2)
    crops = [{"name": "random_crop", "params": {"height": 16, "width": 16}}]
    exp = experiment(train_transforms=crops, sampling={"rare_class_crops": 0.5, "rare_classes": ["road"]})
    plan = preflight(exp, dataset=root, class_names=CLASSES, experiment_name="t", force_cpu=True)
    sampler = next(step for step in plan.pipelines["train"].transforms if isinstance(step, RareClassCrop))
    assert (sampler.rare_classes, sampler.share) == ([1], 0.5)


def test_rare_classes_default_to_the_classes_below_half_the_median(tmp_path):
    root = imbalanced_dataset(tmp_path / "data", train=4)
    plan = preflight(experiment(), dataset=root, class_names=CLASSES, experiment_name="t", force_cpu=True)
    assert plan.report.splits["train"].rare_classes(len(CLASSES)) == [2]


def test_rare_class_crops_need_a_random_crop(tmp_path):
    root = imbalanced_dataset(tmp_path / "data", train=2)
    exp = experiment(sampling={"rare_class_crops": 0.5})
    with pytest.raises(ConfigError, match="random_crop"):
        preflight(exp, dataset=root, class_names=CLASSES, experiment_name="t", force_cpu=True)


def test_named_rare_classes_must_be_classes(tmp_path):
    root = imbalanced_dataset(tmp_path / "data", train=2)
    crops = [{"name": "random_crop", "params": {"height": 16, "width": 16}}]
    exp = experiment(train_transforms=crops, sampling={"rare_class_crops": 0.5, "rare_classes": ["pol"]})
    with pytest.raises(ConfigError, match="did you mean 'pole'"):
        preflight(exp, dataset=root, class_names=CLASSES, experiment_name="t", force_cpu=True)
