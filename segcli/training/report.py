"""The run report on disk, without W&B: metrics.csv, results.png, per_class.png, confusion_matrix.png.

Rewritten (atomically, on the background writer) after every epoch, so a run folder can be watched or
opened on a cluster. `read_report` rebuilds the same from a finished (or running) run folder alone, for
`segcli report`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segcli.artifacts.folders import RunDir, RunRecord, kfold_runs
from segcli.drawing.charts import per_class_chart, results_chart
from segcli.drawing.pictures import render_confusion_matrix
from segcli.errors import ConfigError
from segcli.files import json_number, save_image, write_text

HEADLINE = ("loss", "mIoU", "mDCC")


@dataclass
class RunSummary:
    """What a run folder says about its run."""

    run_name: str
    class_names: list[str]
    rows: list[dict[str, float]]
    best_epoch: int | None
    monitor: str
    best_matrix: list[list[int]] | None = None
    finished: bool = False
    seconds: float | None = None
    """The run's time (RunRecord.seconds), as train's summary gave it."""
    extra: dict[str, float] = field(default_factory=dict)
    """Scores measured once at the end: val_avg/* of the weight average."""

    @property
    def best_row(self) -> dict[str, float]:
        return next((row for row in self.rows if row["epoch"] == self.best_epoch), {})


def csv_columns(rows: Sequence[dict[str, float]], class_names: Sequence[str]) -> list[str]:
    stages = [stage for stage in ("train", "val", "val_ema") if any(f"{stage}/loss" in row for row in rows)]
    columns = ["epoch", *(f"{stage}/{name}" for name in HEADLINE for stage in stages), "lr", "seconds"]
    columns += [f"{stage}/IoU/{name}" for stage in stages for name in class_names]
    return columns


def metrics_csv(rows: Sequence[dict[str, float]], class_names: Sequence[str]) -> str:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, csv_columns(rows, class_names), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if isinstance(value, float) and math.isnan(value) else value)
                         for key, value in row.items()})  # fmt: skip
    return stream.getvalue()


def write_report(summary: RunSummary, run_dir: RunDir, curves: bool = True, best: bool = True) -> None:
    """The run report's files, each written atomically: metrics.csv always, results.png with `curves`, the
    best epoch's per_class.png and confusion_matrix.png with `best`."""
    write_text(run_dir.metrics_csv, metrics_csv(summary.rows, summary.class_names))
    if curves:
        title = f"{summary.run_name}: {len(summary.rows)} epochs" + (
            f", best epoch {summary.best_epoch} by {summary.monitor}" if summary.best_epoch else ""
        )
        save_image(run_dir.results_png, results_chart(summary.rows, summary.best_epoch, title, summary.extra))
    best_row = summary.best_row
    stage = summary.monitor.split("/")[0]  # val, or val_ema: the monitored weights
    if best and best_row:
        scores = {name: best_row.get(f"{stage}/IoU/{name}", float("nan")) for name in summary.class_names}
        chart_title = f"{summary.run_name}: {stage} IoU per class at the best epoch ({summary.best_epoch})"
        save_image(run_dir.per_class_png, per_class_chart(scores, chart_title))
    if best and summary.best_matrix is not None:
        title = f"{summary.run_name}, {stage} at epoch {summary.best_epoch} (best), rows normalised"
        save_image(run_dir.confusion_png, render_confusion_matrix(summary.best_matrix, summary.class_names, title))


def fold_reports(folder: Path) -> list[Path] | None:
    """The fold runs of a k-fold folder that have a report yet, in fold order; None for any other folder."""
    folds = kfold_runs(folder)
    if folds is None:
        return None
    reported = [run.path for run in folds if run.metrics_csv.is_file()]
    if not reported:
        raise ConfigError(f"{folder}: a k-fold folder whose fold runs have not finished an epoch yet")
    return reported


def mean_and_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation over runs (k-fold folds); NaN and missing values left out."""
    present = [value for value in values if value is not None and not math.isnan(value)]
    mean = statistics.fmean(present) if present else float("nan")
    return mean, statistics.stdev(present) if len(present) > 1 else float("nan")


def read_report(folder: Path) -> RunSummary:
    """A run folder's metrics.csv and run.json -> its summary (for `segcli report`)."""
    run_dir = RunDir(folder)
    if not run_dir.metrics_csv.is_file():
        raise ConfigError(f"{folder}: no {run_dir.metrics_csv.name}; pass a run folder written by `segcli train`")
    with run_dir.metrics_csv.open(newline="") as stream:
        rows = [{key: (int(value) if key == "epoch" else float(value) if value != "" else float("nan"))
                 for key, value in row.items()} for row in csv.DictReader(stream)]  # fmt: skip
    record = RunRecord.read(run_dir) or RunRecord(folder.name)
    details = record.report or {}
    class_names = details.get("class_names") or sorted(
        {key.split("/", 2)[2] for row in rows for key in row if key.startswith("val/IoU/")}
    )
    return RunSummary(
        run_name=record.run_name,
        class_names=class_names,
        rows=rows,
        best_epoch=details.get("best_epoch"),
        monitor=details.get("monitor", "val/mIoU"),
        best_matrix=details.get("best_matrix"),
        finished=record.finished,
        seconds=record.seconds,
        extra={key: float("nan") if value is None else value for key, value in details.get("extra", {}).items()},
    )


def report_details(history, class_names: list[str], extra: dict[str, float] | None = None) -> dict:
    """What run.json keeps of an `EpochHistory` for `segcli report`: plain JSON (NaN as null)."""
    return json.loads(json.dumps({
        "class_names": class_names,
        "best_epoch": history.best_epoch,
        "monitor": history.monitor.metric,
        "best_matrix": history.best_matrix,
        "extra": {key: json_number(value) for key, value in (extra or {}).items()},
    }))  # fmt: skip
