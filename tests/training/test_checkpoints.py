"""The epoch-end callbacks with a stand-in trainer: best/latest semantics, shared files, metadata, run record."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from segcli.artifacts.checkpoints import read_checkpoint
from segcli.artifacts.folders import RunDir, RunRecord
from segcli.config.schema import Experiment, ModelConfig, MonitorConfig
from segcli.files import BackgroundWriter
from tests.inference.support import IMAGENET

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def task():
    from segcli.models.task import SegmentationTask

    model = ModelConfig(arch="unet", encoder_name="resnet18", encoder_weights=None, classes=3)
    return SegmentationTask(Experiment(model=model).model_dump(mode="json"), CLASSES)


def _trainer(epoch: int, miou: float, max_epochs: int = 1000, should_stop: bool = False):
    """What the epoch-end callbacks read from Lightning's trainer at the end of an epoch (0-based current_epoch)."""
    metrics = {"val/mIoU": torch.tensor(miou), "val/loss": torch.tensor(1.0), "train/mIoU": torch.tensor(0.9)}
    saved = []
    return SimpleNamespace(
        callback_metrics=metrics,
        current_epoch=epoch,
        max_epochs=max_epochs,
        should_stop=should_stop,
        global_step=10 * (epoch + 1),
        is_global_zero=True,
        world_size=1,
        optimizers=[SimpleNamespace(param_groups=[{"lr": 0.01}])],
        lr_scheduler_configs=[],
        save_checkpoint=saved.append,
        saved=saved,
    )


class EpochEnd:
    """The checkpoint callbacks `train` gives Lightning, called in its order at an epoch's end."""

    def __init__(self, run_dir: RunDir, writer: BackgroundWriter, monitor: str, state_every: float):
        from segcli.artifacts.model_info import ModelInfo
        from segcli.training.callbacks.checkpoints import TrainingState, WeightFiles
        from segcli.training.callbacks.history import EpochHistory
        from segcli.training.callbacks.report import RunRecordUpdates, RunReport

        info = ModelInfo(arch="unet", encoder_name="resnet18", in_channels=3, classes=3, class_names=CLASSES,
                         ignore_index=None, normalization=IMAGENET, size_multiple=32)  # fmt: skip
        self.history = EpochHistory(MonitorConfig(metric=monitor))
        self.report = RunReport(self.history, run_dir, writer, "my-run", CLASSES)
        self.callbacks = [
            self.history,
            WeightFiles(history=self.history, run_dir=run_dir, writer=writer, info=info, run_name="my-run"),
            self.report,
            TrainingState(run_dir.state, state_every),
            RunRecordUpdates(self.history, RunRecord("my-run"), run_dir, writer, CLASSES, lambda: 1.0),
        ]

    def on_train_epoch_end(self, trainer, task) -> None:
        for callback in self.callbacks:
            callback.on_train_epoch_end(trainer, task)


def _callback(task, run_dir: RunDir, writer: BackgroundWriter, monitor: str = "val/mIoU", state_every: float = 0.0):
    return EpochEnd(run_dir, writer, monitor, state_every)


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _perturb(module, amount: float) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(amount)


def test_best_and_latest(task, tmp_path):
    run_dir, writer = RunDir(tmp_path), BackgroundWriter()
    callback = _callback(task, run_dir, writer)
    states, scores = [], [0.5, 0.4, float("nan"), 0.7, 0.6]
    for epoch, score in enumerate(scores):
        _perturb(task.model, 0.25)
        states.append(_snapshot(task.model))
        trainer = _trainer(epoch, score)
        callback.on_train_epoch_end(trainer, task)
        assert trainer.saved == [run_dir.state]  # the full state, once per epoch
    writer.close()
    latest, best = read_checkpoint(run_dir.latest), read_checkpoint(run_dir.best)
    assert latest.epoch == 5 and best.epoch == 4  # 1-based; 0.7 beats 0.5, 0.4 and NaN never win
    assert best.metrics["val/mIoU"] == pytest.approx(0.7) and best.info.source["kind"] == "best"
    assert callback.history.best_epoch == 4 and [row["epoch"] for row in callback.history.history] == [1, 2, 3, 4, 5]
    assert all(torch.equal(best.state_dict[k], states[3][k]) for k in states[3])
    assert all(torch.equal(latest.state_dict[k], states[4][k]) for k in states[4])
    record = RunRecord.read(run_dir)
    assert record.epochs_completed == 5 and record.report["best_epoch"] == 4


def test_best_shares_the_file_of_the_latest_epoch_when_it_is_that_epoch(task, tmp_path):
    run_dir, writer = RunDir(tmp_path), BackgroundWriter()
    callback = _callback(task, run_dir, writer)
    callback.on_train_epoch_end(_trainer(0, 0.5), task)
    writer.close()
    assert os.path.samefile(run_dir.best, run_dir.latest)  # one write, two names (a copy where links fail)
    assert read_checkpoint(run_dir.best).info.source["kind"] == "best"


def test_the_epoch_training_ends_at_leaves_its_pictures_to_the_final_report(task, tmp_path):
    """The last epoch (max_epochs reached, or early stopping / Ctrl-C asked to stop) draws nothing itself."""
    run_dir, writer = RunDir(tmp_path), BackgroundWriter()
    callback = _callback(task, run_dir, writer)
    requests = []
    callback.report.submit = lambda last: requests.append(last)
    for epoch in range(3):
        callback.on_train_epoch_end(_trainer(epoch, 0.5, max_epochs=3), task)
    callback.on_train_epoch_end(_trainer(3, 0.5, max_epochs=10, should_stop=True), task)
    writer.close()
    assert requests == [False, False, True, True]


def test_the_state_is_written_once_state_every_seconds_have_passed_and_at_the_epoch_training_stops_at(
    task, tmp_path, monkeypatch
):
    """README: state_latest.ckpt at an epoch's end once `state_every_seconds` have passed since the last one, and
    always at the epoch training stops at (max_epochs reached, or early stopping / Ctrl-C asked to stop); the
    .pth files and run.json every epoch."""
    from segcli.training.callbacks import checkpoints

    assert task.experiment.state_every_seconds == 60.0  # README's default
    now = [1000.0]
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: now[0])  # the clock of TrainingState
    run_dir, writer = RunDir(tmp_path), BackgroundWriter()
    callback = _callback(task, run_dir, writer, state_every=60.0)
    saved = []
    for epoch, seconds, should_stop in [(0, 1020, False), (1, 1061, False), (2, 1100, False), (3, 1110, True)]:
        now[0] = seconds
        trainer = _trainer(epoch, 0.5, max_epochs=10, should_stop=should_stop)
        callback.on_train_epoch_end(trainer, task)
        saved.append(bool(trainer.saved))
        writer.wait()
        assert RunRecord.read(run_dir).epochs_completed == epoch + 1
        assert read_checkpoint(run_dir.latest).epoch == epoch + 1
    assert saved == [False, True, False, True]  # 20 s, 61 s, 39 s after the last write; then the stop
    now[0] = 1111
    trainer = _trainer(9, 0.5, max_epochs=10)  # the last epoch, 1 s after the previous write
    callback.on_train_epoch_end(trainer, task)
    writer.close()
    assert trainer.saved == [run_dir.state]


def test_checkpoint_metadata_loads_with_weights_only(task, tmp_path):
    run_dir, writer = RunDir(tmp_path), BackgroundWriter()
    _callback(task, run_dir, writer).on_train_epoch_end(_trainer(0, 0.5), task)
    writer.close()
    payload = torch.load(run_dir.latest, weights_only=True)
    model = payload["model"]
    expected = {"arch": "unet", "encoder_name": "resnet18", "in_channels": 3, "classes": 3, "size_multiple": 32}
    assert {key: model[key] for key in expected} == expected
    assert model["class_names"] == CLASSES and payload["run_name"] == "my-run"
    assert model["normalization"] == IMAGENET and payload["experiment"]["model"]["arch"] == "unet"


def test_ema_warmup_ramps_the_decay_and_follows_each_optimizer_step():
    """README: `ema.warmup_steps` ramps the decay as (1 + n) / (10 + n); after warm-up the configured decay."""
    from segcli.training.callbacks.averaging import EmaAverage

    live = torch.nn.Linear(1, 1, bias=False)
    task = SimpleNamespace(model=live)
    ema = EmaAverage(decay=0.99, warmup_steps=2)
    ema.module = torch.nn.Linear(1, 1, bias=False).requires_grad_(False)
    ema.module.weight.fill_(0.0)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 3.0, 3.0], start=1):
        with torch.no_grad():
            live.weight.fill_(value)
        trainer = SimpleNamespace(global_step=step)
        ema.on_train_batch_end(trainer, task, None, None, 0)
        ema.on_train_batch_end(trainer, task, None, None, 1)  # no optimizer step in between: no second update
        decay = [1 / 10, 2 / 11, 0.99, 0.99][step - 1]
        expected = decay * expected + (1 - decay) * value
        assert float(ema.module.weight) == pytest.approx(expected), step
