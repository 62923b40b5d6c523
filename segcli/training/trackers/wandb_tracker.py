"""Weights & Biases: Lightning's `WandbLogger` over a run started with `wandb.init`; mask layers, tables, live files."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segcli.config.env import wandb_project
from segcli.data.io import compact_labels
from segcli.drawing.colours import display_image
from segcli.drawing.pictures import Sample
from segcli.training.trackers.base import TrackedRun, Tracker, log, one_line

MAX_LOGGED_SIDE = 512  # images logged to W&B are downscaled to this many pixels on their longer side


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(offline: bool) -> str:
    """--offline wins, then WANDB_MODE; with no API key the run is offline (`wandb sync` it later)."""
    if offline:
        return "offline"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_wandb_key() else "offline"


def quiet_wandb() -> None:
    """W&B's own chatter (anonymous-mode notes, "Symlinked 1 file ...") is not for segcli's users."""
    os.environ.setdefault("WANDB_SILENT", "true")
    logging.getLogger("wandb").setLevel(logging.ERROR)


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


def wandb_images(samples: Sequence[Sample], class_names: Sequence[str], ignore_index: int | None) -> list:
    """wandb.Image objects with the ground truth (and the prediction, when there is one) as mask layers."""
    import wandb

    labels = class_labels(class_names, ignore_index)
    images = []
    for sample in samples:
        # PIL downscales 8- and 16-bit masks only; the validation step's predictions are int64
        masks = {"ground_truth": {"mask_data": _downscaled(compact_labels(sample.mask), True), "class_labels": labels}}
        if sample.prediction is not None:
            masks["prediction"] = {"mask_data": _downscaled(compact_labels(sample.prediction), True),
                                   "class_labels": labels}  # fmt: skip
        caption = f"{sample.name} {sample.caption}".strip()
        images.append(wandb.Image(_downscaled(display_image(sample.image), False), caption=caption, masks=masks))
    return images


class WandbTracker(Tracker):
    """Lightning's `WandbLogger`; the whole configuration goes to `wandb.init`. Checkpoints are synced live."""

    label = "W&B"

    def __init__(self, logger, mode: str):
        super().__init__(logger)
        self.mode = mode

    @classmethod
    def start(cls, run: TrackedRun) -> WandbTracker | None:
        """None with `WANDB_MODE=disabled`. A run that cannot start online is logged offline, with one warning."""
        mode = wandb_mode(run.offline)
        if mode == "disabled":
            return None
        quiet_wandb()
        # Absolute: W&B's service process resolves a relative folder against its own working directory.
        save_dir = run.output_dir.resolve()
        save_dir.mkdir(parents=True, exist_ok=True)
        try:
            return cls(cls._logger(run, save_dir, mode), mode)
        except Exception as exc:  # noqa: BLE001 - wandb raises many types for network failures
            if mode == "offline":
                raise
            log.warning("warning: W&B could not start online (%s); logging offline instead", one_line(exc))
            return cls(cls._logger(run, save_dir, "offline"), "offline")

    @classmethod
    def log_preview(cls, split: str, samples, class_names, ignored: int | None, offline: bool) -> str | None:
        """`preview-samples --wandb`: the samples in a run of their own, preview-<split> (job type "preview"), under
        `samples/<split>`. The run's folder; None when W&B is disabled, "" when logging failed (warned)."""
        run = TrackedRun(name=f"preview-{split}", output_dir=Path("."), run_dir=Path("."), config={}, offline=offline,
                         job_type="preview")  # fmt: skip
        tracker = cls.start(run)
        if tracker is None:
            return None
        folder = tracker.folder
        tracker.log_samples(f"samples/{split}", samples, class_names, ignored, step=0)
        tracker.close("success")
        return folder if tracker.active else ""

    @staticmethod
    def _logger(run: TrackedRun, save_dir: Path, mode: str):
        """The run is started here, with W&B's public `wandb.init`, and handed to Lightning's logger."""
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        started = wandb.init(
            project=wandb_project(), name=run.name, id=run.wandb_id, resume="allow", dir=str(save_dir), mode=mode,
            config=run.config, group=run.group, job_type=run.job_type,
            settings=wandb.Settings(init_timeout=60, quiet=True, silent=True),
        )  # fmt: skip
        return WandbLogger(experiment=started, project=started.project, name=run.name, id=started.id,
                           save_dir=str(save_dir))  # fmt: skip

    @property
    def run(self):
        return self.logger.experiment

    def log_samples(self, key, samples, class_names, ignore_index, step) -> None:
        def log() -> None:
            self.run.log({key: wandb_images(samples, class_names, ignore_index), "trainer/global_step": step})

        self.guarded("logging images", log)

    def log_picture(self, key, picture, step) -> None:
        def log() -> None:
            import wandb

            self.run.log({key: wandb.Image(picture), "trainer/global_step": step})

        self.guarded("logging a picture", log)

    def log_worst(self, samples, scores, class_names, ignore_index, step) -> None:
        def log() -> None:
            import wandb

            table = wandb.Table(columns=["image", "mIoU", *(f"IoU/{name}" for name in class_names)])
            for image, score in zip(wandb_images(samples, class_names, ignore_index), scores, strict=True):
                table.add_data(image, score.mIoU, *(None if value != value else value for value in score.iou))
            self.run.log({"val/worst_images": table, "trainer/global_step": step})

        self.guarded("logging the worst images", log)

    def sync_file(self, path: Path) -> None:
        """Uploaded now and again whenever it changes (a link in the run folder, not an artifact copy)."""
        self.guarded("syncing a file", lambda: self.run.save(str(path), base_path=str(path.parent), policy="live"))

    def close(self, status: str) -> None:
        super().close(status)
        self.guarded("finishing the run", lambda: self.run.finish(exit_code=0 if status == "success" else 1))

    @property
    def folder(self) -> str:
        return str(Path(self.run.dir).parent)

    def describe(self) -> tuple[str, str]:
        return "W&B run", self.folder
