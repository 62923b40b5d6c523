"""What the model sees and predicts, in W&B.

- `TrainSamples`: two seeded training samples with their masks, once, when the run's first epoch ends (the
  W&B run starts in the background and is not waited for before that).
- `PredictionLogger`: a fixed, seeded set of validation images predicted after every `every` validations
  and logged under the same key each time (W&B's step slider then shows them evolving), with the
  prediction and the ground truth as two mask layers. The images are predicted in one extra batch after
  validation; the measured cost is in BENCHMARKS.md.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch

from segcli.data.dataset import SegmentationDataset, derived_seed
from segcli.data.samples import choose_pairs, load_samples
from segcli.data.transforms import preview_pipeline
from segcli.drawing.pictures import Sample
from segcli.models.metrics import predictions
from segcli.training.tracking import wandb_images

SAMPLES_LOGGED = 2
KEY = "val/predictions"


class TrainSamples(pl.Callback):
    def __init__(self, plan, seed: int):
        self.plan, self.seed = plan, seed

    def on_train_epoch_end(self, trainer: pl.Trainer, task) -> None:
        if trainer.current_epoch != 0 or not trainer.is_global_zero:
            return  # a resumed run logged them in its first epoch
        plan = self.plan
        pairs = choose_pairs(plan.pairs["train"], SAMPLES_LOGGED, self.seed)
        samples = load_samples(pairs, plan.experiment.model.in_channels, label_lookup=plan.label_lookup)
        images = wandb_images(samples, plan.class_names, plan.experiment.ignore_index)
        trainer.logger.experiment.log({"samples/train": images, "trainer/global_step": trainer.global_step})


class PredictionLogger(pl.Callback):
    def __init__(self, samples: list[Sample], inputs: torch.Tensor, every: int, class_names, ignore_index):
        """`samples`: displayable images and their masks; `inputs`: the same images as the model's batch."""
        self.samples, self.inputs, self.every = samples, inputs, every
        self.class_names, self.ignore_index = class_names, ignore_index

    @classmethod
    def for_plan(cls, plan, dataset: SegmentationDataset) -> PredictionLogger:
        """`log_predictions.count` val images chosen by the seed, after the val transforms (epoch 0's draw)."""
        exp = plan.experiment
        chosen = choose_pairs(list(range(len(dataset))), exp.log_predictions.count, exp.seed)
        preview = preview_pipeline(exp.val_transforms, "val_transforms", plan.normalization["max_pixel_value"])
        samples, inputs = [], []
        for index in chosen:
            image, mask = dataset[(0, index)]
            inputs.append(image)
            preview.set_random_seed(derived_seed(exp.seed, 0, index))
            shown = load_samples([dataset.pairs[index]], exp.model.in_channels, pipeline=preview,
                                 label_lookup=plan.label_lookup)[0]  # fmt: skip
            samples.append(Sample(shown.name, shown.image, mask.numpy().astype(np.int64)))
        return cls(samples, torch.stack(inputs), exp.log_predictions.every, plan.class_names, exp.ignore_index)

    @torch.inference_mode()
    def on_validation_end(self, trainer: pl.Trainer, task) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or (trainer.current_epoch + 1) % self.every:
            return
        was_training = task.training
        task.eval()
        predicted = predictions(task(self.inputs.to(task.device))).cpu().numpy()
        task.train(was_training)
        epoch = trainer.current_epoch + 1
        samples = [Sample(s.name, s.image, s.mask, p, f"epoch {epoch}")
                   for s, p in zip(self.samples, predicted, strict=True)]  # fmt: skip
        images = wandb_images(samples, self.class_names, self.ignore_index)
        trainer.logger.experiment.log({KEY: images, "trainer/global_step": trainer.global_step})
