"""The transform registry: experiment `{name, params}` entries -> one Albumentations Compose."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from segcli.config.schema import TransformSpec
from segcli.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_pipeline,
    build_transform,
    is_normalize,
    lookup_transform,
    normalization,
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


def test_is_normalize():
    assert is_normalize(spec("normalize"))
    assert is_normalize(spec("Normalize", mean=0.5))
    assert not is_normalize(spec("horizontal_flip"))


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
        build_pipeline(specs, "train_transforms", in_channels=3)
    message = str(info.value)
    assert message.startswith("train_transforms[1].name: unknown transform 'horizntal_flip'")
    assert "'horizontal_flip'" in message


def test_unknown_parameter_error_names_index_and_close_match():
    specs = [spec("horizontal_flip"), spec("resize", height=8, widht=8)]
    with pytest.raises(ConfigError) as info:
        build_pipeline(specs, "train_transforms", in_channels=3)
    message = str(info.value)
    assert message.startswith("train_transforms[1].params:")
    assert "no parameter 'widht'" in message
    assert "did you mean 'width'?" in message


def test_bad_parameter_value_error_names_index():
    specs = [spec("horizontal_flip", p=2)]
    with pytest.raises(ConfigError) as info:
        build_pipeline(specs, "val_transforms", in_channels=3)
    message = str(info.value)
    assert message.startswith("val_transforms[0].params: invalid parameters for horizontal_flip")
    assert "\n" not in message  # one line, as every user error
    assert "less than or equal to 1" in message  # Albumentations' own check of p, passed through


def test_missing_required_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train_transforms\[0\]\.params: invalid parameters for resize"):
        build_pipeline([spec("resize", height=8)], "train_transforms", in_channels=3)


# --------------------------------------------------------------------------- Normalize + tensors


def test_normalize_appended_once_before_to_tensor():
    pipeline = build_pipeline([spec("horizontal_flip", p=0.5)], "train_transforms", in_channels=3)
    assert kinds(pipeline) == ["HorizontalFlip", "Normalize", "ToTensorV2"]
    normalize = pipeline.transforms[1]
    assert tuple(normalize.mean) == pytest.approx(IMAGENET_MEAN)
    assert tuple(normalize.std) == pytest.approx(IMAGENET_STD)


def test_empty_list_still_normalizes():
    pipeline = build_pipeline([], "val_transforms", in_channels=3)
    assert kinds(pipeline) == ["Normalize", "ToTensorV2"]


@pytest.mark.parametrize("name", ["normalize", "Normalize"])
def test_user_normalize_not_duplicated(name):
    specs = [spec(name, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]), spec("horizontal_flip")]
    pipeline = build_pipeline(specs, "train_transforms", in_channels=3)
    assert kinds(pipeline) == ["Normalize", "HorizontalFlip", "ToTensorV2"]
    assert kinds(pipeline).count("Normalize") == 1


def test_without_to_tensor():
    pipeline = build_pipeline([], "val_transforms", in_channels=3, to_tensor=False)
    assert kinds(pipeline) == ["Normalize"]
    image, mask = pair()
    out = pipeline(image=image, mask=mask)
    assert isinstance(out["image"], np.ndarray)
    assert out["image"].shape == (40, 50, 3)


def test_pipeline_output_is_float_chw_tensor_and_mask_tensor():
    pipeline = build_pipeline([spec("horizontal_flip", p=0.5)], "train_transforms", in_channels=3)
    image, mask = pair(height=40, width=50)
    out = pipeline(image=image, mask=mask)
    assert isinstance(out["image"], torch.Tensor)
    assert out["image"].dtype == torch.float32
    assert out["image"].shape == (3, 40, 50)
    assert isinstance(out["mask"], torch.Tensor)
    assert out["mask"].shape == (40, 50)
    assert not out["mask"].is_floating_point()
    assert set(out["mask"].unique().tolist()) <= {0, 1, 2, 3}


def test_default_normalization_values():
    pipeline = build_pipeline([], "val_transforms", in_channels=3)
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


def test_user_normalization_values_used():
    specs = [spec("normalize", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])]
    pipeline = build_pipeline(specs, "val_transforms", in_channels=3)
    image = np.full((3, 3, 3), 255, dtype=np.uint8)
    out = pipeline(image=image, mask=np.zeros((3, 3), dtype=np.uint8))["image"]
    assert torch.allclose(out, torch.full((3, 3, 3), 2.0), atol=1e-5)


def test_mask_not_normalized():
    pipeline = build_pipeline([], "val_transforms", in_channels=3)
    image, mask = pair(height=8, width=8)
    out = pipeline(image=image, mask=mask)
    assert torch.equal(out["mask"], torch.from_numpy(mask))


def test_resize_uses_height_then_width():
    # Albumentations Resize(height, width): an image 32 high and 64 wide is (C, 32, 64) after ToTensorV2.
    pipeline = build_pipeline([spec("resize", height=32, width=64)], "train_transforms", in_channels=3)
    image, mask = pair(height=50, width=40)
    out = pipeline(image=image, mask=mask)
    assert out["image"].shape == (3, 32, 64)
    assert out["mask"].shape == (32, 64)


def test_single_channel_pipeline():
    pipeline = build_pipeline([spec("resize", height=16, width=8)], "train_transforms", in_channels=1)
    normalize = pipeline.transforms[1]
    assert tuple(normalize.mean) == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    assert tuple(normalize.std) == pytest.approx((sum(IMAGENET_STD) / 3,))
    image, mask = pair(height=20, width=20, channels=1)
    out = pipeline(image=image, mask=mask)
    assert out["image"].shape == (1, 16, 8)
    assert out["image"].dtype == torch.float32


# --------------------------------------------------------------------------- normalization()


def test_normalization_defaults_to_imagenet():
    mean, std = normalization([spec("horizontal_flip")], in_channels=3)
    assert mean == pytest.approx(list(IMAGENET_MEAN))
    assert std == pytest.approx(list(IMAGENET_STD))


def test_normalization_imagenet_adapted_to_one_channel():
    mean, std = normalization([], in_channels=1)
    assert mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    assert len(mean) == len(std) == 1


def test_normalization_imagenet_adapted_to_four_channels():
    mean, std = normalization([], in_channels=4)
    assert mean == pytest.approx([0.449] * 4)
    assert std == pytest.approx([0.226] * 4)


def test_normalization_returns_user_values():
    specs = [spec("horizontal_flip"), spec("normalize", mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])]
    mean, std = normalization(specs, in_channels=3)
    assert mean == pytest.approx([0.1, 0.2, 0.3])
    assert std == pytest.approx([0.4, 0.5, 0.6])


def test_normalization_user_single_channel_values():
    mean, std = normalization([spec("Normalize", mean=[0.3], std=[0.2])], in_channels=1)
    assert mean == pytest.approx([0.3])
    assert std == pytest.approx([0.2])


def test_normalization_user_scalar_broadcast():
    mean, std = normalization([spec("normalize", mean=0.3, std=0.2)], in_channels=3)
    assert mean == pytest.approx([0.3, 0.3, 0.3])
    assert std == pytest.approx([0.2, 0.2, 0.2])


def test_normalization_user_normalize_without_params_is_imagenet():
    mean, std = normalization([spec("normalize")], in_channels=3)
    assert mean == pytest.approx(list(IMAGENET_MEAN))
    assert std == pytest.approx(list(IMAGENET_STD))


def test_to_tensor_is_the_albumentations_one():
    pipeline = build_pipeline([], "val_transforms", in_channels=3)
    assert isinstance(pipeline.transforms[-1], ToTensorV2)
