"""`segcli predict`: one class-index PNG per image (same stem), optionally a colour overlay with legend."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from segcli.cli.options import BatchSizeOpt, CpuOpt, GpuOpt, OverlapOpt, TileOpt, Tta, TtaOpt

EXIT_SKIPPED = 1


def predict(
    model: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint (ckpt_best.pth, ...), a run folder (its ckpt_best.pth) or an export of "
            "`export-checkpoint` (ONNX, TorchScript or state-dict file, or smp folder) with its sidecar.",
            show_default=False,
        ),
    ],
    inputs: Annotated[
        list[Path], typer.Argument(help="Image files, or folders whose image files are all used.", show_default=False)
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for <stem>.png masks (and overlays/<stem>.png).")
    ],
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Also write the image with the coloured mask and a legend.")
    ] = False,
    tile: TileOpt = None,
    overlap: OverlapOpt = 0.25,
    batch_size: BatchSizeOpt = 4,
    tta: TtaOpt = None,
    gpu: GpuOpt = None,
    cpu: CpuOpt = False,
) -> None:
    """Predict masks for images of any size; unreadable files are skipped and make the exit code 1."""
    from rich.progress import Progress

    from segcli.inference import InferenceOptions, open_model, select_device
    from segcli.prediction import OVERLAYS, collect_inputs, predict_files

    files = collect_inputs(inputs)
    predictor = open_model(model, select_device(gpu, cpu))
    options = InferenceOptions(batch_size=batch_size, tile=tile, overlap=overlap, flip_tta=tta is Tta.flip)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    with Progress(console=errors, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("predicting", total=len(files))

        def done(path: Path, error: str | None) -> None:
            if error is not None:
                errors.print(f"skipped {path}: {error}")
            progress.advance(task)

        report = predict_files(predictor, files, output, options, overlay, on_done=done)

    extra = f" and {len(report.overlays)} overlays to {output / OVERLAYS}" if overlay else ""
    typer.echo(f"wrote {len(report.masks)} masks to {output}{extra} ({predictor.kind} {predictor.path})")
    if report.skipped:
        typer.echo(
            f"{len(report.skipped)} of {len(files)} inputs could not be read and were skipped (listed above)", err=True
        )
        raise typer.Exit(EXIT_SKIPPED)
