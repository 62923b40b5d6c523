"""Weight averages: SWA (`average_model.pth`) and EMA (`ema_model.pth`), each scored on the val split.

- `SwaAverage`: an equal average of the weights after each epoch from `average.start_epoch` on (default:
  the last quarter of the run, when the weights are already good; an average from epoch 1 would include
  near-random weights). BatchNorm statistics of the average are recomputed over training batches
  (`torch.optim.swa_utils.update_bn`): averaged running statistics do not fit averaged weights. It is
  scored on the val split (`val_avg/*`) and written with its own metrics when training ends.
- `EmaAverage`: an exponential moving average updated after every optimizer step, BatchNorm buffers
  included (as timm's ModelEma does); scored on the val split every epoch (`val_ema/*`), so both the
  raw and the EMA model are reported and `monitor: val_ema/mIoU` can pick ckpt_best.pth on it.

Lightning's `WeightAveraging`/`EMAWeightAveraging` do not fit: they validate only the averaged weights
(swapped in), so raw and EMA cannot both be reported, and their `AveragedModel` update asks the GPU
whether it is the first update at every step (a host synchronisation). The EMA update here is torch's own EMA
function (`get_ema_multi_avg_fn`, one fused lerp) with the decay computed on the host.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytorch_lightning as pl
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from segcli.models.metrics import epoch_metrics


def scored_metrics(task, model: torch.nn.Module, loader, stage: str) -> tuple[dict[str, float], torch.Tensor]:
    """`<stage>/loss`, `<stage>/mIoU`, ... of `model` on `loader`, and the confusion matrix they come from (summed
    over processes)."""
    loss, matrix = task.score(model, loader)
    return {f"{stage}/loss": loss, **epoch_metrics(matrix, stage, task.class_names, task.binary)}, matrix


class EmaAverage(pl.Callback):
    def __init__(self, decay: float, warmup_steps: int = 0):
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.updates = 0
        self.last_step = 0  # the optimizer step the EMA last followed (no update without a step)
        self.module: torch.nn.Module | None = None
        self._pending: dict[str, Any] | None = None
        self.last_matrix: torch.Tensor | None = None
        """The val confusion matrix of the EMA weights at the latest validation."""

    def decay_at(self, updates: int) -> float:
        """The configured decay, ramped up as (1 + n) / (10 + n) during the warm-up steps."""
        if updates < self.warmup_steps:
            return min(self.decay, (1 + updates) / (10 + updates))
        return self.decay

    def setup(self, trainer: pl.Trainer, task, stage: str) -> None:
        if self.module is None:
            self.module = copy.deepcopy(task.model).eval().requires_grad_(False)
        if self._pending is not None:
            self.load_state_dict(self._pending)

    def on_fit_start(self, trainer: pl.Trainer, task) -> None:
        self.module.to(task.device)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, task, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.last_step:
            return  # gradient accumulation: no optimizer step this batch
        self.last_step = trainer.global_step
        pairs = list(zip(itertools.chain(self.module.parameters(), self.module.buffers()),
                         itertools.chain(task.model.parameters(), task.model.buffers()), strict=True))  # fmt: skip
        floats = [(ema, live) for ema, live in pairs if ema.is_floating_point()]
        update = get_ema_multi_avg_fn(self.decay_at(self.updates))  # one fused lerp over every tensor
        update([ema for ema, _ in floats], [live.detach() for _, live in floats], self.updates)
        for ema, live in pairs:
            if not ema.is_floating_point():
                ema.copy_(live)
        self.updates += 1

    def on_validation_epoch_end(self, trainer: pl.Trainer, task) -> None:
        metrics, self.last_matrix = scored_metrics(task, self.module, trainer.val_dataloaders, "val_ema")
        task.log_scores(metrics)

    def state_dict(self) -> dict[str, Any]:
        weights = {key: value.cpu() for key, value in self.module.state_dict().items()}
        return {"updates": self.updates, "last_step": self.last_step, "weights": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.module is None:  # restored before setup: apply once the model exists
            self._pending = state
            return
        self.updates, self.last_step = state["updates"], state["last_step"]
        self.module.load_state_dict(state["weights"])
        self._pending = None


class SwaAverage(pl.Callback):
    """Averages the weights of epochs >= `start_epoch` (1-based); see the module docstring.

    An extended run (`--resume --max-epochs N`) has a later default start than the run it continues. An average
    that held only epochs before the new start is dropped, and averaging begins again at the new start: the same
    average as a run of N epochs at once. One that already holds an epoch from the new start on cannot be made
    that average (the earlier epochs' weights are gone): it keeps its first epoch, `first_epoch`, and goes on.
    """

    def __init__(self, start_epoch: int, bn_batches: int | None = None, on_ready=None):
        self.start_epoch = start_epoch
        self.bn_batches = bn_batches
        self.on_ready = on_ready or (lambda model, metrics, trainer, task: None)
        """Called (on every process) with the finished average and its val metrics when training ends."""
        self.averaged: AveragedModel | None = None
        self._pending: dict[str, Any] | None = None
        self.metrics: dict[str, float] = {}
        self.epochs: int = 0
        self.first_epoch: int | None = None
        """The first epoch in the average (1-based); differs from `start_epoch` only in an extended run."""

    def setup(self, trainer: pl.Trainer, task, stage: str) -> None:
        if self.averaged is None:
            self.averaged = AveragedModel(task.model, device=torch.device("cpu"), use_buffers=False)
        if self._pending is not None:
            self.load_state_dict(self._pending)

    def on_train_epoch_end(self, trainer: pl.Trainer, task) -> None:
        epoch = trainer.current_epoch + 1
        if epoch >= self.start_epoch:
            if not self.epochs:
                self.first_epoch = epoch
            self.averaged.update_parameters(task.model)
            self.epochs += 1

    def on_train_end(self, trainer: pl.Trainer, task) -> None:
        """The average with BatchNorm statistics recomputed for it, scored on the val split (`val_avg/*`).

        Runs when training ends normally, by early stopping or after Ctrl-C; not after a diverged loss.
        """
        if not self.epochs:
            return
        # The average itself (nothing averages into it any more, and the training state was saved before this).
        model = self.averaged.module.to(task.device)
        loader = trainer.train_dataloader
        batches = itertools.islice(loader, self.bn_batches) if self.bn_batches else loader
        update_bn((task.model_input(images)[0] for images, _ in batches), model, device=task.device)
        if trainer.world_size > 1:  # each process saw its shard: average the statistics
            for module in model.modules():
                for buffer in (getattr(module, "running_mean", None), getattr(module, "running_var", None)):
                    if isinstance(buffer, torch.Tensor):
                        buffer.copy_(trainer.strategy.reduce(buffer, reduce_op="mean"))
        self.metrics, _ = scored_metrics(task, model, trainer.val_dataloaders, "val_avg")
        self.on_ready(model, self.metrics, trainer, task)

    def state_dict(self) -> dict[str, Any]:
        if not self.epochs:  # nothing averaged yet: no copy of the weights to write every epoch
            return {"epochs": 0}
        return {"epochs": self.epochs, "first_epoch": self.first_epoch, "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.averaged is None:
            self._pending = state
            return
        self._pending = None
        epochs, first = state["epochs"], state.get("first_epoch")
        if not epochs or (first is not None and first + epochs - 1 < self.start_epoch):
            return  # nothing averaged from the start epoch on: averaging (re)starts there
        self.epochs, self.first_epoch = epochs, first
        self.averaged.load_state_dict(state["averaged"])
