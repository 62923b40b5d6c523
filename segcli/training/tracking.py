"""Weights & Biases: offline unless a key is configured, started off the training path, images and tables.

The W&B run starts on a background thread once every check has passed (so a bad input never leaves a
half-made run), while the datasets, loaders and Trainer are made; `train` waits for it before the first
DataLoader worker forks. The run's id is chosen up front, so `run.json` names it before W&B is up.
The mode and the early start of W&B's service process live in `wandb_service` (no torch there).

Logging to W&B never takes a training run down: the first failure (a run that cannot start, a picture W&B
refuses, a run that ended under training) becomes one warning, and the run goes on without W&B; the run's
own files (checkpoints, metrics.csv, the report) do not depend on it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import wandb
from lightning_fabric.utilities.rank_zero import rank_zero_only
from PIL import Image
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from wandb.sdk.lib.runid import generate_id

from segcli.data.io import compact_labels
from segcli.drawing.colours import display_image
from segcli.drawing.pictures import Sample
from segcli.training.wandb_service import quiet_wandb

MAX_LOGGED_SIDE = 512  # images logged to W&B are downscaled to this many pixels on their longer side


def new_run_id() -> str:
    return generate_id()


Warn = Callable[[str], None]
"""Where a warning goes: the CLI prints it as one `warning:` line; by default, Python's warnings."""


def python_warning(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def init_run(*, mode: str, on_warning: Warn = python_warning, **kwargs: Any):
    """wandb.init in `mode`, falling back to offline with one warning when W&B cannot start online."""
    settings = wandb.Settings(init_timeout=60, quiet=True, silent=True)
    for attempt in dict.fromkeys([mode, "offline"]):
        try:
            return wandb.init(mode=attempt, settings=settings, **kwargs), attempt
        except Exception as exc:  # noqa: BLE001 - wandb raises many types for network failures
            if attempt == "offline":
                raise
            on_warning(f"W&B could not start online ({exc}); logging offline instead")
    raise AssertionError("unreachable")


class BackgroundWandbLogger(WandbLogger):
    """Lightning's W&B logger over a run started on a background thread; it waits for it at first use.

    The whole configuration goes to wandb.init, so Lightning's own hyper-parameter logging is skipped.
    Everything segcli logs goes through `log_safely` (Lightning's metrics too): see the module docstring.
    """

    def __init__(self, started: Future | None, on_warning: Warn = python_warning, **kwargs: Any):
        super().__init__(**kwargs)
        self._started = started
        self.on_warning = on_warning
        self.mode: str | None = None
        self.failure: str | None = None
        """Why W&B was given up (its one warning); nothing more is logged from then on."""

    @property
    @rank_zero_experiment  # the other processes of a multi-process run get Lightning's do-nothing stand-in
    def experiment(self):
        return self.wait_for_run()

    def wait_for_run(self):
        """The W&B run once started (its `mode` is known from then on); None in the other processes of a
        multi-process run, which start none, and when it could not start (the mode is then `disabled`)."""
        if self._experiment is None and self._started is not None and self.mode is None:
            try:
                self._experiment, self.mode = self._started.result()
            except Exception as exc:  # noqa: BLE001 - wandb raises many types; training goes on without it
                self.mode = "disabled"
                self._give_up(f"W&B could not start ({type(exc).__name__}: {exc}); training goes on without W&B")
        return self._experiment

    def _give_up(self, message: str) -> None:
        self.failure = message
        self.on_warning(message)

    def log_safely(self, what: str, log: Callable[[], None]) -> None:
        """Run `log` (which makes W&B's objects and logs them) unless W&B was given up; a failure gives it up
        with one warning, "could not <what>"."""
        if self.failure is not None or self.wait_for_run() is None:
            return
        try:
            log()
        except Exception as exc:  # noqa: BLE001 - whatever W&B or the pictures raise, training goes on
            detail = " ".join(str(exc).split())[:200]
            self._give_up(f"W&B: could not {what} ({type(exc).__name__}: {detail}); training goes on without W&B "
                          "(checkpoints, metrics.csv and the run report are complete)")  # fmt: skip

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_safely("log the metrics", lambda: WandbLogger.log_metrics(self, metrics, step))

    def log_hyperparams(self, params: Any) -> None:
        pass

    def close(self) -> None:
        """Finish the W&B run (flushing what is queued), whether or not anything was logged."""
        run = self.wait_for_run() if self._started is not None else None
        if run is None:  # nothing was started (another process of a multi-process run) or it could not start
            return
        try:
            run.finish()
        except Exception as exc:  # noqa: BLE001 - as in log_safely
            if self.failure is None:  # after a failure, the run may well be past finishing: that was said once
                self._give_up(f"W&B: could not finish the run ({type(exc).__name__}: {exc})")


def start_logger(*, project: str, name: str, run_id: str, save_dir: Path, mode: str, config: dict,
                 group: str | None = None, on_warning: Warn = python_warning) -> BackgroundWandbLogger:  # fmt: skip
    quiet_wandb()
    # Absolute: W&B's service process resolves a relative folder against its own working directory.
    save_dir = save_dir.resolve()
    if getattr(rank_zero_only, "rank", 0) != 0:  # another process of a multi-process run: rank 0 alone logs
        return BackgroundWandbLogger(None, project=project, name=name, id=run_id, save_dir=str(save_dir))
    save_dir.mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(1, thread_name_prefix="segcli-wandb")
    started = pool.submit(init_run, mode=mode, project=project, name=name, id=run_id, resume="allow",
                          dir=str(save_dir), config=config, group=group, on_warning=on_warning)  # fmt: skip
    pool.shutdown(wait=False)
    return BackgroundWandbLogger(started, on_warning, project=project, name=name, id=run_id,
                                 save_dir=str(save_dir), log_model=False)  # fmt: skip


def _downscaled(array: np.ndarray, nearest: bool) -> np.ndarray:
    height, width = array.shape[:2]
    scale = MAX_LOGGED_SIDE / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize(size, resample))


def class_labels(class_names: Sequence[str], ignore_index: int | None) -> dict[int, str]:
    labels = dict(enumerate(class_names))
    if ignore_index is not None and ignore_index not in labels:
        labels[ignore_index] = "ignored"
    return labels


def wandb_masks(sample: Sample, labels: dict[int, str]) -> dict[str, dict]:
    """W&B's mask layers of a sample: the ground truth and the prediction (when there is one), as small
    integers downscaled like the image."""
    layers = {"ground_truth": sample.mask, "prediction": sample.prediction}
    return {layer: {"mask_data": _downscaled(compact_labels(mask), True), "class_labels": labels}
            for layer, mask in layers.items() if mask is not None}  # fmt: skip


def wandb_images(samples: Sequence[Sample], class_names: Sequence[str], ignore_index: int | None) -> list:
    """wandb.Image objects with the ground truth (and the prediction, when there is one) as mask layers."""
    labels = class_labels(class_names, ignore_index)
    images = []
    for sample in samples:
        caption = f"{sample.name} {sample.caption}".strip()
        image = _downscaled(display_image(sample.image), False)
        images.append(wandb.Image(image, caption=caption, masks=wandb_masks(sample, labels)))
    return images


def sync_file_live(logger: BackgroundWandbLogger, path: Path) -> None:
    """Upload `path` now and again whenever it changes (a link in the run folder, not an artifact copy)."""

    def sync() -> None:
        logger.experiment.save(str(path), base_path=str(path.parent), policy="live")

    logger.log_safely(f"sync {path.name}", sync)
