"""What every tracker shares: the adapter over a Lightning logger, the run it is made of, and the checks."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from pytorch_lightning.loggers.logger import Logger

from segcli.drawing.pictures import PREDICTION_COLUMNS, PREVIEW_COLUMNS, Sample, render_grid
from segcli.errors import ConfigError

log = logging.getLogger("segcli.training.trackers")

EXTRAS = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
"""Tracker -> the module its optional extra (`pip install 'segcli[<tracker>]'`) installs."""


def require_extras(names: Iterable[str]) -> None:
    """A chosen tracker whose library is not installed is a user error naming the extra that brings it."""
    for name in names:
        module = EXTRAS.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"tracker: {name} needs its optional extra; install it with: pip install 'segcli[{name}]'"
            )


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as `key/path` parameters: `model/arch`, `train_transforms/0/name`."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_params(value, path + "/"))
        elif isinstance(value, list | tuple) and value:
            flat.update(flat_params({str(index): item for index, item in enumerate(value)}, path + "/"))
        else:  # an empty list or dict stays a parameter, as its text
            flat[path] = str(value) if isinstance(value, Mapping | list | tuple) else value
    return flat


@dataclass(kw_only=True)
class TrackedRun:
    """What every tracker makes its run of."""

    name: str
    output_dir: Path
    """W&B's files go to <output_dir>/wandb, the default MLflow store is <output_dir>/mlflow.db."""
    run_dir: Path
    """TensorBoard's event files go to <run_dir>/tensorboard."""
    config: dict[str, Any]
    group: str | None = None
    """k-fold folds: one W&B group; MLflow child runs of one parent run."""
    offline: bool = False
    wandb_id: str | None = None
    mlflow_run_id: str | None = None
    """The MLflow run to continue (a resume)."""
    resumed_step: int | None = None
    """The global step of the training state a resumed run continues from."""
    job_type: str = "train"


class Tracker(Logger):
    """One tracker: a Lightning logger, plus pictures and files. Every call goes through `guarded`."""

    label = ""
    """The tracker as users know it: "W&B", "MLflow", "TensorBoard"."""

    def __init__(self, logger: Logger):
        super().__init__()
        self.logger = logger
        self.active = True

    def guarded(self, action: str, call: Callable[[], Any]) -> None:
        """Run a tracker call; the first that fails turns the tracker off with one warning line."""
        if not self.active:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a tracker's trouble (network, server, disk) must never cost the run
            self.active = False
            log.warning("warning: %s stopped (%s failed: %s); training goes on without it", self.label, action,
                        one_line(exc))  # fmt: skip

    # --- Lightning's Logger interface: what the Trainer calls ----------------------------------------

    @property
    def name(self) -> str | None:
        return self.logger.name if self.active else None

    @property
    def version(self) -> str:
        """Empty: the progress bar shows no `v_num` (the summary names each tracker's run)."""
        return ""

    @property
    def save_dir(self) -> str | None:
        return self.logger.save_dir

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.guarded("logging metrics", lambda: self.logger.log_metrics(metrics, step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.guarded("logging parameters", lambda: self.logger.log_hyperparams(params, *args, **kwargs))

    def save(self) -> None:
        self.guarded("saving", self.logger.save)

    def finalize(self, status: str) -> None:
        """Lightning calls this when `fit` ends; the run stays open for the end-of-run pictures (see `close`)."""

    # --- what Lightning's loggers lack ----------------------------------------------------------------

    def log_samples(self, key: str, samples: Sequence[Sample], class_names: Sequence[str],
                    ignore_index: int | None, step: int) -> None:  # fmt: skip
        """Images with their ground truth (and prediction, when there is one)."""
        columns = PREDICTION_COLUMNS if samples and samples[0].prediction is not None else PREVIEW_COLUMNS
        picture = render_grid(samples, class_names, ignore_index, columns)
        self.log_picture(key, picture, step)

    def log_picture(self, key: str, picture: Image.Image, step: int) -> None:
        """One drawn picture (a grid, the confusion matrix) at a step."""

    def log_worst(self, samples: Sequence[Sample], scores: Sequence[Any], class_names: Sequence[str],
                  ignore_index: int | None, step: int) -> None:  # fmt: skip
        """The worst val images at the best checkpoint, with their scores (`ImageScore`s, in the same order)."""
        self.log_samples("val/worst_images", samples, class_names, ignore_index, step)

    def sync_file(self, path: Path) -> None:
        """Keep `path` uploaded as it changes, where the tracker can (called once per file, on the writer thread)."""

    def log_files(self, checkpoints: Sequence[Path], report: Sequence[Path]) -> None:
        """The run's checkpoints and report files, once training has ended."""

    def close(self, status: str) -> None:
        """End the run: `success`, or `failed` when training raised."""
        self.guarded("closing the run", lambda: self.logger.finalize(status))

    def describe(self) -> tuple[str, str]:
        """A summary row: what the tracker is called there and where to look."""
        raise NotImplementedError


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
