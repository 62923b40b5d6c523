"""The transform registry: experiment `{name, params}` entries -> one Albumentations Compose."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from segcli.artifacts.model_info import Normalization
from segcli.config.schema import ExplicitNormalization, TransformSpec
from segcli.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PixelStats,
    build_pipeline,
    build_transform,
    lookup_transform,
    preview_pipeline,
    resolve_normalization,
    snake_case,
    transform_registry,
)
from segcli.errors import ConfigError


def spec(name: str, **params) -> TransformSpec:
    return TransformSpec(name=name, params=params)


def pair(height: int = 40, width: int = 50, channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    mask = rng.integers(0, 4, size=(height, width), dtype=np.uint8)
    return image, mask


def kinds(pipeline) -> list[str]:
    return [type(t).__name__ for t in pipeline.transforms]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("class_name", "alias"),
    [
        ("RandomRotate90", "random_rotate_90"),
        ("HorizontalFlip", "horizontal_flip"),
        ("PadIfNeeded", "pad_if_needed"),
        ("CLAHE", "clahe"),
        ("RGBShift", "rgb_shift"),
        ("Resize", "resize"),
        ("GaussNoise", "gauss_noise"),
        ("RandomBrightnessContrast", "random_brightness_contrast"),
        ("CenterCrop3D", "center_crop_3d"),
    ],
)
def test_snake_case(class_name, alias):
    assert snake_case(class_name) == alias


@pytest.mark.parametrize(
    ("alias", "class_name"),
    [
        ("horizontal_flip", "HorizontalFlip"),
        ("random_rotate_90", "RandomRotate90"),
        ("pad_if_needed", "PadIfNeeded"),
        ("clahe", "CLAHE"),
        ("rgb_shift", "RGBShift"),
        ("resize", "Resize"),
        ("normalize", "Normalize"),
    ],
)
def test_lookup_by_alias_and_class_name_agree(alias, class_name):
    by_alias = lookup_transform(alias)
    by_class = lookup_transform(class_name)
    assert by_alias is by_class
    assert by_alias is getattr(A, class_name)


def test_registry_holds_only_albumentations_transforms():
    registry = transform_registry()
    assert len(registry) > 50
    for cls in registry.values():
        assert issubclass(cls, A.BasicTransform)
    assert "Compose" not in registry
    assert "to_tensor_v2" not in registry  # ToTensorV2 is added by the pipeline, never listed by users


def test_unknown_transform_suggests_close_match():
    with pytest.raises(KeyError) as info:
        lookup_transform("horizntal_flip")
    message = info.value.args[0]
    assert "unknown transform 'horizntal_flip'" in message
    assert "'horizontal_flip'" in message
    assert "did you mean" in message


def test_unknown_transform_suggests_aliases_not_class_names():
    with pytest.raises(KeyError) as info:
        lookup_transform("HorizntalFlip")
    message = info.value.args[0]
    assert "HorizontalFlip" not in message  # suggestions are the snake_case aliases


def test_lookup_is_case_sensitive_for_aliases():
    with pytest.raises(KeyError):
        lookup_transform("Horizontal_Flip")


@pytest.mark.parametrize("name", ["normalize", "Normalize"])
def test_a_normalize_in_a_transform_list_is_refused_with_the_key_to_use(name):
    """One source of truth: a Normalize in one list would differ from the other list and from inference."""
    with pytest.raises(ConfigError, match=r"train_transforms\[1\]: normalisation .* experiment key `normalize:`"):
        build_pipeline([spec("horizontal_flip"), spec(name, mean=0.5)], "train_transforms", IMAGENET, fill_label=255)


# --------------------------------------------------------------------------- building


def test_build_transform_passes_params():
    transform = build_transform(spec("resize", height=16, width=24), "train_transforms[0]")
    assert isinstance(transform, A.Resize)
    assert (transform.height, transform.width) == (16, 24)
    flip = build_transform(spec("HorizontalFlip", p=0.25), "train_transforms[1]")
    assert isinstance(flip, A.HorizontalFlip)
    assert flip.p == pytest.approx(0.25)


def test_unknown_name_error_names_the_list_index():
    specs = [spec("resize", height=8, width=8), spec("horizntal_flip")]
    with pytest.raises(ConfigError) as info:
        build_pipeline(specs, "train_transforms", IMAGENET, fill_label=255)
    message = str(info.value)
    assert message.startswith("train_transforms[1].name: unknown transform 'horizntal_flip'")
    assert "'horizontal_flip'" in message


def test_unknown_parameter_error_names_index_and_close_match():
    specs = [spec("horizontal_flip"), spec("resize", height=8, widht=8)]
    with pytest.raises(ConfigError) as info:
        build_pipeline(specs, "train_transforms", IMAGENET, fill_label=255)
    message = str(info.value)
    assert message.startswith("train_transforms[1].params:")
    assert "no parameter 'widht'" in message
    assert "did you mean 'width'?" in message


def test_bad_parameter_value_error_names_index():
    specs = [spec("horizontal_flip", p=2)]
    with pytest.raises(ConfigError) as info:
        build_pipeline(specs, "val_transforms", IMAGENET, fill_label=255)
    message = str(info.value)
    assert message.startswith("val_transforms[0].params: invalid parameters for horizontal_flip")
    assert "\n" not in message  # one line, as every user error
    assert "less than or equal to 1" in message  # Albumentations' own check of p, passed through


def test_missing_required_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train_transforms\[0\]\.params: invalid parameters for resize"):
        build_pipeline([spec("resize", height=8)], "train_transforms", IMAGENET, fill_label=255)


# --------------------------------------------------------------------------- normalisation + tensors

IMAGENET = Normalization(mode="imagenet", mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


def test_pipeline_is_unit_range_transforms_normalisation_tensors():
    pipeline = build_pipeline([spec("horizontal_flip", p=0.5)], "train_transforms", IMAGENET, fill_label=255)
    assert kinds(pipeline) == ["UnitRange", "HorizontalFlip", "NormalizeInput", "ToTensorV2"]
    assert kinds(build_pipeline([], "val_transforms", IMAGENET, fill_label=255)) == [
        "UnitRange",
        "NormalizeInput",
        "ToTensorV2",
    ]


def test_preview_pipelines_keep_images_displayable():
    pipeline = preview_pipeline([], "val_transforms", 255.0, fill_label=255)
    assert kinds(pipeline) == ["UnitRange"]
    image, mask = pair()
    out = pipeline(image=image, mask=mask)
    assert isinstance(out["image"], np.ndarray) and out["image"].dtype == np.uint8
    assert out["image"].shape == (40, 50, 3)


def test_pipeline_output_is_float_chw_tensor_and_mask_tensor():
    pipeline = build_pipeline([spec("horizontal_flip", p=0.5)], "train_transforms", IMAGENET, fill_label=255)
    image, mask = pair(height=40, width=50)
    out = pipeline(image=image, mask=mask)
    assert isinstance(out["image"], torch.Tensor)
    assert out["image"].dtype == torch.float32
    assert out["image"].shape == (3, 40, 50)
    assert isinstance(out["mask"], torch.Tensor)
    assert out["mask"].shape == (40, 50)
    assert not out["mask"].is_floating_point()
    assert set(out["mask"].unique().tolist()) <= {0, 1, 2, 3}


def test_imagenet_values():
    pipeline = build_pipeline([], "val_transforms", IMAGENET, fill_label=255)
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[..., 1] = 255
    out = pipeline(image=image, mask=np.zeros((4, 6), dtype=np.uint8))["image"]
    expected = [
        (0.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
        (1.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
        (0.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
    ]
    for channel in range(3):
        assert torch.allclose(out[channel], torch.full((4, 6), expected[channel]), atol=1e-5)


def test_mask_not_normalized():
    pipeline = build_pipeline([], "val_transforms", IMAGENET, fill_label=255)
    image, mask = pair(height=8, width=8)
    out = pipeline(image=image, mask=mask)
    assert torch.equal(out["mask"], torch.from_numpy(mask))


def test_resize_uses_height_then_width():
    # Albumentations Resize(height, width): an image 32 high and 64 wide is (C, 32, 64) after ToTensorV2.
    pipeline = build_pipeline([spec("resize", height=32, width=64)], "train_transforms", IMAGENET, fill_label=255)
    image, mask = pair(height=50, width=40)
    out = pipeline(image=image, mask=mask)
    assert out["image"].shape == (3, 32, 64)
    assert out["mask"].shape == (32, 64)


def test_to_tensor_is_the_albumentations_one():
    pipeline = build_pipeline([], "val_transforms", IMAGENET, fill_label=255)
    assert isinstance(pipeline.transforms[-1], ToTensorV2)


# --------------------------------------------------------------------------- resolve_normalization()

GREY = PixelStats(255.0, [0.4], [0.2])


@pytest.mark.parametrize(
    ("setting", "channels", "stats", "expected"),
    [
        ("imagenet", 3, PixelStats(255.0), {"mode": "imagenet", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                                             "max_pixel_value": 255.0}),
        ("imagenet", 1, PixelStats(4095.0), {"mode": "imagenet", "mean": [sum(IMAGENET_MEAN) / 3],
                                              "std": [sum(IMAGENET_STD) / 3], "max_pixel_value": 4095.0}),
        ("dataset", 1, GREY, {"mode": "dataset", "mean": [0.4], "std": [0.2], "max_pixel_value": 255.0}),
        ("image", 3, PixelStats(255.0), {"mode": "image", "mean": None, "std": None, "max_pixel_value": 255.0}),
        ("min_max", 1, PixelStats(1.0), {"mode": "min_max", "mean": None, "std": None, "max_pixel_value": 1.0}),
        (ExplicitNormalization(mean=[0.3], std=[0.2]), 3, PixelStats(65535.0),
         {"mode": "explicit", "mean": [0.3] * 3, "std": [0.2] * 3, "max_pixel_value": 65535.0}),
        (ExplicitNormalization(mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6], max_pixel_value=1000), 3, PixelStats(255.0),
         {"mode": "explicit", "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "max_pixel_value": 1000.0}),
    ],
)  # fmt: skip
def test_resolve_normalization(setting, channels, stats, expected):
    resolved = resolve_normalization(setting, channels, stats).model_dump()
    assert resolved.keys() == expected.keys()
    for key, value in expected.items():
        assert resolved[key] == (pytest.approx(value) if value is not None else None), key


def test_imagenet_for_four_bands_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="normalize: dataset"):
        resolve_normalization("imagenet", 4, PixelStats(65535.0))


@pytest.mark.parametrize("mode", ["image", "min_max"])
def test_per_image_modes_give_float32_and_the_right_statistics(mode):
    """`normalize: image` crashed with "expected scalar type Double" (albumentations returns float64 for uint8)."""
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    spec_ = resolve_normalization(mode, 3, PixelStats(255.0))
    out = build_pipeline([], "val_transforms", spec_, fill_label=255)(image=image, mask=np.zeros((9, 11), np.uint8))[
        "image"
    ]
    assert out.dtype == torch.float32
    if mode == "image":
        torch.testing.assert_close(out.mean((1, 2)), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.std((1, 2), correction=0), torch.ones(3), atol=1e-4, rtol=0)
    else:
        assert float(out.min()) == 0.0 and float(out.max()) == pytest.approx(1.0)


def test_sixteen_bit_images_scale_by_their_bit_depth():
    """12-bit data in 16-bit files: (pixel / 4095 - mean) / std (inference feeds images through this pipeline)."""
    image = np.array([[[0], [4095]]], np.uint16)
    spec_ = resolve_normalization(ExplicitNormalization(mean=[0.5], std=[0.5]), 1, PixelStats(4095.0))
    out = build_pipeline([], "val_transforms", spec_, fill_label=255)(image=image, mask=np.zeros((1, 2), np.uint8))[
        "image"
    ]
    torch.testing.assert_close(out, torch.tensor([[[-1.0, 1.0]]]))
