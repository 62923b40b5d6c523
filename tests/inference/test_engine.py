"""The inference core: padding and cropping, sliding window, flip TTA, batching, loading, scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from segcli.artifacts.model_info import ModelInfo, Normalization
from segcli.data.geometry import crop, pad_to_multiple
from segcli.data.io import Pair
from segcli.errors import CheckpointError
from segcli.inference.engine import (
    InferenceOptions,
    model_scores,
    probabilities,
    same_size_batches,
    tile_starts,
    to_batch,
)
from segcli.inference.evaluate import evaluate_pairs
from segcli.inference.loading import (
    Predictor,
    load_checkpoint_model,
    open_model,
    quiet_torch_deprecations,
    resolve_model_path,
)
from tests.inference.support import make_checkpoint, write_png

HALF = {"mode": "explicit", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "max_pixel_value": 255.0}


def _info(classes: int = 3, multiple: int = 1, ignore_index: int | None = None, names=None) -> ModelInfo:
    return ModelInfo(
        arch="test",
        encoder_name="none",
        in_channels=3,
        classes=classes,
        class_names=names or [f"c{i}" for i in range(classes)],
        ignore_index=ignore_index,
        normalization=HALF,
        size_multiple=multiple,
    )


def _per_pixel_model(classes: int, multiple: int = 1, seen: list | None = None):
    """Logits = a fixed 1x1 convolution of the input: each pixel's output depends on that pixel only."""
    weight = torch.randn(classes, 3, generator=torch.Generator().manual_seed(3))

    def forward(batch: torch.Tensor) -> torch.Tensor:
        assert batch.shape[-2] % multiple == 0 and batch.shape[-1] % multiple == 0, batch.shape
        if seen is not None:
            seen.append(tuple(batch.shape))
        return torch.einsum("kc,nchw->nkhw", weight, batch)

    return forward


def _probabilities(forward, batch: torch.Tensor, multiple: int, options: InferenceOptions) -> torch.Tensor:
    return probabilities(model_scores(forward, multiple), batch, multiple, options)


def _random_batch(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "unet": make_checkpoint(root / "unet" / "ckpt_best.pth"),
        "fpn": make_checkpoint(root / "fpn.pth", arch="fpn"),
    }


# --- padding and cropping -----------------------------------------------------------------------


def test_pad_to_multiple_reflects_and_crop_restores():
    x = torch.arange(35, dtype=torch.float32).reshape(1, 1, 5, 7)
    padded, size = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 8, 8) and size == (5, 7)
    assert torch.equal(crop(padded, size), x)
    assert torch.equal(padded[0, 0, 5, :7], x[0, 0, 3])  # row 5 mirrors row 3 (reflection about row 4)
    assert torch.equal(padded[0, 0, :5, 7], x[0, 0, :, 5])


def test_padding_larger_than_the_image_replicates_its_edge():
    x = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)
    padded, size = pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert torch.equal(padded[0, 0, 7, :3], x[0, 0, 2]) and torch.equal(crop(padded, size), x)


def test_no_padding_when_already_a_multiple():
    x = torch.randn(2, 3, 64, 32)
    padded, size = pad_to_multiple(x, 32)
    assert padded is x and size == (64, 32)


def test_odd_sizes_reach_the_model_padded_and_come_back_cropped():
    seen: list = []
    forward = _per_pixel_model(4, multiple=32, seen=seen)
    batch = _random_batch(97, 131)
    result = _probabilities(forward, batch, 32, InferenceOptions())
    assert seen == [(1, 3, 128, 160)]
    assert result.shape == (1, 4, 97, 131)
    expected = _per_pixel_model(4)(batch).softmax(1)  # same weights, no size rule, no padding
    torch.testing.assert_close(result, expected)


# --- sliding window and flip TTA -----------------------------------------------------------------


def test_tile_starts_cover_the_length_and_end_flush():
    assert tile_starts(100, 40, 30) == [0, 30, 60]
    assert tile_starts(40, 40, 30) == [0]
    assert tile_starts(30, 40, 30) == [0]
    assert tile_starts(131, 40, 30) == [0, 23, 46, 68, 91]  # evenly spread, never more than the stride apart


def test_sliding_window_equals_whole_image_for_a_per_pixel_model():
    """Tiles blended with any positive weights must give back exactly the whole-image result."""
    seen: list = []
    forward = _per_pixel_model(5, multiple=8, seen=seen)
    batch = _random_batch(97, 131)
    whole = _probabilities(forward, batch, 8, InferenceOptions())
    seen.clear()
    tiled = _probabilities(forward, batch, 8, InferenceOptions(tile=37, overlap=0.25, batch_size=3))
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)
    assert torch.equal(tiled.argmax(1), whole.argmax(1))
    # 37 rounds up to 40; windows: 3 rows x 5 columns of 40x40 tiles, at most 3 per forward pass.
    assert {shape[1:] for shape in seen} == {(3, 40, 40)}
    assert sum(shape[0] for shape in seen) == 15 and max(shape[0] for shape in seen) == 3


def test_sliding_window_blends_overlaps_of_a_position_dependent_model():
    """A model whose output depends on where the tile sits: overlaps are weighted means, not overwritten."""

    def forward(batch: torch.Tensor) -> torch.Tensor:  # logit 0 grows across the tile, logit 1 is constant
        ramp = torch.linspace(0, 4, batch.shape[-1]).expand(batch.shape[0], 1, batch.shape[-2], -1)
        return torch.cat([ramp, torch.full_like(ramp, 2.0)], 1)

    tiled = _probabilities(forward, torch.zeros(1, 3, 16, 64), 1, InferenceOptions(tile=32, overlap=0.5))
    assert tiled.shape == (1, 2, 16, 64)
    assert torch.all(tiled.sum(1).sub(1).abs() < 1e-6)
    # Where two tiles overlap (columns 16..47), the result lies between the tiles' own values.
    single = forward(torch.zeros(1, 3, 16, 32)).softmax(1)[0, 0, 0]
    column = 24  # column 8 of the second tile, column 24 of the first
    low, high = sorted((float(single[24]), float(single[8])))
    assert low < float(tiled[0, 0, 0, column]) < high


def test_flip_tta_averages_the_mirrored_prediction():
    def forward(batch: torch.Tensor) -> torch.Tensor:  # not mirror-symmetric: adds a left-to-right ramp
        ramp = torch.linspace(-3, 3, batch.shape[-1]).expand(batch.shape[0], 1, batch.shape[-2], -1)
        return torch.cat([batch[:, :1] + ramp, batch[:, 1:2] - ramp, batch[:, 2:]], 1)

    batch = _random_batch(33, 47)
    plain = _probabilities(forward, batch, 1, InferenceOptions())
    tta = _probabilities(forward, batch, 1, InferenceOptions(flip_tta=True))
    expected = (forward(batch).softmax(1) + forward(batch.flip(-1)).softmax(1).flip(-1)) / 2
    assert tta.shape == plain.shape == (1, 3, 33, 47)
    torch.testing.assert_close(tta, expected)
    assert not torch.allclose(tta, plain)


def test_flip_tta_with_tiles_keeps_the_shape():
    forward = _per_pixel_model(4, multiple=16)
    batch = _random_batch(70, 90)
    result = _probabilities(forward, batch, 16, InferenceOptions(tile=32, flip_tta=True))
    whole = _probabilities(forward, batch, 16, InferenceOptions())
    assert result.shape == (1, 4, 70, 90)
    torch.testing.assert_close(result, whole, atol=1e-6, rtol=0)  # a per-pixel model is mirror-equivariant


def test_same_size_batches_keep_order_and_split_on_size_changes():
    a, b = np.zeros((4, 4, 3)), np.zeros((5, 4, 3))
    items = [("1", a), ("2", a), ("3", b), ("4", a), ("5", a), ("6", a)]
    batches = [[key for key, _ in batch] for batch in same_size_batches(iter(items), 2)]
    assert batches == [["1", "2"], ["3"], ["4", "5"], ["6"]]


# --- preprocessing and loading -----------------------------------------------------------------


def test_preprocessing_matches_the_training_pipeline():
    from segcli.data.transforms import build_pipeline

    image = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    normalization = Normalization(mode="imagenet", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    info = ModelInfo(arch="unet", encoder_name="resnet18", in_channels=3, classes=2, class_names=["a", "b"],
                     ignore_index=None, normalization=normalization)  # fmt: skip
    pipeline = build_pipeline([], "val_transforms", normalization, fill_label=255)
    expected = pipeline(image=image, mask=np.zeros((13, 17), np.uint8))["image"]
    assert torch.equal(to_batch([image], info)[0], expected)


@pytest.mark.parametrize("arch", ["unet", "fpn"])
def test_checkpoint_predicts_masks_of_any_input_size(checkpoints, arch):
    predictor = open_model(checkpoints[arch])
    assert predictor.kind == "checkpoint" and predictor.info.class_names == ["background", "disc", "square", "triangle"]
    assert predictor.info.size_multiple == (1 if arch == "unet" else 32)
    images = [np.random.default_rng(i).integers(0, 256, (97, 131, 3), dtype=np.uint8) for i in range(2)]
    masks = predictor.predict(images, InferenceOptions(batch_size=2))
    assert [mask.shape for mask in masks] == [(97, 131)] * 2
    assert all(mask.dtype == np.uint8 and mask.max() < 4 for mask in masks)
    if arch == "fpn":  # the padding is what makes this work: FPN itself refuses 97x131
        model = torch.load(checkpoints[arch], weights_only=True)
        assert model["model"]["size_multiple"] == 32
        with pytest.raises(RuntimeError, match="divisible by 32"):
            load_checkpoint_model(checkpoints[arch])[0](torch.zeros(1, 3, 97, 131))


def test_a_run_folder_means_its_best_checkpoint(checkpoints):
    assert resolve_model_path(checkpoints["unet"].parent) == checkpoints["unet"]


@pytest.mark.parametrize("arch", ["unet", "fpn"])
def test_a_loaded_checkpoint_is_the_saved_model_whatever_it_was_built_from(checkpoints, arch):
    """The model is built on the meta device (no random start weights: the checkpoint replaces them all): it must
    hold the saved tensors, nothing left on the meta device, and predict what the ordinarily built model does."""
    model, _ = load_checkpoint_model(checkpoints[arch])
    saved = torch.load(checkpoints[arch], weights_only=True)["state_dict"]
    assert not any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())
    assert all(parameter.requires_grad for parameter in model.parameters()) and not model.training
    ordinary = smp.create_model(arch, encoder_name="resnet18", encoder_weights=None, classes=4).eval()
    ordinary.load_state_dict(saved)
    batch = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), ordinary(batch), rtol=0, atol=0)


def test_a_model_with_tensors_outside_its_state_dict_is_built_the_ordinary_way(checkpoints, monkeypatch):
    """Non-persistent buffers (timm's relative-position tables) are not in a checkpoint: on the meta device they
    would stay empty, so such a model gets its ordinary construction."""
    from segcli.inference import loading

    real = loading.create_model

    def with_a_table(config):
        model = real(config)
        model.register_buffer("table", torch.arange(6.0), persistent=False)
        return model

    monkeypatch.setattr(loading, "create_model", with_a_table)
    model, _ = load_checkpoint_model(checkpoints["unet"])
    assert torch.equal(model.table, torch.arange(6.0))
    assert not any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])


def test_loading_errors_are_clear(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a segcli checkpoint"):
        open_model(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither ckpt_best.pth"):
        open_model(tmp_path)
    with pytest.raises(CheckpointError, match="file not found"):
        open_model(tmp_path / "missing.pth")
    with quiet_torch_deprecations():
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(tmp_path / "model.torchscript.pt"))
    with pytest.raises(CheckpointError, match=r"sidecar model.torchscript.pt.json is missing"):
        open_model(tmp_path / "model.torchscript.pt")


# --- scoring ------------------------------------------------------------------------------------

R, G, B = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_evaluation_equals_a_hand_computed_confusion_matrix(tmp_path):
    """A model that predicts the brightest colour channel, two 2x3 images, label 255 ignored."""

    def forward(batch: torch.Tensor) -> torch.Tensor:  # classes 0/1/2 = red/green/blue; class 3 never wins
        return torch.cat([batch, torch.full_like(batch[:, :1], -10.0)], 1)

    info = _info(classes=4, ignore_index=255, names=["red", "green", "blue", "never"])
    predictor = Predictor(model_scores(forward, 1), info, "test", tmp_path)
    images = [
        np.array([[R, G, B], [R, R, B]], np.uint8),  # predicted [[0, 1, 2], [0, 0, 2]]
        np.array([[B, B, G], [R, G, G]], np.uint8),  # predicted [[2, 2, 1], [0, 1, 1]]
    ]
    masks = [np.array([[0, 1, 1], [255, 0, 2]], np.uint8), np.array([[2, 0, 1], [0, 255, 2]], np.uint8)]
    pairs = [
        Pair(write_png(tmp_path / "images" / f"{i}.png", image), write_png(tmp_path / "labels" / f"{i}.png", mask))
        for i, (image, mask) in enumerate(zip(images, masks, strict=True))
    ]
    result = evaluate_pairs(predictor, pairs, InferenceOptions(), "val")
    expected = [[3, 0, 1, 0], [0, 2, 1, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    assert result.matrix.tolist() == expected
    m = result.metrics
    assert m["val/IoU/red"] == pytest.approx(3 / 4) and m["val/Dice/red"] == pytest.approx(6 / 7)
    assert m["val/IoU/green"] == pytest.approx(2 / 4) and m["val/Dice/green"] == pytest.approx(4 / 6)
    assert m["val/IoU/blue"] == pytest.approx(2 / 5) and m["val/Dice/blue"] == pytest.approx(4 / 7)
    assert np.isnan(m["val/IoU/never"]) and np.isnan(m["val/Dice/never"])  # absent: NaN, not in the mean
    assert m["val/mIoU"] == pytest.approx((3 / 4 + 2 / 4 + 2 / 5) / 3)
    assert m["val/mDCC"] == pytest.approx((6 / 7 + 4 / 6 + 4 / 7) / 3)
    assert m["val/pixel_accuracy"] == pytest.approx(7 / 10)
    document = result.to_dict()
    assert document["per_class"]["never"] == {"IoU": None, "Dice": None, "pixels": 0}
    assert document["per_class"]["red"]["pixels"] == 4 and document["images"] == 2


def test_the_worst_images_are_kept_from_the_scoring_pass(tmp_path):
    """`keep_worst` draws what was scored: each image is predicted once, and the kept rows are `worst()`'s."""
    predicted = []

    def forward(batch: torch.Tensor) -> torch.Tensor:  # the brightest colour channel wins
        predicted.append(len(batch))
        return batch

    info = _info(classes=3, names=["red", "green", "blue"])
    predictor = Predictor(model_scores(forward, 1), info, "test", tmp_path)
    right = np.array([[R, G], [B, B]], np.uint8)  # predicted [[0, 1], [2, 2]]
    masks = {"a": [[0, 1], [2, 2]], "b": [[1, 1], [2, 2]], "c": [[1, 0], [0, 1]], "d": [[0, 1], [2, 0]]}
    pairs = [Pair(write_png(tmp_path / "images" / f"{name}.png", right),
                  write_png(tmp_path / "labels" / f"{name}.png", np.array(mask, np.uint8)))
             for name, mask in masks.items()]  # fmt: skip
    result = evaluate_pairs(predictor, pairs, InferenceOptions(batch_size=3), "val", keep_worst=2)
    assert sum(predicted) == len(pairs)  # no second prediction for the kept ones
    assert [score.name for score in result.worst(2)] == ["c.png", "b.png"]  # mIoU 0, 0.5 (then d 2/3, a 1)
    rows = result.worst_samples
    assert [row.name for row in rows] == ["c.png", "b.png"] and [row.caption for row in rows] == [
        "mIoU 0.000",
        "mIoU 0.500",
    ]
    assert rows[1].prediction.tolist() == [[0, 1], [2, 2]] and rows[1].mask.tolist() == masks["b"]
    assert evaluate_pairs(predictor, pairs, InferenceOptions(), "val").worst_samples == []  # only when asked
