"""TensorBoard: Lightning's `TensorBoardLogger`, event files in the run folder."""

from __future__ import annotations

import numpy as np

from segcli.training.trackers.base import TrackedRun, Tracker, flat_params


class TensorBoardTracker(Tracker):
    """Lightning's `TensorBoardLogger`, event files in `<run folder>/tensorboard`: scalars, the parameters,
    and every picture (predictions, confusion matrix, worst images) as an image."""

    label = "TensorBoard"

    @classmethod
    def start(cls, run: TrackedRun) -> TensorBoardTracker:
        from pytorch_lightning.loggers import TensorBoardLogger

        # A resumed run hides what the killed one logged after its saved state (TensorBoard's purge_step), so the
        # epochs it trains again show once.
        purge = {} if run.resumed_step is None else {"purge_step": run.resumed_step + 1}
        logger = TensorBoardLogger(save_dir=str(run.run_dir), name="tensorboard", version="", default_hp_metric=False,
                                   **purge)  # fmt: skip
        logger.log_hyperparams(flat_params(run.config))
        return cls(logger)

    def log_picture(self, key, picture, step) -> None:
        def add() -> None:
            self.logger.experiment.add_image(key, np.asarray(picture.convert("RGB")), step, dataformats="HWC")

        self.guarded("logging a picture", add)

    def describe(self) -> tuple[str, str]:
        return "TensorBoard", self.logger.log_dir
