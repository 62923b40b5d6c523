"""Trackers: Weights & Biases, MLflow and TensorBoard, each an adapter over Lightning's own logger for it.

The Trainer gets the trackers as its loggers, so every metric Lightning or segcli logs reaches each of them;
an adapter adds what Lightning's loggers lack: pictures (W&B's mask layers where W&B has them, drawn
overlays elsewhere), the worst-images table or picture, and the run's files. Training code talks only to
`Trackers`, never to a tracking library.

Each tracker starts once, after every check has passed and before any DataLoader worker forks, on the calling
thread. A tracker that cannot start, or whose call fails later, gives one warning line and is dropped: the
run, its files and the other trackers go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from PIL import Image

from segcli.drawing.pictures import Sample
from segcli.training.trackers.base import TrackedRun, Tracker, log, one_line, require_extras
from segcli.training.trackers.mlflow_tracker import MlflowTracker
from segcli.training.trackers.tensorboard_tracker import TensorBoardTracker
from segcli.training.trackers.wandb_tracker import WandbTracker

__all__ = ["TrackedRun", "Tracker", "Trackers", "WandbTracker", "MlflowTracker", "TensorBoardTracker", "require_extras"]

STARTERS: dict[str, Callable[[TrackedRun], Tracker | None]] = {
    "wandb": WandbTracker.start,
    "mlflow": MlflowTracker.start,
    "tensorboard": TensorBoardTracker.start,
}
LABELS = {"wandb": "W&B", "mlflow": "MLflow", "tensorboard": "TensorBoard"}


class Trackers:
    """The trackers of one run: the Trainer's loggers, and what training code tells all of them."""

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.all = list(trackers)

    @classmethod
    def start(cls, names: Iterable[str], run: TrackedRun) -> Trackers:
        """Start each named tracker now; one that cannot start gives one warning line and is left out."""
        trackers = []
        for name in names:
            try:
                tracker = STARTERS[name](run)
            except Exception as exc:  # noqa: BLE001 - as `Tracker.guarded`: the run goes on without it
                log.warning("warning: %s could not start (%s); training goes on without it", LABELS[name],
                            one_line(exc))  # fmt: skip
                continue
            if tracker is not None:
                trackers.append(tracker)
        return cls(trackers)

    @property
    def active(self) -> list[Tracker]:
        return [tracker for tracker in self.all if tracker.active]

    def __bool__(self) -> bool:
        """Whether anything is tracked: pictures are made only for trackers."""
        return bool(self.active)

    def of(self, kind: type[Tracker]) -> Tracker | None:
        return next((tracker for tracker in self.active if isinstance(tracker, kind)), None)

    @property
    def run_ids(self) -> dict[str, str]:
        """What run.json keeps to continue the same runs on --resume."""
        mlflow = self.of(MlflowTracker)
        return {"mlflow_run_id": mlflow.run_id} if mlflow else {}

    def log_samples(self, key: str, samples: Sequence[Sample], class_names: Sequence[str], ignore_index: int | None,
                    step: int) -> None:  # fmt: skip
        for tracker in self.active:
            tracker.log_samples(key, samples, class_names, ignore_index, step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tracker in self.active:
            tracker.log_metrics(metrics, step)

    def log_picture(self, key: str, picture: Image.Image, step: int) -> None:
        for tracker in self.active:
            tracker.log_picture(key, picture, step)

    def log_worst(self, samples, scores, class_names, ignore_index, step: int) -> None:
        for tracker in self.active:
            tracker.log_worst(samples, scores, class_names, ignore_index, step)

    def sync_file(self, path: Path) -> None:
        for tracker in self.active:
            tracker.sync_file(path)

    def log_files(self, checkpoints: Sequence[Path], report: Sequence[Path]) -> None:
        for tracker in self.active:
            tracker.log_files(checkpoints, report)

    def close(self, status: str) -> None:
        for tracker in self.active:
            tracker.close(status)

    def describe(self) -> dict[str, str]:
        return dict(tracker.describe() for tracker in self.active)
