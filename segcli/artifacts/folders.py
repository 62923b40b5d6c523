"""The file names of a run folder, a k-fold folder and a tune folder, and the run record (run.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segcli.errors import CheckpointError
from segcli.files import write_json

KFOLD_RECORD = "kfold.json"  # marks a k-fold folder: its split, its fold runs and their summary
TUNE_RECORD = "tune.json"  # marks a tune folder: the study's settings, its search block, the importances


@dataclass(frozen=True)
class RunDir:
    """Every file name of `<output-dir>/checkpoints/<run-name>/`."""

    path: Path

    @property
    def latest(self) -> Path:
        return self.path / "ckpt_latest.pth"

    @property
    def best(self) -> Path:
        return self.path / "ckpt_best.pth"

    @property
    def average(self) -> Path:
        return self.path / "average_model.pth"

    @property
    def ema(self) -> Path:
        return self.path / "ema_model.pth"

    @property
    def state(self) -> Path:
        """The full training state (Lightning's format) that --resume continues from."""
        return self.path / "state_latest.ckpt"

    @property
    def record(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def results_png(self) -> Path:
        return self.path / "results.png"

    @property
    def per_class_png(self) -> Path:
        return self.path / "per_class.png"

    @property
    def confusion_png(self) -> Path:
        return self.path / "confusion_matrix.png"

    @property
    def worst_png(self) -> Path:
        return self.path / "worst_predictions.png"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's event files (a folder)."""
        return self.path / "tensorboard"

    def weights(self) -> list[Path]:
        """The model files a user loads, in the order the summary lists them."""
        return [self.best, self.latest, self.ema, self.average]

    def run_files(self) -> list[Path]:
        """Everything a run writes: what --overwrite removes."""
        return [*self.weights(), self.state, self.record, self.metrics_csv, self.results_png, self.per_class_png,
                self.confusion_png, self.worst_png]  # fmt: skip

    def has_checkpoints(self) -> bool:
        return any(path.exists() for path in self.weights())

    def remove_leftovers(self) -> None:
        """Temporary files of a write killed half-way (the real files are intact)."""
        for leftover in self.path.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)


def kfold_runs(folder: Path) -> list[RunDir] | None:
    """The fold runs a k-fold folder lists in its kfold.json, in fold order; None for any other folder."""
    record = folder / KFOLD_RECORD
    if not (folder.is_dir() and record.is_file()):
        return None
    try:
        return [RunDir(folder / name) for name in json.loads(record.read_text())["runs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{record}: unreadable k-fold record ({exc!r})") from None


@dataclass(frozen=True)
class TuneDir:
    """Every file name of `<output-dir>/tune/<study>/`: the study, its results and one run folder per trial."""

    path: Path

    @property
    def study_db(self) -> Path:
        """The default storage (SQLite)."""
        return self.path / "study.db"

    @property
    def record(self) -> Path:
        """tune.json: the study's settings and search block, what `segcli report` needs besides the CSV."""
        return self.path / TUNE_RECORD

    @property
    def results_csv(self) -> Path:
        return self.path / "tune_results.csv"

    @property
    def best_yaml(self) -> Path:
        return self.path / "best.yaml"

    @property
    def history_png(self) -> Path:
        return self.path / "optimization_history.png"

    @property
    def importances_png(self) -> Path:
        return self.path / "param_importances.png"

    @property
    def slices_png(self) -> Path:
        return self.path / "param_slices.png"

    def pictures(self) -> list[Path]:
        return [self.history_png, self.importances_png, self.slices_png]

    def trial(self, run_name: str) -> RunDir:
        return RunDir(self.path / run_name)

    def lock(self, number: int) -> Path:
        """Held by the process running trial `number` while it runs: whoever can take it knows that process died."""
        return self.path / f".trial{number:03d}.lock"


@dataclass
class RunRecord:
    """`run.json` in the run folder: what a later `--resume` needs to continue the same tracker runs."""

    run_name: str
    wandb_id: str | None = None
    mlflow_run_id: str | None = None
    finished: bool = False
    epochs_completed: int = 0
    seconds: float | None = None
    """The run's time: wall-clock seconds `segcli train` spent on it (checks, epochs, the final files), summed over
    resumes and updated after every epoch; every summary shows this one figure. None in records older than it."""
    report: dict[str, Any] | None = None
    """Best epoch, monitor, class names and confusion matrix: what `segcli report` needs besides metrics.csv."""

    @classmethod
    def read(cls, run_dir: RunDir) -> RunRecord | None:
        if not run_dir.record.is_file():
            return None
        try:
            return cls(**json.loads(run_dir.record.read_text()))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{run_dir.record}: unreadable run record ({exc}); delete it to start the run afresh"
            ) from None

    def write(self, run_dir: RunDir) -> None:
        write_json(run_dir.record, asdict(self))
