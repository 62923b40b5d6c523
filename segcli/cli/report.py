"""`segcli report`: redraw a run folder's report and print its summary, from the folder alone (no W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcli.cli.common import fmt, start_up_done, stdout_console


def report(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...",
            help="Run folders (with metrics.csv); several are compared side by "
            "side. A tune folder (with tune.json) shows its study.",
        ),
    ],  # fmt: skip
    redraw: Annotated[
        bool,
        typer.Option(
            "--redraw/--no-redraw",
            help="Rewrite results.png, per_class.png, confusion_matrix.png (a tune folder's pictures).",
        ),
    ] = True,  # fmt: skip
) -> None:
    """Summarise finished (or running) runs: best epoch, scores, per-class IoU; redraw their charts."""
    from rich.table import Table

    from segcli.artifacts import RunDir, TuneDir
    from segcli.training.report import read_report, write_report

    start_up_done()

    studies = [folder for folder in runs if TuneDir(folder).record.is_file()]
    for folder in studies:
        _report_study(TuneDir(folder), redraw)
    runs = [folder for folder in runs if folder not in studies]
    if not runs:
        return
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
        ("time", lambda s: f"{sum(row.get('seconds', 0) for row in s.rows):.0f} s"),
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


def _report_study(tune_dir, redraw: bool) -> None:
    """A tune folder: the summary `segcli tune` ends with, from tune.json and tune_results.csv alone."""
    from segcli.cli.tune import print_summary
    from segcli.training.tune_results import draw_pictures, read_results

    record, rows = read_results(tune_dir.path)
    if redraw:
        drawn = draw_pictures(tune_dir, record, rows)
    print_summary(record, rows, tune_dir)
    if redraw:
        stdout_console().print(f"redrew {', '.join(str(path) for path in drawn)}")
