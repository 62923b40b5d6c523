"""The `segcli` Typer app and its single error boundary."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from segcli.cli import (
    benchmark,
    evaluate,
    export_checkpoint,
    find_lr,
    list_experiments,
    make_demo_dataset,
    plan,
    predict,
    preview_samples,
    report,
    schema,
    train,
    tune,
    validate_dataset,
)
from segcli.config.env import apply_offline_switches
from segcli.errors import SegcliError

app = typer.Typer(
    name="segcli",
    help="Train segmentation_models_pytorch models from YAML experiment files.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,  # bugs print a plain Python traceback
    rich_markup_mode=None,  # click's plain help: an option and its metavar stay on one line at any width
)
COMMANDS = {
    "plan": plan.plan,
    "train": train.train,
    "tune": tune.tune,
    "validate-dataset": validate_dataset.validate_dataset,
    "preview-samples": preview_samples.preview_samples,
    "list-experiments": list_experiments.list_experiments,
    "report": report.report,
    "find-lr": find_lr.find_lr,
    "make-demo-dataset": make_demo_dataset.make_demo_dataset,
    "export-checkpoint": export_checkpoint.export_checkpoint,
    "predict": predict.predict,
    "evaluate": evaluate.evaluate,
    "benchmark": benchmark.benchmark,
    "schema": schema.schema,
}
for command_name, command in COMMANDS.items():
    app.command(command_name)(command)


def main() -> None:
    """Run the app: a SegcliError becomes one `error:` line and its exit code; bugs keep their traceback."""
    apply_offline_switches()
    try:
        app()
    except SegcliError as exc:
        if os.environ.get("SEGCLI_DEBUG"):
            traceback.print_exc()  # then the same line and exit code as without it
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
