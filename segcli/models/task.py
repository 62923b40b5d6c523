"""The LightningModule every command shares: model, loss, epoch metrics, optimizers.

Batches of any size work: each is padded to the model's size multiple and the logits cropped back, by the
function inference uses (`data/geometry.py`), so no pipeline needs a pad, and validation sees an odd-sized
image exactly as `evaluate` does. The loss and every metric leave out `never_scored` pixels (the
experiment's `ignore_index`, or an internal label without one): what transforms pad masks with.

Built once: `configure_models/losses/metrics` are segcli's own names (torchgeo's), deliberately not
Lightning's `configure_model` hook, which Lightning would call again inside `trainer.fit` and so build
a second model (pretrained weights loaded twice, the seed no longer deciding the start weights).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric

from segcli.config.schema import Experiment
from segcli.data.geometry import crop, pad_to_multiple
from segcli.data.io import never_scored_label
from segcli.errors import TrainingDivergedError
from segcli.models import registry
from segcli.models.losses import build_loss
from segcli.models.metrics import ConfusionMatrix, epoch_metrics, predictions
from segcli.models.optim import build_optimizer, build_scheduler, is_plateau

STAGES = ("train", "val")
FINITE_CHECK_EVERY = 50
"""On a GPU the loss is checked for NaN/inf every this many steps (and at every epoch end), not every step:
a per-step check would make the CPU wait for the GPU. On the CPU it is checked at every step."""


class SegmentationTask(pl.LightningModule):
    """Hyper-parameters are plain data (the resolved experiment), so checkpoints stay portable."""

    def __init__(self, experiment: dict[str, Any], class_names: list[str]):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the trackers log the whole resolved experiment themselves
        self.experiment = Experiment.model_validate(experiment)
        self.class_names = list(class_names)
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def configure_models(self) -> None:
        self.model = registry.create_model(self.experiment.model)
        self.size_multiple = registry.size_multiple(self.model)
        if self.experiment.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.experiment.compile:
            self.model.compile()  # in place: state_dict keys stay those of the plain model

    def configure_losses(self) -> None:
        self.criterion = build_loss(self.experiment.loss, self.never_scored, self.binary)

    def configure_metrics(self) -> None:
        # Keyed "<stage>_matrix": a ModuleDict key "train" would clash with Module.train().
        self.confusion = nn.ModuleDict({f"{stage}_matrix": self.new_confusion_matrix() for stage in STAGES})
        self.last_val_matrix: torch.Tensor | None = None
        self.register_buffer("first_bad_step", torch.tensor(-1), persistent=False)

    @property
    def binary(self) -> bool:
        return self.experiment.model.classes == 1

    @property
    def never_scored(self) -> int:
        """The mask label the loss and the metrics leave out (see `never_scored_label`)."""
        return never_scored_label(self.experiment.ignore_index, len(self.class_names))

    def new_confusion_matrix(self) -> ConfusionMatrix:
        return ConfusionMatrix(len(self.class_names), self.never_scored)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.model, images)

    def model_input(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """A batch as the model takes it: padded to its size multiple (and channels-last when asked), and the
        size to crop its output back to."""
        padded, size = pad_to_multiple(images, self.size_multiple)
        if self.experiment.channels_last:
            padded = padded.contiguous(memory_format=torch.channels_last)
        return padded, size

    def logits(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """`model`'s logits for a batch of any size (this model, or a weight average of it)."""
        batch, size = self.model_input(images)
        return crop(model(batch), size)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        logits = self(images)
        loss = self.criterion(logits, masks)
        self._watch_for_divergence(loss)
        self._accumulate("train", logits, masks, loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The batch's predicted classes (the images logged to W&B are taken from them)."""
        images, masks = batch
        logits = self(images)
        return self._accumulate("val", logits, masks, self.criterion(logits, masks))

    def _accumulate(self, stage: str, logits: torch.Tensor, masks: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Scores the batch's predictions, and returns them."""
        predicted = predictions(logits.detach())
        self.confusion[f"{stage}_matrix"].update(predicted, masks)
        # train/* reach the logger from on_train_epoch_end itself (see there), not from Lightning's later flush.
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(masks),
                 sync_dist=True, logger=stage != "train")  # fmt: skip
        return predicted

    def _watch_for_divergence(self, loss: torch.Tensor) -> None:
        """Stop on a NaN/inf loss, before backward() on the CPU; on a GPU without a per-step synchronisation."""
        bad = ~torch.isfinite(loss.detach())
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), self.global_step, self.first_bad_step)
        if loss.device.type == "cpu" or self.global_step % FINITE_CHECK_EVERY == 0:
            self.raise_if_diverged()

    def raise_if_diverged(self) -> None:
        step = int(self.first_bad_step)
        if step < 0:
            return
        raise TrainingDivergedError(
            f"the training loss became NaN or infinite at epoch {self.current_epoch + 1}, step {step}; lower `lr`, "
            "use `precision: 32`, or check the data. No checkpoint was written from the broken weights; "
            "`--resume` continues from the last completed epoch"
        )

    def _epoch_scores(self, stage: str) -> dict[str, float] | None:
        """The stage's epoch metrics from its confusion matrix (then reset); None when nothing accumulated."""
        # compute() sums the matrix over processes before any ratio is taken.
        confusion = self.confusion[f"{stage}_matrix"]
        matrix = confusion.compute()
        confusion.reset()
        if int(matrix.sum()) == 0:
            return None
        if stage == "val":
            self.last_val_matrix = matrix.detach().cpu().clone()
        return epoch_metrics(matrix, stage, self.class_names, self.binary)

    def log_scores(self, metrics: dict[str, float], logger: bool = True) -> None:
        """Log epoch metrics; the headline means also go to the progress bar."""
        headline = {key: value for key, value in metrics.items() if key.endswith(("/mIoU", "/mDCC"))}
        # Already summed over processes; sync_dist only averages identical values (and silences Lightning).
        self.log_dict(headline, prog_bar=True, sync_dist=True, logger=logger)
        self.log_dict({k: v for k, v in metrics.items() if k not in headline}, sync_dist=True, logger=logger)
        # The trackers' `epoch` counts from 1, like everything segcli shows (Lightning would log its 0-based one).
        self.log("epoch", float(self.current_epoch + 1), sync_dist=True, logger=logger)

    def on_train_epoch_end(self) -> None:
        self.raise_if_diverged()
        metrics = self._epoch_scores("train")
        if metrics is None:
            return  # nothing accumulated (e.g. the epoch end of a resumed epoch): no row of NaN
        self.log_scores(metrics, logger=False)
        # To the loggers now, not at Lightning's flush after every epoch-end hook: the row is written before
        # this epoch's training state is saved, so a run killed between the two never loses it.
        if self.trainer.is_global_zero and self.loggers:
            loss = float(self.trainer.callback_metrics["train/loss"])
            row = {**metrics, "train/loss": loss, "epoch": float(self.current_epoch + 1)}
            for logger in self.loggers:
                logger.log_metrics(row, step=self.global_step - 1)

    def on_validation_epoch_end(self) -> None:
        metrics = self._epoch_scores("val")
        if metrics is not None:
            self.log_scores(metrics)

    @torch.inference_mode()
    def score(self, model: nn.Module, loader) -> tuple[float, torch.Tensor]:
        """(mean loss, confusion matrix) of `model` over `loader` in eval mode, summed over processes.

        Used for the weight averages, which are scored on the validation split like the live model.
        """
        was_training = model.training
        model.eval()
        confusion = self.new_confusion_matrix().to(self.device)
        mean_loss = MeanMetric().to(self.device)
        for images, masks in loader:
            images, masks = images.to(self.device), masks.to(self.device)
            logits = self.logits(model, images)
            mean_loss.update(self.criterion(logits, masks), len(masks))
            confusion.update(predictions(logits), masks)
        model.train(was_training)
        return float(mean_loss.compute()), confusion.compute().cpu()

    def configure_optimizers(self):
        cfg, length = self.experiment.scheduler, None
        if cfg is not None:  # the experiment's epochs: the benchmark's Trainer runs open-ended (max_epochs -1)
            length = self.trainer.estimated_stepping_batches if cfg.interval == "step" else self.experiment.max_epochs
        return self.build_optimizers(int(length) if length is not None and 0 < length < math.inf else None)

    def build_optimizers(self, run_length: int | None):
        """The optimizer and its schedule for a run of `run_length` scheduler steps (None: open length)."""
        optimizer = build_optimizer(self.experiment.optimizer, self.parameters(), self.experiment.lr)
        cfg = self.experiment.scheduler
        if cfg is None:
            return optimizer
        scheduler = {"scheduler": build_scheduler(cfg, optimizer, run_length), "interval": cfg.interval}
        if is_plateau(cfg):
            scheduler["monitor"] = cfg.monitor or "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
