"""The learning-rate range test (Lightning's `Tuner.lr_find`) on the experiment's real model and data."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pytorch_lightning.tuner import Tuner

from segcli.config.schema import Experiment
from segcli.drawing.charts import lr_finder_chart
from segcli.files import BackgroundWriter, save_image
from segcli.training.loaders import make_datasets, make_loaders
from segcli.training.preflight import preflight
from segcli.training.run import build_trainer, quiet_libraries


@dataclass
class LrFinding:
    lrs: list[float]
    losses: list[float]
    suggestion: float | None


def find_learning_rate(experiment: Experiment, *, dataset: Path, class_names: list[str], name: str, force_cpu: bool,
                       min_lr: float, max_lr: float, steps: int, plot: Path | None) -> LrFinding:  # fmt: skip
    """Run `steps` training steps with the learning rate rising exponentially, plot loss vs lr, suggest one.

    Lightning restores the model's weights afterwards; nothing is written but the plot (none without `plot`).
    """
    quiet_libraries()
    plan = preflight(experiment, dataset=dataset, class_names=class_names, experiment_name=name, force_cpu=force_cpu)
    loaders = make_loaders(plan, make_datasets(plan))
    writer = BackgroundWriter()
    with tempfile.TemporaryDirectory() as scratch:
        # The range test counts steps, not epochs: a small dataset needs more epochs than the experiment's.
        epochs = max(experiment.max_epochs, math.ceil(steps / len(loaders["train"])) + 1)
        trainer = build_trainer(plan, logger=False, callbacks=[], progress=False, writer=writer,
                                default_root_dir=scratch, enable_checkpointing=False, max_epochs=epochs)  # fmt: skip
        # early_stop_threshold=None: the whole range; a noisy start must not end the test before it shows anything.
        finder = Tuner(trainer).lr_find(plan.task, train_dataloaders=loaders["train"], min_lr=min_lr, max_lr=max_lr,
                                        num_training=steps, update_attr=False, early_stop_threshold=None)  # fmt: skip
        writer.close()
    lrs, losses = finder.results["lr"], finder.results["loss"]
    suggestion = finder.suggestion()
    if plot is not None:
        title = f"{name}: learning-rate range test, {len(lrs)} steps of batch {experiment.batch_size}"
        save_image(plot, lr_finder_chart(lrs, losses, suggestion, title))
    return LrFinding(
        [float(v) for v in lrs], [float(v) for v in losses], None if suggestion is None else float(suggestion)
    )
