"""The learning-rate range test (Lightning's `Tuner.lr_find`) on the experiment's real model and data."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pytorch_lightning.tuner import Tuner

from segcli.config.schema import Experiment
from segcli.drawing.charts import figure_image, lr_finder_chart
from segcli.errors import ConfigError
from segcli.files import BackgroundWriter, save_image
from segcli.training.loaders import make_datasets, make_loaders
from segcli.training.preflight import preflight
from segcli.training.run import build_trainer, quiet_libraries
from segcli.training.trackers import TrackedRun, Trackers, require_extras

SKIPPED_FIRST, SKIPPED_LAST = 10, 1
"""Steps the suggestion leaves out (Lightning's defaults, passed explicitly): the noisy first ones and the last."""
MIN_STEPS = SKIPPED_FIRST + SKIPPED_LAST + 2  # the slope of the loss needs two finite points in between


@dataclass
class LrFinding:
    lrs: list[float]
    losses: list[float]
    suggestion: float | None
    """None when fewer than two of the losses it reads are finite."""


def find_learning_rate(experiment: Experiment, *, dataset: Path, class_names: list[str], name: str,
                       force_cpu: bool, min_lr: float, max_lr: float, steps: int, plot: Path | None,
                       trackers: list[str] | None = None) -> LrFinding:  # fmt: skip
    """Run `steps` training steps with the learning rate rising exponentially, plot loss vs lr, suggest one.

    Lightning restores the model's weights afterwards; nothing is written but the plot (none without `plot`),
    and with `trackers` (names) a run `<name>-find-lr` in each: the loss at every learning rate, the plot and
    the suggestion.
    """
    if steps < MIN_STEPS:
        raise ConfigError(
            f"--steps {steps}: too few for a suggestion, which leaves out the first {SKIPPED_FIRST} steps and the last "
            f"and reads the slope of the loss over the rest; use --steps {MIN_STEPS} or more (the default is 100)"
        )
    quiet_libraries()
    require_extras(trackers or [])
    plan = preflight(experiment, dataset=dataset, class_names=class_names, experiment_name=name, force_cpu=force_cpu)
    tracked = Trackers()
    if trackers:  # started before the loaders' workers fork; their local stores go beside the plot
        run = TrackedRun(name=f"{name}-find-lr", output_dir=plot.parent, run_dir=plot.parent, job_type="find-lr",
                         config={**experiment.model_dump(mode="json"), "class_names": class_names})  # fmt: skip
        tracked = Trackers.start(trackers, run)
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
    suggestion = finder.suggestion(skip_begin=SKIPPED_FIRST, skip_end=SKIPPED_LAST)
    title = f"{name}: learning-rate range test, {len(lrs)} steps of batch {experiment.batch_size}"
    if plot is not None:
        save_image(plot, lr_finder_chart(lrs, losses, suggestion, title))
    for step, (lr, loss) in enumerate(zip(lrs, losses, strict=True)):
        tracked.log_metrics({"lr_finder/lr": float(lr), "lr_finder/loss": float(loss)}, step)
    if tracked:
        tracked.log_picture("lr_finder/plot", figure_image(lr_finder_chart(lrs, losses, suggestion, title)), len(lrs))
    if suggestion is not None:
        tracked.log_metrics({"lr_finder/suggestion": float(suggestion)}, len(lrs))
    tracked.close("success")
    return LrFinding(
        [float(v) for v in lrs], [float(v) for v in losses], None if suggestion is None else float(suggestion)
    )
