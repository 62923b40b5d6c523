"""What the model sees and predicts, in the trackers.

- `TrainSamples`: two seeded training samples with their masks, once, when the run's first epoch ends.
- `PredictionLogger`: a fixed, seeded set of validation images whose predictions are logged after every
  `every` validations under the same key each time (the trackers' step sliders then show them evolving), with
  the prediction and the ground truth (two mask layers in W&B, drawn side by side elsewhere). The predictions
  are those the validation step made and scored (no extra forward pass); under several processes the images
  are chosen among those the first process validates.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl

from segcli.data.dataset import SegmentationDataset, derived_seed
from segcli.data.samples import choose_pairs, load_samples
from segcli.data.transforms import preview_pipeline
from segcli.drawing.pictures import Sample
from segcli.training.trackers import Trackers

SAMPLES_LOGGED = 2
KEY = "val/predictions"


class TrainSamples(pl.Callback):
    def __init__(self, plan, trackers: Trackers, seed: int):
        self.plan, self.trackers, self.seed = plan, trackers, seed

    def on_train_epoch_end(self, trainer: pl.Trainer, task) -> None:
        if trainer.current_epoch != 0 or not trainer.is_global_zero:
            return  # a resumed run logged them in its first epoch
        plan = self.plan
        pairs = choose_pairs(plan.pairs["train"], SAMPLES_LOGGED, self.seed)
        samples = load_samples(pairs, plan.experiment.model.in_channels, label_lookup=plan.label_lookup,
                               never_scored=plan.task.never_scored)  # fmt: skip
        self.trackers.log_samples(
            "samples/train", samples, plan.class_names, plan.task.never_scored, trainer.global_step
        )


class PredictionLogger(pl.Callback):
    """The chosen val images' predictions, taken from the validation steps that make them anyway."""

    def __init__(self, plan, dataset: SegmentationDataset, trackers: Trackers):
        self.plan, self.dataset, self.trackers = plan, dataset, trackers
        self.every = plan.experiment.log_predictions.every
        self.samples: dict[int, Sample] = {}
        """Val index -> the image as shown (val transforms, no normalisation) and its mask."""
        self._batches: list[list[int]] = []
        self._predicted: dict[int, np.ndarray] = {}

    def _logs_this_epoch(self, trainer: pl.Trainer) -> bool:
        return trainer.is_global_zero and (trainer.current_epoch + 1) % self.every == 0

    def on_validation_start(self, trainer: pl.Trainer, task) -> None:
        if not self._logs_this_epoch(trainer):
            return
        loader = trainer.val_dataloaders
        order = [index for _, index in loader.sampler]  # this process's share of the val split, in order
        self._batches = [order[start : start + loader.batch_size] for start in range(0, len(order), loader.batch_size)]
        self._predicted = {}
        if not self.samples:  # chosen among the images this process validates (all of them in one process)
            self.samples = self._load(choose_pairs(order, self.plan.experiment.log_predictions.count,
                                                   self.plan.experiment.seed))  # fmt: skip

    def _load(self, chosen: list[int]) -> dict[int, Sample]:
        """The chosen images after the val transforms (epoch 0's draw), shown without the normalisation."""
        plan, exp = self.plan, self.plan.experiment
        preview = preview_pipeline(exp.val_transforms, "val_transforms", plan.normalization.max_pixel_value,
                                   fill_label=plan.task.never_scored)  # fmt: skip
        samples = {}
        for index in chosen:
            _, mask = self.dataset[(0, index)]
            preview.set_random_seed(derived_seed(exp.seed, 0, index))
            shown = load_samples([self.dataset.pairs[index]], exp.model.in_channels, pipeline=preview,
                                 label_lookup=plan.label_lookup, never_scored=plan.task.never_scored)[0]  # fmt: skip
            samples[index] = Sample(shown.name, shown.image, mask.numpy().astype(np.int64))
        return samples

    def on_validation_batch_end(self, trainer: pl.Trainer, task, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:  # fmt: skip
        """`outputs`: the batch's predicted classes, as the validation step scored them."""
        if not self._logs_this_epoch(trainer):
            return
        for row, index in enumerate(self._batches[batch_idx]):
            if index in self.samples:
                self._predicted[index] = outputs[row].cpu().numpy()

    def on_validation_end(self, trainer: pl.Trainer, task) -> None:
        if not self._logs_this_epoch(trainer) or not self._predicted:
            return
        caption = f"epoch {trainer.current_epoch + 1}"
        samples = [Sample(shown.name, shown.image, shown.mask, self._predicted[index], caption)
                   for index, shown in self.samples.items() if index in self._predicted]  # fmt: skip
        self.trackers.log_samples(KEY, samples, self.plan.class_names, self.plan.task.never_scored, trainer.global_step)
