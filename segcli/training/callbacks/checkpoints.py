"""The end of every epoch, once every other callback has finished it: history, best epoch, the `.pth` files,
the run report and the full training state (at most every `state_every_seconds`, and at the last epoch).

`RunCheckpoints` is a Lightning `Checkpoint`, so Lightning runs its `on_train_epoch_end` last: after
EarlyStopping has counted the epoch and after the module has logged the epoch's train metrics. The state
saved there is complete and current (a state saved earlier, in `on_validation_end`, missed EarlyStopping's
update and made Lightning replay the epoch end on resume). The scheduler steps right after this hook;
Lightning replays that step on resume, except for ReduceLROnPlateau, which this callback replays itself.

Files are written by the `BackgroundWriter`: the training thread only copies tensors to the CPU.
"""

from __future__ import annotations

import math
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
from segcli.artifacts.folders import RunDir, RunRecord
from segcli.artifacts.model_info import ModelInfo
from segcli.config.schema import MonitorConfig
from segcli.files import BackgroundWriter, link_or_copy, save_torch
from segcli.training.report import report_details

EpochRow = dict[str, float]
"""One epoch of history: `epoch` (1-based), train/*, val/*, val_ema/*, `lr`, `seconds`."""


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


class RunCheckpoints(Checkpoint):
    """History, best tracking, ckpt_latest/ckpt_best/ema_model.pth, the run report and the training state."""

    def __init__(
        self,
        *,
        run_dir: RunDir,
        writer: BackgroundWriter,
        info: ModelInfo,
        run_name: str,
        record: RunRecord,
        monitor: MonitorConfig,
        ema=None,
        on_epoch: Callable[[EpochRow, pl.Trainer], None] | None = None,
        report=None,
        sync: Callable[[Path], None] | None = None,
        state_every: float = 0.0,
        run_seconds: Callable[[], float] | None = None,
    ):
        self.run_dir = run_dir
        self.writer = writer
        self.info = info
        self.run_name = run_name
        self.monitor = monitor
        self.ema = ema
        self.on_epoch = on_epoch or (lambda row, trainer: None)
        self.report = report
        self.sync = sync
        """The trackers' live sync of a written file (called on the writer thread)."""
        self._synced: set[Path] = set()
        self.record = record
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.best_matrix: list[list[int]] | None = None
        self.history: list[EpochRow] = []
        self.plateau_metric: float | None = None
        self._latest_on_disk: int | None = None  # epoch of the ckpt_latest.pth the writer wrote last
        self.state_every = state_every
        """Seconds between two writes of the training state (0: every epoch); see `_state_due`."""
        self._state_written = time.monotonic()
        self._epoch_started = time.monotonic()
        self.run_seconds = run_seconds
        """The run's time so far (RunRecord.seconds), stored in run.json after every epoch."""

    # --- per epoch --------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._replay_plateau_step(trainer)
        self._state_written = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._epoch_started = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, task) -> None:
        epoch = trainer.current_epoch + 1
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()
                   if key.startswith(("train/", "val/", "val_ema/"))}  # fmt: skip
        row = {"epoch": epoch, **metrics, "lr": trainer.optimizers[0].param_groups[0]["lr"],
               "seconds": time.monotonic() - self._epoch_started}  # fmt: skip
        self.history.append(row)
        score = metrics.get(self.monitor.metric, float("nan"))
        improved = self._is_better(score)
        if improved:
            self.best_score, self.best_epoch, self.best_metrics = score, epoch, metrics
            monitors_ema = self.monitor.metric.startswith("val_ema/")
            matrix = self.ema.last_matrix if monitors_ema else task.last_val_matrix  # the monitored weights' own
            if matrix is not None:
                self.best_matrix = matrix.tolist()
        self.plateau_metric = self._plateau_value(trainer, metrics)
        last = trainer.should_stop or 0 < trainer.max_epochs <= epoch  # early stopping and Ctrl-C set should_stop
        if trainer.is_global_zero:
            self._write_weights(trainer, task, epoch, metrics, improved)
            if self.report is not None:  # the epoch training ends at is drawn by the final report
                self.report.submit(self, last=last)
        if self._state_due(trainer, last):
            trainer.save_checkpoint(self.run_dir.state)  # every rank calls it (a barrier); rank 0 writes
            self._state_written = time.monotonic()
        if trainer.is_global_zero:
            self.record.epochs_completed = epoch
            self.record.seconds = self.run_seconds() if self.run_seconds else None
            self.record.report = report_details(self, task.class_names)
            record = RunRecord(**vars(self.record))
            self.writer.submit(self.run_dir.record, lambda: record.write(self.run_dir))
            self.on_epoch(row, trainer)

    def _state_due(self, trainer: pl.Trainer, last: bool) -> bool:
        """The training state is 230 MB for a Unet/resnet18: written after every epoch of a few seconds, it takes a
        tenth of the CPU time training wants. It is written when `state_every` has passed since the last write,
        and always at the epoch training stops at (max_epochs, early stopping, Ctrl-C), which a resume or an
        extension continues from."""
        due = last or time.monotonic() - self._state_written >= self.state_every
        # The processes' clocks differ; saving is a barrier every process must reach: rank 0 decides.
        return trainer.strategy.broadcast(due) if trainer.world_size > 1 else due

    def _is_better(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.monitor.mode == "max" else score < self.best_score

    def _payload(self, trainer: pl.Trainer, task, model: torch.nn.Module, metrics: dict[str, float], *,
                 epoch: int, scored_as: str = "val") -> dict:  # fmt: skip
        """A checkpoint of `model` after `epoch` completed epochs, whose `metrics` are that model's own val scores
        (under `val/*`), logged under `scored_as`."""
        return CheckpointFile(
            info=self.info, state_dict=cpu_copy(model.state_dict()), epoch=epoch, global_step=trainer.global_step,
            metrics=metrics, run_name=self.run_name, experiment=task.experiment.model_dump(mode="json"),
            scored_as=scored_as,
        ).payload()  # fmt: skip

    def _write_weights(self, trainer: pl.Trainer, task, epoch: int, metrics: dict[str, float], improved: bool) -> None:
        live = {key: value for key, value in metrics.items() if not key.startswith("val_ema/")}
        latest = self._payload(trainer, task, task.model, live, epoch=epoch)
        self._submit(self.run_dir.latest, lambda: self._save_latest(latest, epoch))
        ema = None
        if self.ema is not None:
            ema = self._payload(trainer, task, self.ema.module, own_metrics(metrics, "val_ema"), epoch=epoch,
                                scored_as="val_ema")  # fmt: skip
            self._submit(self.run_dir.ema, lambda: save_torch(ema, self.run_dir.ema))
        if not improved:
            return
        if self.monitor.metric.startswith("val_ema/"):
            self._submit(self.run_dir.best, lambda: save_torch(ema, self.run_dir.best))
        else:
            self._submit(self.run_dir.best, lambda: self._save_best(latest, epoch))

    def write_average(self, model: torch.nn.Module, metrics: dict[str, float], trainer: pl.Trainer, task) -> None:
        """average_model.pth, with the average's own val scores; its val_avg/* go to every tracker."""
        if not trainer.is_global_zero:
            return
        # The epochs completed: Lightning's epoch counter has already moved past the last one when training ends.
        payload = self._payload(trainer, task, model, own_metrics(metrics, "val_avg"), epoch=self.history[-1]["epoch"],
                                scored_as="val_avg")  # fmt: skip
        self._submit(self.run_dir.average, lambda: save_torch(payload, self.run_dir.average))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

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

    # --- ReduceLROnPlateau across a resume ----------------------------------------------------------

    @staticmethod
    def _plateau_value(trainer: pl.Trainer, metrics: dict[str, float]) -> float | None:
        for config in trainer.lr_scheduler_configs:
            if config.reduce_on_plateau and config.monitor in metrics:
                return metrics[config.monitor]
        return None

    def _replay_plateau_step(self, trainer: pl.Trainer) -> None:
        """Lightning does not step ReduceLROnPlateau for the epoch a resumed state was saved in (the metric is
        not in its checkpoint): step it here, once, with the value this callback saved. A fresh run has none."""
        if self.plateau_metric is None:
            return
        for config in trainer.lr_scheduler_configs:
            if config.reduce_on_plateau:
                config.scheduler.step(self.plateau_metric)
        self.plateau_metric = None

    # --- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "best_matrix": self.best_matrix,
            "history": self.history,
            "plateau_metric": self.plateau_metric,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.best_metrics, self.best_matrix = state["best_metrics"], state["best_matrix"]
        self.history, self.plateau_metric = state["history"], state["plateau_metric"]
