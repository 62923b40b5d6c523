"""`segcli predict`: one class-index PNG per image (same stem), optionally overlays and probability maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from segcli.cli.common import (
    EXIT_PROBLEMS,
    BatchSizeOpt,
    CpuOpt,
    EnsembleOpt,
    GpuOpt,
    ModelArg,
    OverlapOpt,
    ProgressReport,
    ResizeOpt,
    TileOpt,
    TtaOpt,
    inference_options,
    resize_note,
    start_up_done,
    stderr_console,
)


def predict(
    model: ModelArg,
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT...", help="Image files, or folders whose image files are all used.", show_default=False
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Folder for <stem>.png masks (and overlays/).")
    ],
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Also write the image with the coloured mask and a legend.")
    ] = False,
    probabilities: Annotated[
        Optional[int],
        typer.Option(
            "--probabilities",
            metavar="8|16",
            help="Also write probability maps as 8- or 16-bit PNGs (the foreground's for a binary model, one per "
            "class otherwise) under probabilities/.",
        ),
    ] = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = 0.25,
    batch_size: BatchSizeOpt = 4,
    tta: TtaOpt = None,
    resize: ResizeOpt = None,
    ensemble: EnsembleOpt = None,
    gpu: GpuOpt = None,
    cpu: CpuOpt = False,
) -> None:
    """Predict masks for images of any size; unreadable files are skipped and make the exit code 1."""
    from segcli.devices import inference_device
    from segcli.errors import ConfigError
    from segcli.inference.loading import open_models
    from segcli.inference.predict import OVERLAYS, collect_inputs, predict_files

    start_up_done()

    if probabilities not in (None, 8, 16):
        raise ConfigError(f"--probabilities {probabilities}: write 8 or 16 (bits per value)")
    files = collect_inputs(inputs)
    predictor = open_models([model, *(ensemble or [])], inference_device(gpu, cpu))
    options = inference_options(batch_size, tile, overlap, tta, resize, predictor.info)
    errors = stderr_console()
    note = resize_note(resize, predictor.info)
    if note:
        errors.print(note, markup=False)
    with ProgressReport("predicting") as progress:
        progress.total(len(files))

        def done(path: Path, error: str | None) -> None:
            if error is not None:
                errors.print(f"skipped {path}: {error}", markup=False)
            progress.advance()

        report = predict_files(predictor, files, output, options, overlay=overlay, probability_bits=probabilities,
                               on_done=done)  # fmt: skip
    for warning in report.warnings:
        errors.print(f"warning: {warning}", markup=False)
    extra = f" and {len(report.overlays)} overlays to {output / OVERLAYS}" if overlay else ""
    if probabilities:
        extra += f", {len(report.probabilities)} probability maps"
    count = len(report.masks)
    typer.echo(f"wrote {count} mask{'s' if count != 1 else ''} to {output}{extra} ({predictor.kind} {predictor.path})")
    if report.skipped:
        typer.echo(
            f"{len(report.skipped)} of {len(files)} inputs could not be read and were skipped (listed above)", err=True
        )
        raise typer.Exit(EXIT_PROBLEMS)
