"""`segcli report`: redraw a run folder's report and print its summary, from the folder alone (no W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcli.cli.common import duration, fmt, start_up_done, stdout_console


def report(
    runs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN_DIR...", help="Run folders (with metrics.csv); several are compared side by side."),
    ],
    redraw: Annotated[
        bool, typer.Option("--redraw/--no-redraw", help="Rewrite results.png, per_class.png, confusion_matrix.png.")
    ] = True,
) -> None:
    """Summarise finished (or running) runs: best epoch, scores, per-class IoU; redraw their charts."""
    from rich.table import Table

    from segcli.artifacts import RunDir
    from segcli.training.report import read_report, write_report

    start_up_done()

    summaries = [read_report(folder) for folder in runs]
    if redraw:
        for folder, summary in zip(runs, summaries, strict=True):
            write_report(summary, RunDir(folder))
    console = stdout_console()
    table = Table(title="runs" if len(runs) > 1 else f"run {summaries[0].run_name}")
    table.add_column("")
    for summary in summaries:
        table.add_column(summary.run_name, justify="right")
    rows = [
        ("epochs", lambda s: f"{len(s.rows)}" + ("" if s.finished else " (unfinished)")),
        ("best epoch", lambda s: str(s.best_epoch or "-")),
        ("monitor", lambda s: s.monitor),
        ("best val/mIoU", lambda s: fmt(s.best_row.get("val/mIoU"))),
        ("best val/mDCC", lambda s: fmt(s.best_row.get("val/mDCC"))),
        ("best val/loss", lambda s: fmt(s.best_row.get("val/loss"))),
        ("train/mIoU (best epoch)", lambda s: fmt(s.best_row.get("train/mIoU"))),
        ("EMA val/mIoU (best epoch)", lambda s: fmt(s.best_row.get("val_ema/mIoU"))),
        ("average_model val/mIoU", lambda s: fmt(s.extra.get("val_avg/mIoU"))),
        ("time", lambda s: "-" if s.seconds is None else duration(s.seconds)),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(summary) for summary in summaries))
    class_names = list(dict.fromkeys(name for summary in summaries for name in summary.class_names))
    table.add_section()
    for name in class_names:
        table.add_row(f"IoU {name}", *(fmt(s.best_row.get(f"val/IoU/{name}")) for s in summaries))
    console.print(table)
    if redraw:
        for folder in runs:
            console.print(f"redrew {folder}/results.png, per_class.png and confusion_matrix.png")
