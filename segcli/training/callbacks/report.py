"""What the run folder says of the run as training goes: the report (metrics.csv and the pictures, see
training/report.py) and run.json."""

from __future__ import annotations

import time
from collections.abc import Callable

from pytorch_lightning.callbacks import Checkpoint

from segcli.artifacts.folders import RunDir, RunRecord
from segcli.files import BackgroundWriter
from segcli.training.callbacks.history import EpochHistory, is_last_epoch
from segcli.training.report import RunSummary, report_details, write_report


class RunReport(Checkpoint):
    """Queues the report's files after every epoch (the newest request replaces one not yet started). A Lightning
    `Checkpoint` to run after `EpochHistory`, which it draws (see callbacks/history.py).

    Drawing costs about a second of CPU that training wants too (more on a busy machine), so the pictures
    are redrawn at most every REDRAW_SECONDS (results.png, and the best epoch's pictures when it changed);
    metrics.csv is written every epoch. The epoch training ends at (`last`) draws the best epoch's pictures
    (when not drawn yet), while the weight average is fitted, and the end of training (`final`) results.png,
    with the average's scores. A run shorter than REDRAW_SECONDS draws its pictures once, as it ends.
    """

    REDRAW_SECONDS = 30.0

    def __init__(
        self, history: EpochHistory, run_dir: RunDir, writer: BackgroundWriter, run_name: str, class_names: list[str]
    ):
        self.history, self.run_dir, self.writer = history, run_dir, writer
        self.run_name, self.class_names = run_name, class_names
        self._drawn = time.monotonic()
        self._best_drawn: int | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:  # the epoch training ends at is drawn by the final report
            self.submit(last=is_last_epoch(trainer))

    def submit(self, extra: dict[str, float] | None = None, final: bool = False, last: bool = False) -> None:
        summary = RunSummary(
            run_name=self.run_name,
            class_names=self.class_names,
            rows=[dict(row) for row in self.history.history],
            best_epoch=self.history.best_epoch,
            monitor=self.history.monitor.metric,
            best_matrix=self.history.best_matrix,
            extra=dict(extra or {}),
        )
        self.writer.submit(self.run_dir.metrics_csv, lambda: self._write(summary, final, last))

    def _write(self, summary: RunSummary, final: bool, last: bool) -> None:
        """On the writer thread, which alone keeps what was drawn (a replaced request decides nothing)."""
        now = time.monotonic()
        curves = final or (not last and now - self._drawn >= self.REDRAW_SECONDS)
        best = (curves or last) and summary.best_epoch != self._best_drawn
        write_report(summary, self.run_dir, curves, best)
        if curves:
            self._drawn = now
        if best:
            self._best_drawn = summary.best_epoch


class RunRecordUpdates(Checkpoint):
    """run.json after every epoch: the epochs completed, the run's time so far and the report's details, so
    `segcli report` and a `--resume` read a current record. Runs after `TrainingState`: the record never claims an
    epoch before the state of that epoch is queued."""

    def __init__(self, history: EpochHistory, record: RunRecord, run_dir: RunDir, writer: BackgroundWriter,
                 class_names: list[str], run_seconds: Callable[[], float]):  # fmt: skip
        self.history, self.record, self.run_dir, self.writer = history, record, run_dir, writer
        self.class_names, self.run_seconds = class_names, run_seconds

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.record.epochs_completed = self.history.latest["epoch"]
        self.record.seconds = self.run_seconds()
        self.record.report = report_details(self.history, self.class_names)
        record = RunRecord(**vars(self.record))  # the writer's copy: training goes on changing the record
        self.writer.submit(self.run_dir.record, lambda: record.write(self.run_dir))
