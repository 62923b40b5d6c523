"""What the data decides: classes and labels, input, domain, geometry, class balance and augmentation.

Pure functions of a Fingerprint: no files, no models. Each returns its decisions with the reason and the
measurement behind it, which become the plan file's comments. The compute half (model, batch size, epochs,
learning rate) is in budget.py.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from segcli.data.check_report import SplitStats
from segcli.data.checks import void_label
from segcli.errors import DatasetError
from segcli.planning.fingerprint import Fingerprint

STRIDE = 32  # crops in multiples of the encoders' output stride (Unet pads other sizes itself, but slower)
CROP_CAP = {"cpu": 256, "gpu": 512}  # largest crop side: CPU steps stay short enough for many updates
LARGE_SIDE = 1024  # images beyond this are validated on a centre crop and predicted in tiles
VAL_CROP = 1024
SAMPLING_AREA = 0.6  # rare-class crops only where a crop covers less than this share of an image
RARE_CLASS_SHARE = 0.33  # nnU-Net oversamples foreground in a third of its patches
IMBALANCE = 10  # median class / rarest class above this: median-frequency class weights
DOMAINS = ("natural", "aerial", "microscopy", "medical")


@dataclass(frozen=True)
class Decision:
    """One planned key (`model.arch`, `batch_size`, `train_transforms[0]`) or, with key None, a note."""

    key: str | None
    value: Any
    reason: str


@dataclass
class DataPlan:
    class_names: list[str]
    ignore_index: int | None
    label_map: dict[int, int] | None
    in_channels: int
    pretrained: bool
    domain: str
    crop: tuple[int, int] | None
    """(height, width) of the training crops; None: whole images."""
    val_size: tuple[int, int]
    """(height, width) of the validation images as the model sees them."""
    decisions: list[Decision] = field(default_factory=list)
    notes: list[Decision] = field(default_factory=list)
    long_run_augmentations: list[Decision] = field(default_factory=list)
    """Added once the run is long enough (budget.LONG_RUN_EPOCHS)."""


def _floor(value: int, multiple: int = STRIDE) -> int:
    return max(multiple, value // multiple * multiple)


def _listing(values: list[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


def plan_classes(fp: Fingerprint, names: list[str] | None) -> tuple[list[str], int | None, dict | None, list[Decision]]:
    """Class names, the ignored label and the label map, from the stored mask values."""
    declared, values, masks = fp.declared, fp.values, fp.train.masks_read
    source = "--classes" if names else declared.source
    names = names or declared.class_names
    if declared.ids and source == declared.source:
        ids = declared.ids
        others = [value for value in values if value not in ids.values()]
        label_map = {stored: index for index, stored in enumerate(ids.values())}
        label_map.update({value: 255 for value in others})
        why = f"{source} gives stored ids {_listing(list(ids.values()))} for {len(ids)} classes"
        if others:
            why += f"; the other values in the masks ({_listing(others)}) are ignored as 255"
        decisions = [Decision("label_map", label_map, why)]
        if others:
            decisions.append(Decision("ignore_index", 255, "the ids that are not classes"))
        return list(ids), 255 if others else None, label_map, decisions
    if set(values) <= {0, 255} and fp.train.binary_255_masks:
        names = names or ["background", "foreground"]
        if len(names) != 2:
            raise DatasetError(f"the masks hold only 0 and 255 (binary) but {source} names {len(names)} classes")
        why = f"{fp.train.binary_255_masks} of {masks} masks hold only 0/255: saved binary masks, 255 is class 1"
        return names, None, {255: 1}, [Decision("label_map", {255: 1}, why)]
    decisions: list[Decision] = []
    ignore = declared.ignore_index if source == declared.source else None
    if ignore is not None:
        decisions.append(Decision("ignore_index", ignore, f"{source} declares label {ignore} as void"))
    if names:
        void = void_label(fp.train, len(names), ignore)
        if void is not None and ignore is None:
            ignore = void
            share = fp.masks_with(void) / masks
            why = f"value {void}, just past the {len(names)} classes, is in {share:.0%} of the masks: a void label"
            decisions.append(Decision("ignore_index", void, why))
    if ignore is None and 255 in values and len(values) > 1:
        ignore = 255
        why = f"value 255 in {fp.masks_with(255)} of {masks} masks, far past the other values: unlabelled pixels"
        decisions.append(Decision("ignore_index", 255, why))
    labels = [value for value in values if value != ignore]
    if names and labels == list(range(len(labels))) and len(labels) <= len(names):
        return names, ignore, None, decisions
    if not names:
        if labels == list(range(len(labels))):
            names = [f"class_{value}" for value in labels]
            return names, ignore, None, decisions
        names = [f"class_{value}" for value in labels]
    if len(labels) != len(names):
        raise DatasetError(
            f"the masks hold {len(labels)} values ({_listing(labels)}) but {source} names {len(names)} classes; name "
            'the stored id of each class in a dataset.json beside the data ({"labels": {"road": 7, ...}}) or pass '
            "--classes with one name per value"
        )
    label_map = {stored: index for index, stored in enumerate(labels)}
    why = f"sparse ids {_listing(labels)} become classes 0..{len(labels) - 1}"
    decisions.append(Decision("label_map", label_map, why))
    return names, ignore, label_map, decisions


def guess_domain(fp: Fingerprint) -> tuple[str, str]:
    channels, bits = fp.channels, fp.train.bits_used
    height, width = fp.size
    if channels >= 4:
        return "aerial", f"{channels} bands: multispectral imagery"
    if channels == 1:
        if bits and bits > 8:
            return "microscopy", f"one {bits}-bit band"
        return "medical", "one 8-bit grey band"
    if max(height, width) > LARGE_SIDE and abs(height - width) <= 0.1 * max(height, width):
        return "aerial", f"large square RGB tiles ({width}x{height})"
    return "natural", f"{width}x{height} RGB photos"


def plan_crop(fp: Fingerprint, device: str, square: bool) -> tuple[tuple[int, int] | None, str]:
    height, width = fp.size
    cap = CROP_CAP[device]
    crop_h, crop_w = _floor(min(height, cap)), _floor(min(width, cap))
    if square:
        crop_h = crop_w = min(crop_h, crop_w)
    smallest = min((sizes.small for sizes in fp.objects.values()), default=None)
    objects = f", objects down to {smallest:.0f} px" if smallest is not None else ""
    if (crop_h, crop_w) == (height, width):
        return None, f"images {width}x{height}{objects}: whole images fit a {device} step"
    why = f"images {width}x{height}{objects}; {crop_w}x{crop_h} crops (multiples of {STRIDE}, up to {cap} on {device})"
    return (crop_h, crop_w), why


def _augmentations(domain: str, ignore: int | None, channels: int) -> tuple[list[Decision], list[Decision]]:
    """(always, long runs only): the second list makes the task harder, which a short run cannot afford."""
    flip = {"name": "horizontal_flip", "params": {"p": 0.5}}
    if domain in ("aerial", "microscopy"):
        why = f"{domain}: no up or down, so flips both ways and 90-degree turns"
        turns = [{"name": "vertical_flip", "params": {"p": 0.5}}, {"name": "random_rotate_90", "params": {"p": 0.5}}]
        return [Decision("train_transforms", step, why) for step in (flip, *turns)], []
    contrast = {"name": "random_brightness_contrast", "params": {"p": 0.5}}
    if domain == "medical":
        elastic = {"name": "elastic_transform", "params": {"alpha": 30, "sigma": 6, "p": 0.2}}
        return [Decision("train_transforms", flip, "medical: left-right mirror images are plausible")], [
            Decision("train_transforms", contrast, "medical: intensity varies between scanners"),
            Decision("train_transforms", {"name": "random_gamma", "params": {"p": 0.3}}, "medical: intensity"),
            Decision("train_transforms", elastic, "medical: light elastic deformation of tissue"),
        ]
    scale = {"name": "affine", "params": {"scale": [0.75, 1.25], "p": 0.5}}
    if ignore is not None:
        scale["params"]["fill_mask"] = ignore  # borders of a zoomed-out image are not a class
    else:
        scale["params"]["scale"] = [1.0, 1.25]  # zoom in only: no border that would be labelled class 0
    extra = [Decision("train_transforms", scale, "natural scenes: objects appear at many distances")]
    if channels == 3:
        extra.append(Decision("train_transforms", contrast, "natural scenes: light and exposure vary"))
    return [Decision("train_transforms", flip, "natural scenes: mirror images are as likely as the originals")], extra


def plan_data(
    fp: Fingerprint,
    *,
    names: list[str] | None,
    device: str,
    domain: str | None,
    pretrained: bool | None,
    weights_reachable: bool,
) -> DataPlan:
    """Every decision the data alone settles."""
    class_names, ignore, label_map, decisions = plan_classes(fp, names)
    channels, dtype, bits = fp.channels, fp.train.dtype, fp.train.bits_used
    notes = [Decision(None, None, f"classes: {', '.join(class_names)}")]
    decisions.append(Decision("model.classes", len(class_names), f"{len(class_names)} classes"))
    depth = "8-bit" if dtype == "uint8" else f"{dtype}, {bits}-bit values" if bits else dtype
    decisions.append(Decision("model.in_channels", channels, f"{channels}-channel {depth} images"))
    rgb8 = channels == 3 and dtype == "uint8"
    use_weights = rgb8 and (pretrained if pretrained is not None else weights_reachable)
    if use_weights:
        decisions.append(Decision("model.encoder_weights", "imagenet", "8-bit RGB: ImageNet weights"))
        decisions.append(Decision("normalize", "imagenet", "what the ImageNet weights were trained with"))
    else:
        why = (
            "--no-pretrained"
            if pretrained is False
            else "no pretrained weights reachable (offline, none cached)"
            if rgb8
            else f"{channels}-channel {depth} images: no ImageNet weights fit them"
        )
        decisions.append(Decision("model.encoder_weights", None, f"{why}: trained from scratch"))
        stats = fp.train.channel_mean_std(fp.train.max_pixel_value())
        measured = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(*stats, strict=True)) if stats else "-"
        decisions.append(Decision("normalize", "dataset", f"training images' mean/std per channel {measured}"))
    if domain is None:
        domain, why = guess_domain(fp)
        notes.append(Decision(None, None, f"domain: {domain} (guessed from {why}; --domain to change)"))
    else:
        notes.append(Decision(None, None, f"domain: {domain} (--domain)"))
    rotations = domain in ("aerial", "microscopy")
    crop, why = plan_crop(fp, device, square=rotations)
    transforms = []
    if crop is not None:
        transforms.append(
            Decision("train_transforms", {"name": "random_crop", "params": {"height": crop[0], "width": crop[1]}}, why)
        )
    else:
        notes.append(Decision(None, None, f"geometry: {why}"))
    always, long_runs = _augmentations(domain, ignore, channels)
    decisions += transforms + always
    height, width = val_size = fp.size
    if max(height, width) > LARGE_SIDE:
        side = _floor(min(VAL_CROP, height, width))
        val_size = (side, side)
        center = {"name": "center_crop", "params": {"height": side, "width": side}}
        why = f"images {width}x{height}: validated on a centre {side} crop"
        decisions.append(Decision("val_transforms", center, why))
        tile = crop[0] if crop else side
        why = f"inference: in tiles, --tile {tile} --overlap 0.25 (images of {width}x{height})"
        notes.append(Decision(None, None, why))
    else:
        notes.append(Decision(None, None, f"inference: whole images ({width}x{height})"))
    decisions += _class_balance(fp, class_names, label_map, crop)
    plan = DataPlan(
        class_names, ignore, label_map, channels, use_weights, domain, crop, val_size, decisions, notes, long_runs
    )
    plan.notes.append(_validation_note(fp))
    return plan


def class_stats(fp: Fingerprint, num_classes: int, label_map: dict[int, int] | None) -> SplitStats:
    """The training split's pixels per class, through the label map (what the run's own check will count)."""
    pixels: dict[int, int] = {}
    for value, count in fp.train.value_pixels.items():
        label = (label_map or {}).get(value, value)
        if 0 <= label < num_classes:
            pixels[label] = pixels.get(label, 0) + count
    return SplitStats(value_pixels=pixels)


def _class_balance(fp, class_names, label_map, crop) -> list[Decision]:
    stats = class_stats(fp, len(class_names), label_map)
    pixels = stats.value_pixels
    if len(pixels) < 2:
        return []
    median = statistics.median(pixels.values())
    rarest = min(pixels, key=pixels.get)
    ratio = median / pixels[rarest]
    if ratio <= IMBALANCE:
        return []
    share = pixels[rarest] / sum(pixels.values())
    why = (
        f"{class_names[rarest]} has {share:.2%} of the pixels, 1/{ratio:.0f} of the median class: "
        "median-frequency balancing (SegNet)"
    )
    decisions = [Decision("loss", {"terms": ["cross_entropy", "dice"], "class_weights": "median_frequency"}, why)]
    rare = [class_names[label] for label in stats.rare_classes(len(class_names))]
    if crop is not None and crop[0] * crop[1] < SAMPLING_AREA * fp.size[0] * fp.size[1] and rare:
        why = (
            f"rare classes ({', '.join(rare)}: under half the median class's pixels) in {RARE_CLASS_SHARE:.0%} "
            "of the crops"
        )
        decisions.append(Decision("sampling", {"rare_class_crops": RARE_CLASS_SHARE}, why))
    return decisions


def _validation_note(fp: Fingerprint) -> Decision:
    val = fp.val.pairs if fp.val else 0
    train = fp.train.pairs
    if val >= 20 and train >= 100:
        return Decision(None, None, f"validation: the dataset's own val split ({val} images)")
    groups = f" --fold-groups '{fp.groups[0]}'" if fp.groups else ""
    kept = f" (file names form {fp.groups[1]} groups, kept whole)" if fp.groups else ""
    return Decision(
        None,
        None,
        f"validation: {train} train / {val} val images are few: for a steadier score train "
        f"with --folds 5{groups}{kept}",
    )
