"""Weights & Biases: offline unless a key is configured, started off the training path, images and tables.

The W&B run starts on a background thread once every check has passed (so a bad input never leaves a
half-made run), while the datasets, loaders and Trainer are made; `train` waits for it before the first
DataLoader worker forks. The run's id is chosen up front, so `run.json` names it before W&B is up.
The mode and the early start of W&B's service process live in `wandb_service` (no torch there).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
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

from segcli.drawing.colours import display_image
from segcli.drawing.pictures import Sample
from segcli.training.wandb_service import quiet_wandb

MAX_LOGGED_SIDE = 512  # images logged to W&B are downscaled to this many pixels on their longer side


def new_run_id() -> str:
    return generate_id()


def init_run(*, mode: str, **kwargs: Any):
    """wandb.init in `mode`, falling back to offline with one warning when W&B cannot start online."""
    settings = wandb.Settings(init_timeout=60, quiet=True, silent=True)
    for attempt in dict.fromkeys([mode, "offline"]):
        try:
            return wandb.init(mode=attempt, settings=settings, **kwargs), attempt
        except Exception as exc:  # noqa: BLE001 - wandb raises many types for network failures
            if attempt == "offline":
                raise
            warnings.warn(f"W&B could not start online ({exc}); logging offline instead", stacklevel=2)
    raise AssertionError("unreachable")


class BackgroundWandbLogger(WandbLogger):
    """Lightning's W&B logger over a run started on a background thread; it waits for it at first use.

    The whole configuration goes to wandb.init, so Lightning's own hyper-parameter logging is skipped.
    """

    def __init__(self, started: Future | None, **kwargs: Any):
        super().__init__(**kwargs)
        self._started = started
        self.mode: str | None = None

    @property
    @rank_zero_experiment  # the other processes of a multi-process run get Lightning's do-nothing stand-in
    def experiment(self):
        return self.wait_for_run()

    def wait_for_run(self):
        """The W&B run once started (its `mode` is known from then on); None in the other processes of a
        multi-process run, which start none."""
        if self._experiment is None and self._started is not None:
            self._experiment, self.mode = self._started.result()
        return self._experiment

    def log_hyperparams(self, params: Any) -> None:
        pass

    def close(self) -> None:
        """Finish the W&B run (flushing what is queued), whether or not anything was logged."""
        if self._started is None:  # another process of a multi-process run: nothing was started
            return
        try:
            run, _ = self._started.result()
        except Exception:  # noqa: BLE001 - a run that never started has nothing to finish
            return
        run.finish()


def start_logger(*, project: str, name: str, run_id: str, save_dir: Path, mode: str, config: dict,
                 group: str | None = None) -> BackgroundWandbLogger:  # fmt: skip
    quiet_wandb()
    # Absolute: W&B's service process resolves a relative folder against its own working directory.
    save_dir = save_dir.resolve()
    if getattr(rank_zero_only, "rank", 0) != 0:  # another process of a multi-process run: rank 0 alone logs
        return BackgroundWandbLogger(None, project=project, name=name, id=run_id, save_dir=str(save_dir))
    save_dir.mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(1, thread_name_prefix="segcli-wandb")
    started = pool.submit(init_run, mode=mode, project=project, name=name, id=run_id, resume="allow",
                          dir=str(save_dir), config=config, group=group)  # fmt: skip
    pool.shutdown(wait=False)
    return BackgroundWandbLogger(started, project=project, name=name, id=run_id, save_dir=str(save_dir),
                                 log_model=False)  # fmt: skip


def _downscaled(array: np.ndarray, nearest: bool) -> np.ndarray:
    height, width = array.shape[:2]
    scale = MAX_LOGGED_SIDE / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if nearest:  # label masks: PIL resizes 32-bit integers ("I" mode), not torch's int64 labels
        return np.asarray(Image.fromarray(array.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BILINEAR))


def class_labels(class_names: Sequence[str], ignore_index: int | None) -> dict[int, str]:
    labels = dict(enumerate(class_names))
    if ignore_index is not None and ignore_index not in labels:
        labels[ignore_index] = "ignored"
    return labels


def wandb_images(samples: Sequence[Sample], class_names: Sequence[str], ignore_index: int | None) -> list:
    """wandb.Image objects with the ground truth (and the prediction, when there is one) as mask layers."""
    labels = class_labels(class_names, ignore_index)
    images = []
    for sample in samples:
        masks = {"ground_truth": {"mask_data": _downscaled(sample.mask, True), "class_labels": labels}}
        if sample.prediction is not None:
            masks["prediction"] = {"mask_data": _downscaled(sample.prediction, True), "class_labels": labels}
        caption = f"{sample.name} {sample.caption}".strip()
        images.append(wandb.Image(_downscaled(display_image(sample.image), False), caption=caption, masks=masks))
    return images


def sync_file_live(run, path: Path) -> None:
    """Upload `path` now and again whenever it changes (a link in the run folder, not an artifact copy)."""
    run.save(str(path), base_path=str(path.parent), policy="live")
