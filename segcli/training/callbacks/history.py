"""The run's history: one row per epoch, and the best epoch by the monitored metric.

The callbacks that act at an epoch's end are Lightning `Checkpoint`s, which Lightning runs last and in list
order: after the module has logged the epoch's train metrics and after EarlyStopping has counted the epoch.
`EpochHistory` comes first of them; the weight files, the report, the training state and run.json read it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

from segcli.config.schema import MonitorConfig

EpochRow = dict[str, float]
"""One epoch of history: `epoch` (1-based), train/*, val/*, val_ema/*, `lr`, `seconds`."""


def is_last_epoch(trainer: pl.Trainer) -> bool:
    """The epoch training stops at: max_epochs reached, or early stopping / Ctrl-C set `should_stop`."""
    return trainer.should_stop or 0 < trainer.max_epochs <= trainer.current_epoch + 1


class EpochHistory(Checkpoint):
    """Every epoch's row, and the best epoch with its metrics and confusion matrix (the monitored weights' own:
    the EMA's when `monitor` is a val_ema/ metric)."""

    def __init__(self, monitor: MonitorConfig, ema=None, on_row: Callable[[EpochRow], None] | None = None):
        self.monitor = monitor
        self.ema = ema
        self.on_row = on_row
        """Told each new row (on the first process; the CLI prints a progress line)."""
        self.history: list[EpochRow] = []
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.best_matrix: list[list[int]] | None = None
        self.improved = False
        """Whether the latest epoch is the new best."""
        self._epoch_started = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._epoch_started = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, task) -> None:
        epoch = trainer.current_epoch + 1
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()
                   if key.startswith(("train/", "val/", "val_ema/"))}  # fmt: skip
        self.history.append({"epoch": epoch, **metrics, "lr": trainer.optimizers[0].param_groups[0]["lr"],
                             "seconds": time.monotonic() - self._epoch_started})  # fmt: skip
        self.improved = self._is_better(metrics.get(self.monitor.metric, float("nan")))
        if self.improved:
            self.best_score, self.best_epoch, self.best_metrics = metrics[self.monitor.metric], epoch, metrics
            matrix = self.ema.last_matrix if self.monitor.metric.startswith("val_ema/") else task.last_val_matrix
            if matrix is not None:
                self.best_matrix = matrix.tolist()
        if self.on_row is not None and trainer.is_global_zero:
            self.on_row(self.latest)

    @property
    def latest(self) -> EpochRow:
        return self.history[-1]

    def _is_better(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.monitor.mode == "max" else score < self.best_score

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "best_matrix": self.best_matrix, "history": self.history}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.best_metrics, self.best_matrix = state["best_metrics"], state["best_matrix"]
        self.history = state["history"]
