"""`segcli tune`: tell the trial the epoch's val metric, and end the run when the study's pruner says so."""

from __future__ import annotations

import pytorch_lightning as pl


class TrialPruning(pl.Callback):
    """Reports `metric` to an Optuna trial after every validation (step = the 1-based epoch) and asks its pruner.

    `on_validation_end` runs after the module has logged the epoch's val metrics (the callbacks' own
    `on_validation_epoch_end` runs before it). A pruned run stops like an early-stopped one: the epoch ends,
    its checkpoints, report and state are written, so a pruned trial is an ordinary, finished run folder.
    """

    def __init__(self, trial, metric: str):
        self.trial = trial
        self.metric = metric
        self.pruned_after: int | None = None
        """The epoch after which the pruner stopped the run; None while it has not."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        epoch = trainer.current_epoch + 1
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_after = epoch
            trainer.should_stop = True
