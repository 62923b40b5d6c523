"""The `segcli` Typer app and its single error boundary."""

from __future__ import annotations

import os
import sys

import typer

from segcli.cli import (
    benchmark,
    evaluate,
    export_checkpoint,
    list_experiments,
    make_demo_dataset,
    predict,
    preview_samples,
    schema,
    train,
    validate_dataset,
)
from segcli.env import apply_offline_switches
from segcli.errors import SegcliError

app = typer.Typer(
    name="segcli",
    help="Train segmentation_models_pytorch models from YAML experiment files.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,  # bugs print a plain Python traceback
)
app.command("train")(train.train)
app.command("validate-dataset")(validate_dataset.validate_dataset)
app.command("preview-samples")(preview_samples.preview_samples)
app.command("list-experiments")(list_experiments.list_experiments)
app.command("make-demo-dataset")(make_demo_dataset.make_demo_dataset)
app.command("export-checkpoint")(export_checkpoint.export_checkpoint)
app.command("predict")(predict.predict)
app.command("evaluate")(evaluate.evaluate)
app.command("benchmark")(benchmark.benchmark)
app.command("schema")(schema.schema)


def main() -> None:
    """Run the app: a SegcliError becomes one `error:` line and its exit code; bugs keep their traceback."""
    apply_offline_switches()
    try:
        app()
    except SegcliError as exc:
        if os.environ.get("SEGCLI_DEBUG"):
            raise
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
