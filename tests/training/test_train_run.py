"""`train()` in-process on generated data: one model build, every checkpoint kind scoring what it stored,
SWA with BatchNorm refitted, ignored pixels, the run report, normalisation stored as applied."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcli.artifacts.checkpoints import read_checkpoint
from segcli.artifacts.folders import RunDir
from segcli.config.schema import Experiment
from segcli.inference.engine import InferenceOptions
from segcli.inference.evaluate import evaluate_split
from segcli.inference.loading import open_model
from segcli.training.run import RunOptions, train
from tests.support import DEMO_CLASSES

CLASSES = DEMO_CLASSES.split(",")


def _experiment(**keys) -> Experiment:
    base = {
        "model": {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 4},
        "batch_size": 4,
        "max_epochs": 3,
        "num_workers": 0,
        "train_transforms": [{"name": "horizontal_flip", "params": {"p": 0.5}}],
        "log_predictions": {"count": 1, "worst": 2},
    }
    return Experiment.model_validate({**base, **keys})


def _train(experiment: Experiment, dataset: Path, output: Path, classes=CLASSES, **options):
    return train(experiment, RunOptions(dataset=dataset, class_names=list(classes), run_name="run",
                                        experiment_name="e", output_dir=output, progress=False, **options))  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_dataset, module_folder):
    """3 epochs with EMA and SWA from epoch 2, no val transforms (so evaluate sees what validation saw)."""
    output = module_folder
    result = _train(_experiment(ema={"decay": 0.8}, average={"start_epoch": 2}), tiny_dataset, output)
    return result, RunDir(output / "checkpoints" / "run")


def test_the_result_lists_every_report_file_even_of_a_run_too_short_to_draw_before_its_end(trained):
    """A run shorter than RunReport.REDRAW_SECONDS draws its pictures at the end: they must be in the summary."""
    result, run_dir = trained
    expected = {"metrics.csv", "results.png", "per_class.png", "confusion_matrix.png", "worst_predictions.png"}
    assert {path.name for path in result.report_files} == expected
    assert all(path.is_file() for path in result.report_files)


def test_the_model_is_built_once_and_validated_once_an_epoch(tiny_dataset, tmp_path, monkeypatch):
    """`configure_model` was Lightning's hook name: trainer.fit built a second model (weights, seed, compile).
    Lightning's sanity pass before the first epoch repeated part of a validation segcli runs anyway."""
    import pytorch_lightning as pl

    from segcli.models import registry

    builds, validations = [], []
    original = registry.create_model
    monkeypatch.setattr(registry, "create_model", lambda cfg: builds.append(cfg) or original(cfg))

    class CountValidations(pl.Callback):
        def on_validation_start(self, trainer, task) -> None:
            validations.append(trainer.current_epoch)

    _train(_experiment(max_epochs=2, average=None, log_predictions=0), tiny_dataset, tmp_path,
           extra_callbacks=[CountValidations()])  # fmt: skip
    assert len(builds) == 1
    assert validations == [0, 1]


def test_the_wandb_run_has_started_before_training_forks_its_workers(tiny_dataset, tmp_path, monkeypatch):
    """W&B's start runs `git` in subprocesses; a DataLoader worker forked meanwhile inherits the pipe Python
    waits on for `git` to start, and the run never comes: a hang, seen when fit did not wait for W&B."""
    import pytorch_lightning as pl
    import wandb

    events = []
    start_run = wandb.init

    def slow_start(**kwargs):
        time.sleep(1.0)
        started = start_run(**kwargs)
        events.append("W&B run started")
        return started

    class FitSetUp(pl.Callback):
        def setup(self, trainer, pl_module, stage: str) -> None:
            events.append("fit set up")

    monkeypatch.setattr(wandb, "init", slow_start)
    _train(_experiment(max_epochs=1, average=None, log_predictions=0), tiny_dataset, tmp_path,
           extra_callbacks=[FitSetUp()])  # fmt: skip
    assert events == ["W&B run started", "fit set up"]


def test_with_wandb_disabled_no_pictures_are_made_for_it(tiny_dataset, tmp_path, monkeypatch):
    """Training samples, per-epoch predictions, the worst-images table and the W&B run folder exist for W&B alone."""
    from segcli.training.trackers import wandb_tracker

    made = []
    monkeypatch.setattr(wandb_tracker, "wandb_images", lambda samples, *rest: made.append(1) or [None] * len(samples))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    result = _train(_experiment(max_epochs=1, average=None), tiny_dataset, tmp_path / "disabled")
    assert made == []
    assert result.wandb_dir is None and result.trackers == {}  # the summary names no W&B run folder
    assert (result.run_dir / "worst_predictions.png").is_file()  # the run folder's own picture stays
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = _train(_experiment(max_epochs=1, average=None), tiny_dataset, tmp_path / "offline")
    assert made
    assert Path(result.wandb_dir).is_dir() and result.trackers == {"W&B run": result.wandb_dir}


@pytest.mark.parametrize("kind", ["best", "latest", "ema", "average"])
def test_every_checkpoint_kind_scores_what_it_stored(trained, tiny_dataset, kind):
    """evaluate(checkpoint) through the inference code == the val metrics stored in (and logged for) it."""
    result, run_dir = trained
    path = getattr(run_dir, kind)
    checkpoint = read_checkpoint(path)
    evaluation = evaluate_split(open_model(path), tiny_dataset, "val", InferenceOptions(batch_size=4))
    for key in ("val/mIoU", "val/mDCC", "val/pixel_accuracy", "val/IoU/disc"):
        stored, measured = checkpoint.metrics[key], evaluation.metrics[key]
        assert (math.isnan(stored) and math.isnan(measured)) or stored == pytest.approx(measured, rel=1e-5), key
    if kind == "average":
        assert checkpoint.metrics["val/mIoU"] == pytest.approx(result.average_metrics["val_avg/mIoU"])


@pytest.mark.parametrize(("kind", "scored_as"), [("latest", "val"), ("ema", "val_ema"), ("average", "val_avg")])
def test_every_checkpoint_names_its_completed_epochs_and_its_own_metric(trained, kind, scored_as):
    """average_model.pth of a 3-epoch run stored epoch 4, and its export read "val/mIoU" for the average's own
    score. Each file names the epochs completed and the metric under the key its weights were logged with."""
    result, run_dir = trained
    checkpoint = read_checkpoint(getattr(run_dir, kind))
    assert checkpoint.epoch == 3 == len(result.history)
    logged = result.average_metrics if kind == "average" else result.history[-1]
    assert checkpoint.info.source["metric"] == {"name": f"{scored_as}/mIoU", "value": logged[f"{scored_as}/mIoU"]}
    assert checkpoint.metrics["val/mIoU"] == logged[f"{scored_as}/mIoU"]  # stored under val/*, as evaluate reads


def test_the_average_is_swa_from_its_start_epoch_with_batchnorm_refitted(trained):
    """average_model.pth scored 0.05 mIoU on camvid-mini with BatchNorm statistics averaged like weights."""
    _, run_dir = trained
    state = torch.load(run_dir.state, weights_only=True)["callbacks"]["SwaAverage"]
    assert state["epochs"] == 2 and int(state["averaged"]["n_averaged"]) == 2  # epochs 2 and 3
    averaged = {key.removeprefix("module."): value for key, value in state["averaged"].items()}
    saved = read_checkpoint(run_dir.average).state_dict
    weights = [key for key in saved if key.endswith(".weight") and saved[key].is_floating_point()]
    assert all(torch.equal(saved[key], averaged[key]) for key in weights)  # the weights are the average
    means = [key for key in saved if key.endswith("running_mean")]
    assert means and all(not torch.equal(saved[key], averaged[key]) for key in means)  # statistics refitted


def test_metrics_csv_has_a_row_per_epoch_matching_the_checkpoints(trained):
    result, run_dir = trained
    with run_dir.metrics_csv.open() as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    columns = set(rows[0])
    assert {"train/loss", "val/loss", "train/mIoU", "val/mIoU", "train/mDCC", "val/mDCC", "lr", "seconds"} <= columns
    assert {f"val/IoU/{name}" for name in CLASSES} <= columns and "val_ema/mIoU" in columns
    best = read_checkpoint(run_dir.best)
    assert float(rows[best.epoch - 1]["val/mIoU"]) == pytest.approx(best.metrics["val/mIoU"])
    for name in ("results.png", "per_class.png", "confusion_matrix.png", "worst_predictions.png"):
        with Image.open(run_dir.path / name) as picture:
            pixels = np.asarray(picture.convert("L"))
        assert picture.width > 300 and pixels.std() > 10, name  # drawn, not blank


def test_worst_images_are_ranked_by_their_own_scores(trained, tiny_dataset):
    """The worst-K picture ranks the val images by per-image mIoU at the best checkpoint, worst first."""
    from segcli.data.io import list_pairs, read_image, read_mask
    from segcli.models.metrics import scores

    result, run_dir = trained
    predictor = open_model(run_dir.best)
    per_image = {}
    for pair in list_pairs(tiny_dataset, "val"):
        prediction = predictor.predict([read_image(pair.image)])[0].astype(np.int64)
        target = read_mask(pair.mask).astype(np.int64)
        matrix = np.bincount(target.ravel() * 4 + prediction.ravel(), minlength=16).reshape(4, 4)
        per_image[pair.image.name] = float(scores(torch.from_numpy(matrix))["mIoU"])
    expected = sorted(per_image, key=lambda name: (per_image[name], name))[:2]
    evaluation = evaluate_split(predictor, tiny_dataset, "val", InferenceOptions())
    assert [score.name for score in evaluation.worst(2)] == expected
    assert [score.mIoU for score in evaluation.worst(2)] == pytest.approx([per_image[name] for name in expected])


def test_the_predictions_logged_to_wandb_are_the_models_own(trained, tiny_dataset):
    """Differential: the prediction logged after the last validation (taken from the validation step) is what
    ckpt_latest.pth, the weights of that epoch, predicts for that image."""
    from segcli.data.io import read_image
    from tests.support import wandb_history

    _, run_dir = trained
    output = run_dir.path.parent.parent
    row = [row for row in wandb_history(output) if "val/predictions/captions" in row][-1]
    files = next((output / "wandb").glob("offline-run-*/files"))
    predictor = open_model(run_dir.latest)
    assert row["val/predictions/captions"] and len(row["val/predictions/captions"]) == 1  # log_predictions.count
    for caption, masks in zip(row["val/predictions/captions"], row["val/predictions/all_masks"], strict=True):
        name, epoch = caption.split(" epoch ")
        assert epoch == "3"
        logged = np.asarray(Image.open(files / masks["prediction"]["path"]))
        expected = predictor.predict([read_image(tiny_dataset / "val" / "images" / name)])[0]
        assert np.array_equal(logged, expected)


def _ignore_everything_in(dataset: Path, split: str, copy_to: Path) -> Path:
    import shutil

    shutil.copytree(dataset, copy_to)
    first = sorted((copy_to / split / "labels").glob("*.png"))[0]
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(first)
    return copy_to


def test_an_image_whose_pixels_are_all_ignored_is_not_a_divergence(tiny_dataset, tmp_path):
    """A batch of only ignore_index pixels gave NaN (exit 3 as a divergence); val/loss must stay finite and
    `monitor: val/loss` must still write ckpt_best.pth."""
    dataset = _ignore_everything_in(tiny_dataset, "val", tmp_path / "data")
    dataset = _ignore_everything_in(dataset, "train", tmp_path / "data2")
    experiment = _experiment(max_epochs=2, batch_size=1, ignore_index=255, monitor="val/loss", average=None,
                             loss=["focal", "lovasz", "cross_entropy"], log_predictions=0)  # fmt: skip
    result = _train(experiment, dataset, tmp_path / "out")
    assert all(math.isfinite(row["val/loss"]) and math.isfinite(row["train/loss"]) for row in result.history)
    assert (tmp_path / "out" / "checkpoints" / "run" / "ckpt_best.pth").is_file()


@pytest.mark.parametrize("normalize", ["image", "min_max", {"mean": [0.4], "std": [0.2], "max_pixel_value": 200}])
def test_the_normalisation_applied_is_the_one_stored(tiny_dataset, tmp_path, normalize):
    """Grey images, per-image or explicit normalisation: what validation applied is what the checkpoint says
    (evaluate reproduces the logged score), max_pixel_value included."""
    model = {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 4, "in_channels": 1}
    experiment = _experiment(model=model, max_epochs=1, normalize=normalize, average=None, log_predictions=0)
    _train(experiment, tiny_dataset, tmp_path)
    path = tmp_path / "checkpoints" / "run" / "ckpt_latest.pth"
    checkpoint = read_checkpoint(path)
    stored = checkpoint.info.normalization
    if isinstance(normalize, dict):
        assert stored.model_dump() == {"mode": "explicit", "mean": [0.4], "std": [0.2], "max_pixel_value": 200.0}
    else:
        assert stored.mode == normalize
    evaluation = evaluate_split(open_model(path), tiny_dataset, "val", InferenceOptions(batch_size=4))
    assert evaluation.metrics["val/mIoU"] == pytest.approx(checkpoint.metrics["val/mIoU"], rel=1e-5)


def test_per_step_scheduler_bf16_on_the_cpu_and_predictions_every_other_epoch(tiny_dataset, tmp_path):
    """README promises: `scheduler.interval: step`, `precision: bf16-mixed` on the CPU, `log_predictions.every`."""
    from tests.support import wandb_history

    experiment = _experiment(
        max_epochs=2, lr=0.01, precision="bf16-mixed", average=None,
        scheduler={"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}, "interval": "step"},
        log_predictions={"count": 1, "every": 2, "worst": 0},
    )  # fmt: skip
    result = _train(experiment, tiny_dataset, tmp_path)
    steps_per_epoch = 8 // 4  # tiny_dataset: 8 train pairs, batch 4
    rates = [row["lr"] for row in result.history]
    assert rates == pytest.approx([0.01 * 0.5**steps_per_epoch, 0.01 * 0.5 ** (2 * steps_per_epoch)])
    assert all(math.isfinite(row["val/loss"]) and math.isfinite(row["val/mIoU"]) for row in result.history)
    latest = read_checkpoint(tmp_path / "checkpoints" / "run" / "ckpt_latest.pth")
    assert latest.experiment["precision"] == "bf16-mixed"
    logged = [row for row in wandb_history(tmp_path) if any(key.startswith("val/predictions/") for key in row)]
    assert [row["trainer/global_step"] for row in logged] == [2 * steps_per_epoch]  # after epoch 2 only


def test_monitoring_the_ema_keeps_the_ema_weights_as_best(tiny_dataset, tmp_path):
    """README: with `monitor: val_ema/...`, ckpt_best.pth holds the EMA weights, scored as the EMA scored."""
    experiment = _experiment(max_epochs=2, average=None, ema={"decay": 0.5}, monitor={"metric": "val_ema/mIoU"},
                             log_predictions=0)  # fmt: skip
    result = _train(experiment, tiny_dataset, tmp_path)
    run_dir = RunDir(tmp_path / "checkpoints" / "run")
    best = read_checkpoint(run_dir.best)
    row = result.history[best.epoch - 1]
    assert best.metrics["val/mIoU"] == pytest.approx(row["val_ema/mIoU"])
    assert best.metrics["val/mIoU"] == max(r["val_ema/mIoU"] for r in result.history)
    evaluation = evaluate_split(open_model(run_dir.best), tiny_dataset, "val", InferenceOptions(batch_size=4))
    assert evaluation.metrics["val/mIoU"] == pytest.approx(best.metrics["val/mIoU"], rel=1e-5)
    if best.epoch == 2:  # then it is the same file content as the EMA of the last epoch
        ema = read_checkpoint(run_dir.ema)
        assert all(torch.equal(best.state_dict[key], ema.state_dict[key]) for key in ema.state_dict)
    # The best epoch's confusion matrix is the monitored (EMA) weights' own: run.json kept none, and no
    # confusion_matrix.png was drawn. Differential: the stored matrix gives the stored EMA scores.
    import json

    from segcli.models.metrics import epoch_metrics

    matrix = json.loads(run_dir.record.read_text())["report"]["best_matrix"]
    assert matrix is not None and sum(map(sum, matrix)) == 4 * 64 * 64
    from_matrix = epoch_metrics(torch.tensor(matrix), "val", CLASSES)
    for key in ("val/mIoU", "val/pixel_accuracy", "val/IoU/disc"):
        assert from_matrix[key] == pytest.approx(best.metrics[key], rel=1e-6, nan_ok=True), key
    with Image.open(run_dir.confusion_png) as picture:
        assert picture.width > 300 and np.asarray(picture.convert("L")).std() > 10
    assert run_dir.confusion_png in result.report_files


@pytest.mark.slow
def test_an_extended_run_averages_the_epochs_a_run_trained_at_once_averages(tiny_dataset, tmp_path, capsys):
    """A finished 2-epoch run extended to 4 kept averaging from epoch 2 (75% of the old max_epochs), so its
    average_model.pth differed from a 4-epoch run's (CamVid: 0.2864 against 0.2977). Differential: extended and
    uninterrupted runs write the same average. Extended once more after averaging has begun, the average keeps its
    epochs, and the summary says how it differs."""
    from segcli.cli.train_summaries import print_run_summary

    def run(folder: str, epochs: int, **options):
        return _train(_experiment(max_epochs=epochs, log_predictions=0), tiny_dataset, tmp_path / folder, **options)

    at_once = run("at-once", 4)
    run("extended", 2)
    extended = run("extended", 4, resume=True)
    once, more = (read_checkpoint(RunDir(tmp_path / folder / "checkpoints" / "run").average)
                  for folder in ("at-once", "extended"))  # fmt: skip
    assert all(torch.equal(once.state_dict[key], more.state_dict[key]) for key in once.state_dict)
    assert once.metrics == more.metrics and once.epoch == more.epoch == 4
    assert extended.average_epochs == at_once.average_epochs == (3, 4)

    further = run("extended", 5, resume=True)  # a 5-epoch run averages from epoch 4; this one has since epoch 3
    assert (further.average_epochs, further.average_start) == ((3, 5), 4)
    state = torch.load(tmp_path / "extended" / "checkpoints" / "run" / "state_latest.ckpt", weights_only=True)
    assert int(state["callbacks"]["SwaAverage"]["averaged"]["n_averaged"]) == 3
    capsys.readouterr()
    print_run_summary(further, CLASSES)
    out = " ".join(capsys.readouterr().out.split())
    assert f"{further.average_metrics['val_avg/mIoU']:.4f} (epochs 3-5)" in out
    assert "averaging had begun at epoch 3, before the run was extended" in out and "from epoch 4" in out


def test_a_run_that_ends_before_the_average_starts_writes_no_average(tiny_dataset, tmp_path):
    """README: `average.start_epoch` after the last epoch is no error; there is simply no average_model.pth."""
    result = _train(_experiment(max_epochs=1, average={"start_epoch": 3}, log_predictions=0), tiny_dataset, tmp_path)
    run_dir = RunDir(tmp_path / "checkpoints" / "run")
    assert run_dir.best.is_file() and not run_dir.average.exists()
    assert result.average_metrics == {} and "average_model.pth" not in result.checkpoints
    # Nothing averaged yet: the training state carries no copy of the weights for it (57 MB an epoch on Unet/resnet18).
    assert torch.load(run_dir.state, weights_only=True)["callbacks"]["SwaAverage"] == {"epochs": 0}


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_a_cosine_without_t_max_reaches_zero_at_the_last_epoch_whatever_max_epochs_is(tiny_dataset, tmp_path, interval):
    """README: CosineAnnealingLR without T_max spans the run (after the warm-up), in steps or epochs."""
    scheduler = {"name": "CosineAnnealingLR", "interval": interval, "warmup_steps": 1}
    for epochs in (2, 3):
        experiment = _experiment(max_epochs=epochs, scheduler=scheduler, average=None, log_predictions=0)
        result = _train(experiment, tiny_dataset, tmp_path / f"{interval}{epochs}")
        rates = [row["lr"] for row in result.history]
        assert rates[-1] == pytest.approx(0.0, abs=1e-9) and min(rates[:-1]) > 1e-5, rates
