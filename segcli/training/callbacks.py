"""segcli's Lightning callbacks: the checkpoint files after each validation, and a clean Ctrl-C."""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from segcli.training.checkpoints import AVERAGE, BEST, LATEST, atomic_save, checkpoint_payload


class SegcliCheckpoints(pl.Callback):
    """Writes ckpt_latest.pth, ckpt_best.pth, average_model.pth and the full training state after each validation.

    Runs in `on_validation_end`, after the LightningModule has logged THIS epoch's metrics
    (a callback's `on_validation_epoch_end` would still see the previous epoch's values).
    The average is an equal-weight running average of the weights after each epoch, with
    BatchNorm buffers averaged too (use_buffers=True) so its statistics match its weights; it
    lives on the CPU. Best score, history, the average and the torch RNG are part of the
    training state, so a resumed run continues exactly.
    """

    def __init__(
        self,
        directory: Path,
        run_name: str,
        normalization: dict[str, list[float]],
        size_multiple: int,
        on_write=None,
        state_path: Path | None = None,
        on_state_saved=None,
    ):
        self.directory = directory
        self.run_name = run_name
        self.normalization = normalization
        self.size_multiple = size_multiple
        self.on_write = on_write or (lambda path: None)
        self.state_path = state_path
        self.on_state_saved = on_state_saved or (lambda epoch: None)
        self.averaged: AveragedModel | None = None
        self._pending_average: dict[str, torch.Tensor] | None = None
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []  # val metrics per epoch

    def paths(self) -> dict[str, Path]:
        return {name: self.directory / name for name in (LATEST, BEST, AVERAGE)}

    def _is_better(self, score: float, mode: str) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if mode == "max" else score < self.best_score

    def _average_of(self, model: nn.Module) -> AveragedModel:
        if self.averaged is None:
            self.averaged = AveragedModel(model, device=torch.device("cpu"), use_buffers=True)
            if self._pending_average is not None:
                self.averaged.load_state_dict(self._pending_average)
                self._pending_average = None
        return self.averaged

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        self._average_of(pl_module.model)  # before a resume restores its state

    def _write(self, name: str, model: nn.Module, trainer: pl.Trainer, task, metrics: dict[str, float]) -> None:
        payload = checkpoint_payload(
            model.state_dict(),
            task,
            epoch=trainer.current_epoch,
            global_step=trainer.global_step,
            normalization=self.normalization,
            size_multiple=self.size_multiple,
            run_name=self.run_name,
            metrics=metrics,
            kind=name.removesuffix(".pth"),
        )
        payload["history"] = self.history
        path = self.directory / name
        atomic_save(payload, path)
        self.on_write(path)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        # Only val/* is final here: train/* of this epoch is logged after validation.
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
        self.history.append({"epoch": trainer.current_epoch, **metrics})
        model = pl_module.model
        averaged = self._average_of(model)
        averaged.update_parameters(model)  # the first call copies (n_averaged 0 -> 1), later ones average
        monitor = pl_module.experiment.monitor
        score = metrics.get(monitor.metric, float("nan"))
        improved = self._is_better(score, monitor.mode)
        if improved:
            self.best_score, self.best_epoch, self.best_metrics = score, trainer.current_epoch, metrics
        if trainer.is_global_zero:
            self._write(LATEST, model, trainer, pl_module, metrics)
            self._write(AVERAGE, averaged.module, trainer, pl_module, metrics)
            if improved:
                self._write(BEST, model, trainer, pl_module, metrics)
        if self.state_path is not None:
            trainer.save_checkpoint(self.state_path)  # every rank calls it; Lightning writes once
            if trainer.is_global_zero:
                self.on_state_saved(trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "history": self.history,
            "averaged": self.averaged.state_dict() if self.averaged is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.best_metrics, self.history = state["best_metrics"], state["history"]
        if state["averaged"] is not None:
            if self.averaged is not None:
                self.averaged.load_state_dict(state["averaged"])
            else:
                self._pending_average = state["averaged"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


class GracefulStop(pl.Callback):
    """First Ctrl-C: finish the current epoch (its state is saved) and stop. Second Ctrl-C: abort now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("\nstopping after this epoch (its state will be saved); press Ctrl-C again to abort now\n")

    def __enter__(self) -> GracefulStop:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.requested:
            trainer.should_stop = True
