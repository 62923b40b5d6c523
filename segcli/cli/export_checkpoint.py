"""`segcli export-checkpoint`: ONNX, TorchScript, a state-dict bundle or an smp folder, with a JSON sidecar."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from segcli.cli.options import ModelArg
from segcli.cli.output import stdout_console

EXIT_CHECK_FAILED = 1


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    state_dict = "state-dict"
    smp = "smp"


def export_checkpoint(
    checkpoint: ModelArg,
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="onnx (dynamic batch, height, width), torchscript (scripted or traced, as the architecture "
            "allows), state-dict (a weights_only .pth bundle) or smp (a save_pretrained folder).",
        ),
    ] = ExportFormat.onnx,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Where to write. Default: beside the checkpoint, e.g. ckpt_best.onnx."),
    ] = None,
    height: Annotated[int, typer.Option(min=1, help="Example input height (a multiple of the model's).")] = 256,
    width: Annotated[int, typer.Option(min=1, help="Example input width (a multiple of the model's).")] = 256,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Compare the export with the PyTorch model on random inputs at two sizes; fail (exit 1) above "
            "--tolerance.",
        ),
    ] = True,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Largest accepted max abs difference of the logits.")] = (
        1e-3
    ),
) -> None:
    """Export a checkpoint for deployment; the model is rebuilt from the metadata stored in the checkpoint."""
    from segcli.export import export

    result = export(checkpoint, format.value, output, height, width, opset, check, tolerance)
    console = stdout_console()
    table = Table(title=f"export {result.format}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("source", str(result.source))
    source = result.info.source
    metric = source.get("metric") or {}
    if metric.get("name"):
        value = "-" if metric.get("value") is None else f"{metric['value']:.4f}"
        table.add_row("source metric", f"{metric['name']} {value} (epoch {source.get('epoch')})")
    table.add_row("model", f"{result.info.arch} / {result.info.encoder_name}, {result.info.classes} classes")
    table.add_row("size multiple", str(result.info.size_multiple))
    for key, value in result.details.items():
        table.add_row(key, str(value))
    if result.check is not None:
        for shape, diff in zip(result.check.shapes, result.check.differences, strict=True):
            table.add_row(f"check {'x'.join(map(str, shape))}", f"max abs diff {diff:.3g}")
        verdict = "passed" if result.check.passed else "FAILED"
        table.add_row("check", f"{verdict}: max abs diff {result.check.max_abs_diff:.3g} (tolerance {tolerance:g})")
    else:
        table.add_row("check", "skipped (--no-check)")
    if result.written:
        table.add_row("wrote", str(result.path))
        table.add_row("sidecar", str(result.sidecar))
    console.print(table)
    if not result.written:
        typer.echo(
            f"export check failed: the {result.format} export differs from the PyTorch model by up to "
            f"{result.check.max_abs_diff:.3g} (tolerance {tolerance:g}); nothing was written "
            "(--no-check writes it unchecked)",
            err=True,
        )
        raise typer.Exit(EXIT_CHECK_FAILED)
