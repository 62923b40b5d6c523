"""The terminal's progress bar: Lightning's RichProgressBar with segcli's 1-based epochs and without `v_num`.

Lightning labels the bar `Epoch 0/0` for the only epoch (its 0-based index over max_epochs - 1) and shows the
logger's version number, which means nothing to a segcli user (the run has a name and a W&B id). Relabelling
the bar after Lightning's hook would still draw its label once per epoch (rich draws a task as it is added or
reset), so the hook is replaced: it adds or resets the epoch's task with segcli's label, as Lightning's does
(without `leave`, which segcli does not use).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


class EpochProgressBar(RichProgressBar):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_disabled or self.progress is None:
            return
        # As wide as the validation bar's label, as Lightning pads its own, so the bars do not jump.
        label = f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}".ljust(len(self.validation_description))
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self.progress.add_task(label, total=self.total_train_batches)
        else:
            self.progress.reset(self.train_progress_bar_id, total=self.total_train_batches, description=label,
                                visible=True)  # fmt: skip
        self.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
