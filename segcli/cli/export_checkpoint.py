"""`segcli export-checkpoint`: ONNX, TorchScript, a state-dict bundle or an smp folder, with a JSON sidecar."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from segcli.artifacts.exports import EXPORT_FORMATS
from segcli.cli.common import EXIT_PROBLEMS, JsonOpt, ModelsArg, stdout_console
from segcli.inference.export_results import (
    DEFAULT_FORMAT,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_OPSET,
    DEFAULT_SIZE,
    DEFAULT_TOLERANCE,
    ONNX_OPSETS,
    ExportResult,
)

ExportFormat = Enum("ExportFormat", {name: name for name in EXPORT_FORMATS}, type=str)  # Typer's choices


def export_checkpoint(
    checkpoints: ModelsArg,
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            metavar="|".join(EXPORT_FORMATS),
            help="onnx (dynamic batch, height, width), torchscript (scripted or traced, as the architecture "
            "allows), state-dict (a weights_only .pth bundle) or smp (a save_pretrained folder).",
        ),
    ] = ExportFormat(DEFAULT_FORMAT),
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", metavar="PATH", help="Where to write. Default: beside the checkpoint."),
    ] = None,
    height: Annotated[
        int, typer.Option(min=1, metavar="H", help="Example input height (a multiple of the model's).")
    ] = DEFAULT_SIZE,
    width: Annotated[
        int, typer.Option(min=1, metavar="W", help="Example input width (a multiple of the model's).")
    ] = DEFAULT_SIZE,
    opset: Annotated[
        int, typer.Option(metavar="N", help=f"ONNX opset version ({ONNX_OPSETS.start} to {ONNX_OPSETS.stop - 1}).")
    ] = DEFAULT_OPSET,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Compare the export with the PyTorch model on random inputs at two sizes; fail (exit 1) when "
            "the logits differ by more than --tolerance of their scale or fewer than --min-agreement of the "
            "pixels get the same class.",
        ),
    ] = True,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0.0,
            metavar="X",
            help="Largest accepted max |export - PyTorch| / max |PyTorch logit| (for an ensemble, its members' "
            "largest logit).",
        ),
    ] = DEFAULT_TOLERANCE,
    min_agreement: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, metavar="X", help="Smallest accepted share of pixels with the same class."),
    ] = DEFAULT_MIN_AGREEMENT,
    json_output: JsonOpt = False,
) -> None:
    """Export a checkpoint (or an ensemble of several) for deployment; the model is rebuilt from its metadata."""
    from segcli.inference.export import export

    result = export(checkpoints, format.value, output, height=height, width=width, opset=opset, check=check,
                    tolerance=tolerance, min_agreement=min_agreement)  # fmt: skip
    if json_output:
        typer.echo(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        _print(result, tolerance, min_agreement)
    if not result.written:
        typer.echo(
            f"export check failed: the {result.format} export differs from the PyTorch model (relative "
            f"difference {result.check.max_relative_diff:.3g}, class agreement "
            f"{result.check.min_class_agreement:.4%}); "
            "nothing was written (--no-check writes it unchecked)",
            err=True,
        )
        raise typer.Exit(EXIT_PROBLEMS)


def _print(result: ExportResult, tolerance: float, min_agreement: float) -> None:
    from rich.table import Table

    table = Table(title=f"export {result.format}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for source in result.sources:
        table.add_row("source", str(source))
    members = result.info.source.get("ensemble")
    if members:
        table.add_row("ensemble", f"{len(members)} models, their mean probabilities")
    metric = result.info.source.get("metric") or {}
    if metric.get("name"):
        value = "-" if metric.get("value") is None else f"{metric['value']:.4f}"
        table.add_row("source metric", f"{metric['name']} {value} (epoch {result.info.source.get('epoch')})")
    info = result.info
    table.add_row("model", f"{info.arch} / {info.encoder_name}, {len(info.class_names)} classes, "
                           f"{info.in_channels} input channel(s)")  # fmt: skip
    table.add_row("size multiple", str(info.size_multiple))
    for key, value in result.details.items():
        table.add_row(key, str(value))
    if result.check is not None:
        for check in result.check.inputs:
            table.add_row(f"check {'x'.join(map(str, check.shape))}",
                          f"max abs diff {check.max_abs_diff:.3g}, relative {check.max_relative_diff:.3g}, "
                          f"same class {check.class_agreement:.4%}")  # fmt: skip
        verdict = "passed" if result.check.passed else "FAILED"
        scale = "" if result.check.relative_to == "logits" else f" to the {result.check.relative_to}"
        table.add_row("check", f"{verdict} (tolerance {tolerance:g} relative{scale}, {min_agreement:.1%} same class)")
    else:
        table.add_row("check", "skipped (--no-check)")
    if result.written:
        table.add_row("wrote", str(result.path))
        table.add_row("sidecar", str(result.sidecar))
    stdout_console().print(table)
