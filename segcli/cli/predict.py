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
    counted,
    inference_options,
    resize_note,
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
            help="Also write probability maps as 8- or 16-bit PNGs under probabilities/: for a model of two "
            "classes (classes: 1 or 2) one per image, <stem>.png, the foreground's (class 1); otherwise a folder "
            "per image, <stem>/, with one <index>_<class>.png per class.",
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
    """Predict masks for images of any size; unreadable files and images of a channel count the model cannot take
    are skipped and make the exit code 1."""
    from segcli.devices import inference_device
    from segcli.errors import ConfigError
    from segcli.inference.loading import open_models
    from segcli.inference.predict import OVERLAYS, collect_inputs, predict_files

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
    extra = f" and {counted(len(report.overlays), 'overlay')} to {output / OVERLAYS}" if overlay else ""
    if probabilities:
        extra += f", {counted(len(report.probabilities), 'probability map')}"
    typer.echo(f"wrote {counted(len(report.masks), 'mask')} to {output}{extra} ({predictor.kind} {predictor.path})")
    if report.unfit:
        have = " or ".join(str(count) for count in sorted({count for _, count in report.unfit}))
        names = ", ".join(path.name for path, _ in report.unfit[:3])
        typer.echo(
            f"{len(report.unfit)} of {len(files)} inputs were not predicted: they have {have} channel(s) and the model "
            f"takes {predictor.info.in_channels} (model.in_channels), e.g. {names}",
            err=True,
        )
    if report.skipped:
        typer.echo(
            f"{len(report.skipped)} of {len(files)} inputs could not be read and were skipped (listed above)", err=True
        )
    if report.skipped or report.unfit:
        raise typer.Exit(EXIT_PROBLEMS)
