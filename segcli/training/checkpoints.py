"""segcli's `.pth` files: weights plus the metadata needed to rebuild the model, written atomically.

Every value is a tensor or plain Python data, so `torch.load(weights_only=True)` reads them.
"""

from __future__ import annotations

import errno
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from segcli.errors import CheckpointError, StorageError

FORMAT = "segcli-checkpoint"
FORMAT_VERSION = 1
LATEST, BEST, AVERAGE = "ckpt_latest.pth", "ckpt_best.pth", "average_model.pth"
STATE = "state_latest.ckpt"  # the full training state (Lightning's format) that --resume continues from


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(
                f"disk full while writing {path}; the previous file is intact. Free space, then continue "
                "with `segcli train ... --resume`"
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a segcli checkpoint safely; anything else is a clear error, never unpickled code."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and corrupt files have many types
        raise CheckpointError(
            f"{path}: not a readable segcli checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a segcli checkpoint (expected a file written by `segcli train`)")
    return payload


def checkpoint_payload(
    state_dict: dict[str, torch.Tensor],
    task,
    *,
    epoch: int,
    global_step: int,
    normalization: dict[str, list[float]],
    size_multiple: int,
    run_name: str,
    metrics: dict[str, float],
    kind: str,
) -> dict[str, Any]:
    experiment = task.experiment
    monitor = experiment.monitor.metric
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "state_dict": {key: value.detach().cpu().clone() for key, value in state_dict.items()},
        "arch": experiment.model.arch,
        "encoder_name": experiment.model.encoder_name,
        "in_channels": experiment.model.in_channels,
        "classes": experiment.model.classes,
        "model_params": dict(experiment.model.params),
        "class_names": list(task.class_names),
        "ignore_index": experiment.ignore_index,
        "normalization": normalization,
        "size_multiple": size_multiple,
        "epoch": epoch,
        "global_step": global_step,
        "metric": {"name": monitor, "value": metrics.get(monitor, float("nan"))},
        "metrics": metrics,
        "run_name": run_name,
        "experiment": experiment.model_dump(mode="json"),
    }


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
