"""The files a run keeps at each epoch's end: the weights (`WeightFiles`) and the full training state a resume
continues from (`TrainingState`). Both are Lightning `Checkpoint`s, run after `EpochHistory` (see
callbacks/history.py), and write through the `BackgroundWriter`: the training thread only copies tensors to the
CPU.

The training state is Lightning's own checkpoint, saved with `trainer.save_checkpoint` at an epoch's end.
Lightning's `ModelCheckpoint(train_time_interval=...)` would throttle it too, but it saves at batch ends, in the
middle of an epoch, where Lightning cannot resume exactly ("your dataloader is not resumable"), and never at the
epoch training stops at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning_fabric.utilities.apply_func import apply_to_collection
from pytorch_lightning.callbacks import Checkpoint

from segcli.artifacts.checkpoints import Checkpoint as CheckpointFile
from segcli.artifacts.folders import RunDir
from segcli.artifacts.model_info import ModelInfo
from segcli.files import BackgroundWriter, link_or_copy, save_torch
from segcli.training.callbacks.history import EpochHistory, is_last_epoch


def own_metrics(metrics: dict[str, float], stage: str) -> dict[str, float]:
    """`<stage>/...` scores (val_ema, val_avg) renamed `val/...`: every checkpoint stores its own weights' scores
    under the same keys, so evaluate(checkpoint) is compared with `metrics["val/mIoU"]` whatever its kind."""
    return {"val/" + key[len(stage) + 1 :]: value for key, value in metrics.items() if key.startswith(stage + "/")}


def cpu_copy(collection: Any) -> Any:
    """The same structure with every tensor copied to the CPU, so training can go on changing the originals."""
    return apply_to_collection(collection, torch.Tensor, lambda tensor: tensor.detach().to("cpu", copy=True))


class BackgroundCheckpointIO(CheckpointIO):
    """Lightning's state files through the background writer (atomic, fsynced), read with weights_only."""

    def __init__(self, writer: BackgroundWriter):
        self.writer = writer

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        target, snapshot = Path(path), cpu_copy(checkpoint)
        self.writer.submit(target, lambda: save_torch(snapshot, target))

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        self.writer.wait()  # a write still in flight must land before it is read
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)

    def remove_checkpoint(self, path) -> None:
        self.writer.wait()
        Path(path).unlink(missing_ok=True)


class WeightFiles(Checkpoint):
    """ckpt_latest.pth and ema_model.pth after every epoch, ckpt_best.pth when the epoch is the best, and
    average_model.pth when training ends (`write_average`); the trackers sync each file once."""

    def __init__(self, *, history: EpochHistory, run_dir: RunDir, writer: BackgroundWriter, info: ModelInfo,
                 run_name: str, ema=None, sync: Callable[[Path], None] | None = None):  # fmt: skip
        self.history = history
        self.run_dir = run_dir
        self.writer = writer
        self.info = info
        self.run_name = run_name
        self.ema = ema
        self.sync = sync
        """The trackers' live sync of a written file (called on the writer thread)."""
        self._synced: set[Path] = set()
        self._latest_on_disk: int | None = None  # epoch of the ckpt_latest.pth the writer wrote last

    def on_train_epoch_end(self, trainer: pl.Trainer, task) -> None:
        if not trainer.is_global_zero:
            return
        epoch, metrics = self.history.latest["epoch"], self.history.latest
        scores = {key: value for key, value in metrics.items() if key.startswith(("train/", "val/"))}
        latest = self._payload(trainer, task, task.model, scores, epoch=epoch)
        self._submit(self.run_dir.latest, lambda: self._save_latest(latest, epoch))
        ema = None
        if self.ema is not None:
            ema = self._payload(trainer, task, self.ema.module, own_metrics(metrics, "val_ema"), epoch=epoch,
                                scored_as="val_ema")  # fmt: skip
            self._submit(self.run_dir.ema, lambda: save_torch(ema, self.run_dir.ema))
        if not self.history.improved:
            return
        if self.history.monitor.metric.startswith("val_ema/"):
            self._submit(self.run_dir.best, lambda: save_torch(ema, self.run_dir.best))
        else:
            self._submit(self.run_dir.best, lambda: self._save_best(latest, epoch))

    def write_average(self, model: torch.nn.Module, metrics: dict[str, float], trainer: pl.Trainer, task) -> None:
        """average_model.pth, with the average's own val scores; its val_avg/* go to every tracker."""
        if not trainer.is_global_zero:
            return
        payload = self._payload(trainer, task, model, own_metrics(metrics, "val_avg"),
                                epoch=self.history.latest["epoch"], scored_as="val_avg")  # fmt: skip
        self._submit(self.run_dir.average, lambda: save_torch(payload, self.run_dir.average))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _payload(self, trainer: pl.Trainer, task, model: torch.nn.Module, metrics: dict[str, float], *,
                 epoch: int, scored_as: str = "val") -> dict:  # fmt: skip
        """A checkpoint of `model` after `epoch` completed epochs, whose `metrics` are that model's own val scores
        (under `val/*`), logged under `scored_as`."""
        return CheckpointFile(
            info=self.info, state_dict=cpu_copy(model.state_dict()), epoch=epoch, global_step=trainer.global_step,
            metrics=metrics, run_name=self.run_name, experiment=task.experiment.model_dump(mode="json"),
            scored_as=scored_as,
        ).payload()  # fmt: skip

    def _submit(self, path: Path, write: Callable[[], Any]) -> None:
        """Write on the background thread, then have the trackers sync the file (once: W&B re-uploads changes
        itself)."""

        def job() -> None:
            write()
            if path not in self._synced and self.sync is not None:
                self.sync(path)
                self._synced.add(path)

        self.writer.submit(path, job)

    def _save_latest(self, payload: dict[str, Any], epoch: int) -> None:
        save_torch(payload, self.run_dir.latest)
        self._latest_on_disk = epoch

    def _save_best(self, payload: dict[str, Any], epoch: int) -> None:
        """The same file as ckpt_latest.pth when that holds this epoch (the writer runs jobs in order)."""
        if self._latest_on_disk == epoch:
            link_or_copy(self.run_dir.latest, self.run_dir.best)
        else:
            save_torch(payload, self.run_dir.best)


class TrainingState(Checkpoint):
    """state_latest.ckpt at an epoch's end, once `every` seconds have passed since the last write, and always at the
    epoch training stops at (max_epochs, early stopping, Ctrl-C), which a resume or an extension continues from.

    The state is 230 MB for a Unet/resnet18: written after every epoch of a few seconds, it would take a tenth of
    the CPU time training wants. The scheduler steps right after this hook; Lightning replays that step on resume,
    except for ReduceLROnPlateau, whose metric is not in Lightning's state: this callback keeps it and replays it.
    """

    def __init__(self, path: Path, every: float = 0.0):
        self.path = path
        self.every = every
        self._written = time.monotonic()
        self.plateau_metric: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._replay_plateau_step(trainer)
        self._written = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.plateau_metric = self._plateau_value(trainer)
        due = is_last_epoch(trainer) or time.monotonic() - self._written >= self.every
        # The processes' clocks differ; saving is a barrier every process must reach: rank 0 decides.
        if trainer.strategy.broadcast(due) if trainer.world_size > 1 else due:
            trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes
            self._written = time.monotonic()

    @staticmethod
    def _plateau_value(trainer: pl.Trainer) -> float | None:
        for config in trainer.lr_scheduler_configs:
            if config.reduce_on_plateau and config.monitor in trainer.callback_metrics:
                return float(trainer.callback_metrics[config.monitor])
        return None

    def _replay_plateau_step(self, trainer: pl.Trainer) -> None:
        """Lightning does not step ReduceLROnPlateau for the epoch a resumed state was saved in: step it here, once,
        with the value saved with the state. A fresh run has none."""
        if self.plateau_metric is None:
            return
        for config in trainer.lr_scheduler_configs:
            if config.reduce_on_plateau:
                config.scheduler.step(self.plateau_metric)
        self.plateau_metric = None

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_metric": self.plateau_metric}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_metric = state["plateau_metric"]
