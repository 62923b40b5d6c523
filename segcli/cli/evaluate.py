"""`segcli evaluate`: training's metrics for a checkpoint over a whole dataset split."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from segcli.cli.options import (
    BatchSizeOpt,
    CpuOpt,
    DatasetOpt,
    GpuOpt,
    JsonOpt,
    OverlapOpt,
    TileOpt,
    Tta,
    TtaOpt,
)
from segcli.cli.output import stdout_console


def evaluate(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint (ckpt_best.pth, ...), a run folder (its ckpt_best.pth) or an export of "
            "`export-checkpoint` with its sidecar.",
            show_default=False,
        ),
    ],
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    json_output: JsonOpt = False,
    confusion_matrix: Annotated[
        Optional[Path],
        typer.Option("--confusion-matrix", help="Also write the row-normalised confusion matrix as a PNG."),
    ] = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = 0.25,
    batch_size: BatchSizeOpt = 4,
    tta: TtaOpt = None,
    gpu: GpuOpt = None,
    cpu: CpuOpt = False,
) -> None:
    """Per-class IoU and Dice, mIoU, mDCC and pixel accuracy over a split (class names from the checkpoint)."""
    from rich.progress import Progress

    from segcli import env
    from segcli.evaluation import evaluate_split, render_confusion_matrix
    from segcli.inference import InferenceOptions, open_model, select_device

    env.load_env_file()
    root = env.dataset_path(dataset)
    predictor = open_model(checkpoint, select_device(gpu, cpu))
    options = InferenceOptions(batch_size=batch_size, tile=tile, overlap=overlap, flip_tta=tta is Tta.flip)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    with Progress(console=errors, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"evaluating {split}", total=None)
        result = evaluate_split(
            predictor,
            root,
            split,
            options,
            on_total=lambda total: progress.update(task, total=total),
            on_image=lambda: progress.advance(task),
        )
    if confusion_matrix is not None:
        confusion_matrix.parent.mkdir(parents=True, exist_ok=True)
        title = f"{predictor.path.name} on {split} ({result.images} images)"
        render_confusion_matrix(result.matrix, result.class_names, title).save(confusion_matrix)
        errors.print(f"wrote {confusion_matrix}")
    if json_output:
        document = {"checkpoint": str(predictor.path), "model_kind": predictor.kind, "dataset": str(root)}
        document.update(result.to_dict())
        typer.echo(json.dumps(document, indent=2, allow_nan=False))
        return
    _print_table(result, predictor, root)


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def _print_table(result, predictor, root: Path) -> None:
    s = result.split
    pixels = result.matrix.sum(1).tolist()
    console = stdout_console()
    console.print(f"{predictor.path} on {root / s}: {result.images} images", highlight=False, soft_wrap=True)
    table = Table(caption="NaN: class absent from both targets and predictions (left out of the means)")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Dice", justify="right")
    table.add_column("pixels", justify="right")
    for index, name in enumerate(result.class_names):
        table.add_row(name, _fmt(result.metrics[f"{s}/IoU/{name}"]), _fmt(result.metrics[f"{s}/Dice/{name}"]),
                      f"{pixels[index]:,}")  # fmt: skip
    table.add_section()
    table.add_row("mean", _fmt(result.metrics[f"{s}/mIoU"]), _fmt(result.metrics[f"{s}/mDCC"]), f"{sum(pixels):,}")
    console.print(table)
    ignored = "" if result.ignore_index is None else f"; label {result.ignore_index} ignored"
    console.print(
        f"mIoU {_fmt(result.metrics[f'{s}/mIoU'])}  mDCC {_fmt(result.metrics[f'{s}/mDCC'])}  "
        f"pixel accuracy {_fmt(result.metrics[f'{s}/pixel_accuracy'])}{ignored}",
        highlight=False,
    )
