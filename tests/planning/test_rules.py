"""`plan()`'s rules on hand-made fingerprints, with a probe that returns fixed measurements."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from segcli.config.loader import load_experiment_file, resolve_experiment
from segcli.data.check_report import SplitStats
from segcli.data.transforms import preview_pipeline
from segcli.errors import ConfigError, DatasetError
from segcli.planning.budget import BATCH_CAP, START_SECONDS, Target, plan
from segcli.planning.fingerprint import Declared, Fingerprint, ObjectSizes
from segcli.planning.plan_file import render

CAMVID = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist".split(",")
CAMVID_SHARES = [0.168, 0.233, 0.0098, 0.317, 0.045, 0.097, 0.0117, 0.0113, 0.0587, 0.0064, 0.0029, 0.039]
GB = 2**30


def split(values: dict[int, tuple[int, int]], *, masks: int, size=(192, 256), channels=3, dtype="uint8",
          max_value=255.0, binary_255=0) -> SplitStats:  # fmt: skip
    """A check's statistics for a split without a class list: {value: (pixels, masks holding it)}."""
    return SplitStats(
        pairs=masks, masks_read=masks, image_sizes=Counter({size: masks}), channels=Counter({channels: masks}),
        dtypes=Counter({dtype: masks}), max_value=max_value, binary_255_masks=binary_255,
        channel_sums=[0.4 * masks] * channels, sampled_pixels=masks,
        channel_products=[[0.2 * masks * (row == col) for col in range(channels)] for row in range(channels)],
        value_pixels={v: p for v, (p, _) in values.items()}, bad_values={v: [m, []] for v, (_, m) in values.items()},
        value_image_pixels={v: m * size[0] * size[1] for v, (_, m) in values.items()},
    )  # fmt: skip


def camvid_like(size=(192, 256), train=367, val=101, declared=None) -> Fingerprint:
    pixels = train * size[0] * size[1]
    values = {value: (int(share * pixels), train if value != 10 else 60) for value, share in enumerate(CAMVID_SHARES)}
    declared = declared or Declared("dataset.json", CAMVID, 11)
    objects = {2: ObjectSizes(400, 3, 9), 0: ObjectSizes(500, 60, 120)}
    return Fingerprint(Path("/data/camvid"), split(values, masks=train, size=size), split(values, masks=val, size=size),
                       objects, ("^[^_]+", 4), declared)  # fmt: skip


class FakeProbe:
    """Steps cost `step` seconds for batch 8 at 256x256 with resnet18 (more for larger encoders, pixels, images)
    and `fixed` + `per_image` bytes."""

    COST = {"resnet18": 1.0, "resnet34": 1.6, "resnet50": 2.6}

    def __init__(self, step=1.0, fixed=GB, per_image=GB // 4, lr=None):
        self.step, self.fixed, self.per_image, self.lr = step, fixed, per_image, lr
        self.calls = []

    def train_memory(self, exp, names, batch, size):
        self.calls.append(("memory", exp.model.encoder_name, batch, size))
        return self.fixed + self.per_image * batch

    def train_seconds(self, exp, names, batch, size):
        self.calls.append(("train", exp.model.encoder_name, batch, size))
        return self.step * self.COST[exp.model.encoder_name] * batch / 8 * size[0] * size[1] / 256**2

    def val_seconds(self, exp, names, batch, size):
        self.calls.append(("val", exp.model.encoder_name, batch, size))
        return self.step * self.COST[exp.model.encoder_name] * batch / 8 * size[0] * size[1] / 256**2 / 3

    def learning_rate(self, exp, names):
        return self.lr


def cpu(budget_minutes=20, memory=16 * GB) -> Target:
    return Target("cpu", memory, budget_minutes * 60, free_ram_bytes=memory)


def keys(run) -> dict:
    return run.experiment.model_dump(mode="json")


def test_camvid_like_plan():
    probe = FakeProbe()
    run = plan(camvid_like(), cpu(), probe)
    exp = run.experiment
    assert run.class_names == CAMVID
    assert exp.ignore_index == 11 and exp.label_map is None
    model = exp.model
    assert (model.arch, model.encoder_name, model.in_channels, model.classes) == ("Unet", "resnet18", 3, 11)
    assert exp.model.encoder_weights is None and exp.normalize == "dataset"  # offline: from scratch
    assert exp.loss.class_weights == "median_frequency"
    assert exp.precision == "32" and exp.batch_size == BATCH_CAP["cpu"]
    assert exp.train_transforms[0].name == "horizontal_flip"  # 256x192 images are trained whole on the CPU
    assert exp.sampling is None  # rare-class crops need crops
    assert exp.average is None and exp.scheduler.warmup_steps > 0
    assert "T_max" not in exp.scheduler.params  # the cosine spans the run, whatever max_epochs becomes
    notes = " ".join(note.reason for note in run.notes)
    assert "natural" in notes and "own val split (101 images)" in notes


def test_full_size_camvid_on_the_cpu_gets_crops_and_rare_class_sampling():
    run = plan(camvid_like(size=(360, 480)), cpu(120), FakeProbe())
    crop = run.experiment.train_transforms[0]
    assert crop.name == "random_crop" and crop.params == {"height": 256, "width": 256}
    assert run.experiment.sampling.rare_class_crops == pytest.approx(0.33)
    reason = next(d.reason for d in run.decisions if d.key == "sampling")
    assert "Pole" in reason and "Bicyclist" in reason and "Sky" not in reason


def test_every_crop_is_a_multiple_of_the_stride():
    for size in [(360, 480), (999, 1333), (77, 1500), (300, 300)]:
        run = plan(camvid_like(size=size), cpu(600), FakeProbe(step=0.01))
        crops = [t for t in run.experiment.train_transforms if t.name == "random_crop"]
        for t in crops:
            assert t.params["height"] % 32 == 0 and t.params["width"] % 32 == 0, size
            assert t.params["height"] <= size[0] and t.params["width"] <= size[1]


def test_crops_go_up_to_512_on_a_gpu():
    gpu = Target("gpu", 80 * GB, 3600, bf16=True, free_ram_bytes=64 * GB)
    crop = plan(camvid_like(size=(720, 960)), gpu, FakeProbe(step=0.1)).experiment.train_transforms[0]
    assert crop.name == "random_crop" and crop.params == {"height": 512, "width": 512}
    whole = plan(camvid_like(size=(384, 512)), gpu, FakeProbe(step=0.1)).experiment.train_transforms[0]
    assert whole.name == "horizontal_flip"  # 512x384 is trained whole


def test_the_estimate_fills_the_budget_within_20_percent():
    for minutes, step in [(20, 1.0), (60, 0.5), (180, 2.0), (8, 0.2)]:
        run = plan(camvid_like(), cpu(minutes), FakeProbe(step=step))
        assert 0.8 * minutes * 60 <= run.estimate_seconds <= minutes * 60, (minutes, step, run.estimate_seconds)
        assert run.estimate_seconds == pytest.approx(START_SECONDS + run.epochs * run.epoch_seconds)


def test_a_budget_shorter_than_an_epoch_is_refused():
    with pytest.raises(ConfigError, match="shorter than one epoch"):
        plan(camvid_like(), cpu(1), FakeProbe(step=5.0))


def test_a_long_budget_buys_a_larger_encoder():
    probe = FakeProbe(step=0.05)
    run = plan(camvid_like(), cpu(600), probe)
    assert run.experiment.model.encoder_name != "resnet18"
    assert {call[1] for call in probe.calls} >= {"resnet18", "resnet34"}
    assert run.epochs >= 30


def test_few_images_keep_the_fast_encoder_however_long_the_budget():
    probe = FakeProbe(step=0.05)
    run = plan(camvid_like(train=40, val=10), cpu(600), probe)
    assert run.experiment.model.encoder_name == "resnet18"
    assert {call[1] for call in probe.calls} == {"resnet18"}
    assert run.experiment.batch_size == 5  # at least 8 steps an epoch


def test_batch_size_is_the_largest_that_fits_the_measured_memory():
    probe = FakeProbe(fixed=GB, per_image=GB)  # 1 GB + 1 GB per image
    run = plan(camvid_like(), Target("gpu", 8 * GB, 3600, bf16=True, free_ram_bytes=64 * GB), probe)
    assert run.experiment.batch_size == 5  # (0.8 * 8 - 1) / 1 = 5.4
    assert ("memory", "resnet18", 2, (192, 256)) in probe.calls and ("memory", "resnet18", 4, (192, 256)) in probe.calls
    assert {call[2] for call in probe.calls if call[0] == "train"} == {5}  # only the planned batch is timed
    why = next(d.reason for d in run.decisions if d.key == "batch_size")
    assert "1.00 GB per image" in why
    assert run.experiment.precision == "bf16-mixed" and run.experiment.channels_last


def test_a_handful_of_images_still_trains_batches_of_two():
    """BatchNorm cannot train on one image whose deepest feature map is 1x1 (a 32x32 crop)."""
    run = plan(camvid_like(size=(32, 32), train=8, val=4), cpu(), FakeProbe(step=0.01))
    assert run.experiment.batch_size == 2
    assert "smallest batch BatchNorm trains on" in next(d.reason for d in run.decisions if d.key == "batch_size")


def test_a_batch_that_cannot_fit_is_a_clear_error():
    with pytest.raises(ConfigError, match="raise --memory"):
        plan(camvid_like(), cpu(memory=GB), FakeProbe(fixed=GB, per_image=GB))


def test_void_label_found_from_the_values_when_only_names_are_given():
    fp = camvid_like(declared=Declared())
    run = plan(fp, cpu(), FakeProbe(), names=CAMVID)
    assert run.experiment.ignore_index == 11
    why = next(d.reason for d in run.decisions if d.key == "ignore_index")
    assert "just past the 11 classes" in why


def test_binary_0_255_masks_get_a_label_map():
    values = {0: (900_000, 40), 255: (100_000, 38)}
    fp = Fingerprint(Path("/d"), split(values, masks=40, binary_255=38), split(values, masks=10, binary_255=10))
    run = plan(fp, cpu(), FakeProbe())
    assert run.experiment.label_map == {255: 1} and run.experiment.model.classes == 2
    assert run.class_names == ["background", "foreground"] and run.experiment.ignore_index is None
    assert run.experiment.loss.class_weights is None  # 1/9 foreground: within a tenth of the median class


def test_sparse_ids_become_classes_named_by_their_id():
    values = {3: (100_000, 40), 7: (300_000, 40), 26: (90_000, 30), 255: (5000, 20)}
    fp = Fingerprint(Path("/d"), split(values, masks=40), split(values, masks=10))
    run = plan(fp, cpu(), FakeProbe())
    assert run.class_names == ["class_3", "class_7", "class_26"]
    assert run.experiment.label_map == {3: 0, 7: 1, 26: 2} and run.experiment.ignore_index == 255


def test_declared_ids_map_classes_and_ignore_every_other_id():
    values = {0: (50_000, 40), 1: (20_000, 40), 7: (300_000, 40), 8: (100_000, 40), 26: (90_000, 30)}
    declared = Declared("dataset.json", ["road", "sidewalk", "car"], None, {"road": 7, "sidewalk": 8, "car": 26})
    fp = Fingerprint(Path("/d"), split(values, masks=40), split(values, masks=10), declared=declared)
    run = plan(fp, cpu(), FakeProbe())
    assert run.class_names == ["road", "sidewalk", "car"]
    assert run.experiment.label_map == {7: 0, 8: 1, 26: 2, 0: 255, 1: 255} and run.experiment.ignore_index == 255


def test_more_values_than_names_is_a_clear_error():
    values = {v: (10_000, 10) for v in (0, 1, 2, 5)}
    fp = Fingerprint(Path("/d"), split(values, masks=10), split(values, masks=4))
    with pytest.raises(DatasetError, match="4 values .* but --classes names 3"):
        plan(fp, cpu(), FakeProbe(), names=["a", "b", "c"])


def test_16_bit_grey_images_are_microscopy_with_dataset_normalisation():
    values = {0: (800_000, 30), 1: (200_000, 30)}
    stats = split(values, masks=30, size=(512, 640), channels=1, dtype="uint16", max_value=4095)
    run = plan(Fingerprint(Path("/d"), stats, stats), cpu(60), FakeProbe())
    exp = run.experiment
    assert exp.model.in_channels == 1 and exp.normalize == "dataset" and exp.model.encoder_weights is None
    names = [t.name for t in exp.train_transforms]
    assert names == ["random_crop", "horizontal_flip", "vertical_flip", "random_rotate_90"]
    crop = exp.train_transforms[0].params
    assert crop["height"] == crop["width"]  # 90-degree turns of a non-square crop would change its shape
    assert "microscopy" in " ".join(n.reason for n in run.notes)


def test_four_band_images_are_aerial():
    values = {0: (800_000, 30), 1: (200_000, 30)}
    stats = split(values, masks=30, size=(256, 256), channels=4, dtype="uint16", max_value=10000)
    run = plan(Fingerprint(Path("/d"), stats, stats), cpu(60), FakeProbe())
    assert run.experiment.model.in_channels == 4 and run.experiment.normalize == "dataset"
    assert "random_rotate_90" in [t.name for t in run.experiment.train_transforms]


def test_pretrained_weights_for_8_bit_rgb_when_reachable():
    run = plan(camvid_like(), cpu(), FakeProbe(), weights_reachable=True)
    assert run.experiment.model.encoder_weights == "imagenet" and run.experiment.normalize == "imagenet"
    refused = plan(camvid_like(), cpu(), FakeProbe(), weights_reachable=True, pretrained=False)
    assert refused.experiment.model.encoder_weights is None


def test_large_images_are_validated_on_a_centre_crop_and_predicted_in_tiles():
    run = plan(camvid_like(size=(2000, 3000), train=50, val=10), cpu(120), FakeProbe(step=0.1))
    val = run.experiment.val_transforms
    assert [t.name for t in val] == ["center_crop"] and val[0].params == {"height": 1024, "width": 1024}
    assert any("--tile 256 --overlap 0.25" in note.reason for note in run.notes)


def test_small_datasets_suggest_grouped_k_fold():
    fp = camvid_like(train=40, val=10)
    run = plan(fp, cpu(), FakeProbe())
    assert any("--folds 5 --fold-groups '^[^_]+'" in note.reason for note in run.notes)


def test_the_learning_rate_test_replaces_the_rule():
    run = plan(camvid_like(), cpu(), FakeProbe(lr=0.0123), lr_test=True)
    assert run.experiment.lr == pytest.approx(0.0123)
    assert "range test" in next(d.reason for d in run.decisions if d.key == "lr")


def test_the_plan_file_loads_back_as_the_planned_experiment(tmp_path):
    for fp in (camvid_like(), camvid_like(size=(360, 480)), camvid_like(size=(2000, 3000), train=50, val=10)):
        run = plan(fp, cpu(120), FakeProbe(step=0.1))
        path = tmp_path / "plan.yaml"
        path.write_text(render(run, "camvid", ["header line"]))
        loaded = resolve_experiment(load_experiment_file(path), "camvid", path)
        assert loaded == run.experiment
        text = path.read_text()
        for decision in run.decisions:
            assert f"# {decision.reason}" in text


def _transform_names(run) -> list[str]:
    preview_pipeline(run.experiment.train_transforms, "planned", 255.0, fill_label=255)  # every planned step builds
    return [t.name for t in run.experiment.train_transforms]


def test_augmentations_by_domain_and_run_length():
    grey = split({0: (800_000, 30), 1: (200_000, 30)}, masks=30, size=(256, 256), channels=1)
    medical = Fingerprint(Path("/d"), grey, grey)
    long = FakeProbe(step=0.01)
    medical_short = plan(medical, cpu(), FakeProbe(step=50.0))
    assert "medical" in " ".join(n.reason for n in medical_short.notes)
    assert medical_short.epochs < 30 and _transform_names(medical_short) == ["horizontal_flip"]
    assert _transform_names(plan(medical, cpu(), long)) == [
        "horizontal_flip", "random_brightness_contrast", "random_gamma", "elastic_transform"
    ]  # fmt: skip
    natural_short = plan(camvid_like(), cpu(), FakeProbe(step=2.0))
    assert natural_short.epochs < 30 and _transform_names(natural_short) == ["horizontal_flip"]
    natural_long = plan(camvid_like(), cpu(), long)
    assert _transform_names(natural_long) == ["horizontal_flip", "affine", "random_brightness_contrast"]
    assert natural_long.experiment.train_transforms[1].params["fill_mask"] == 11  # zoomed-out borders ignored
    aerial = plan(camvid_like(), cpu(), FakeProbe(), domain="aerial")
    assert _transform_names(aerial) == ["random_crop", "horizontal_flip", "vertical_flip", "random_rotate_90"]
    assert aerial.experiment.train_transforms[0].params == {"height": 192, "width": 192}  # square: turns keep it
    assert "domain: aerial (--domain)" in [n.reason for n in aerial.notes]
