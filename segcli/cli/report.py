"""`segcli report`: redraw a run folder's report and print its summary, from the folder alone (no W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcli.cli.common import duration, fmt, stdout_console


def report(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...",
            help="Run folders (with metrics.csv), or a k-fold folder (its fold runs); several are compared side by "
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

    from segcli.artifacts.folders import RunDir, TuneDir
    from segcli.training.report import fold_reports, mean_and_std, read_report, write_report

    studies = [folder for folder in runs if TuneDir(folder).record.is_file()]
    for folder in studies:
        _report_study(TuneDir(folder), redraw)
    runs = [folder for folder in runs if folder not in studies]
    if not runs:
        return
    console = stdout_console()
    folders = []
    for folder in runs:
        folds = fold_reports(folder)
        if folds is not None:
            console.print(f"k-fold {folder.name}: its {len(folds)} fold runs, with their mean ± std")
        folders += folds if folds is not None else [folder]
    spread = len(runs) == 1 and folders != runs  # one k-fold folder: train's k-fold summary too
    summaries = [read_report(folder) for folder in folders]
    if redraw:
        for folder, summary in zip(folders, summaries, strict=True):
            write_report(summary, RunDir(folder))
    table = Table(title="runs" if len(folders) > 1 else f"run {summaries[0].run_name}")
    table.add_column("")
    for summary in summaries:
        table.add_column(summary.run_name, justify="right")
    if spread:
        table.add_column("mean ± std", justify="right")

    def scores(label: str, value) -> None:
        """A row of one score per run (NaN: none), and their mean ± std for a k-fold folder."""
        values = [value(summary) for summary in summaries]
        spread_cell = ["{} ± {}".format(*map(fmt, mean_and_std(values)))] if spread else []
        table.add_row(label, *map(fmt, values), *spread_cell)

    texts = [
        ("epochs", lambda s: f"{len(s.rows)}" + ("" if s.finished else " (unfinished)")),
        ("best epoch", lambda s: str(s.best_epoch or "-")),
        ("monitor", lambda s: s.monitor),
    ]
    for label, cell in texts:
        table.add_row(label, *(cell(summary) for summary in summaries))
    for label, value in [
        ("best val/mIoU", lambda s: s.best_row.get("val/mIoU")),
        ("best val/mDCC", lambda s: s.best_row.get("val/mDCC")),
        ("best val/loss", lambda s: s.best_row.get("val/loss")),
        ("train/mIoU (best epoch)", lambda s: s.best_row.get("train/mIoU")),
        ("EMA val/mIoU (best epoch)", lambda s: s.best_row.get("val_ema/mIoU")),
        ("average_model val/mIoU", lambda s: s.extra.get("val_avg/mIoU")),
    ]:
        scores(label, value)
    table.add_row("time", *("-" if s.seconds is None else duration(s.seconds) for s in summaries))
    class_names = list(dict.fromkeys(name for summary in summaries for name in summary.class_names))
    table.add_section()
    for name in class_names:
        scores(f"IoU {name}", lambda s, name=name: s.best_row.get(f"val/IoU/{name}"))
    console.print(table)
    if redraw:
        for folder in folders:
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
