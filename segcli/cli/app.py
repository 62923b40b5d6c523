"""The `segcli` Typer app and its single error boundary."""

from __future__ import annotations

import atexit
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
    validate_dataset,
)
from segcli.cli.common import full_collections_deferred
from segcli.config.env import apply_offline_switches
from segcli.deferred_imports import defer_scipy_signal
from segcli.errors import SegcliError


def _plain_help_metavars() -> None:
    """typer 0.29's help prints Python types (`<bool>` on flags, `<list[Path]>`, `{model}`); show what users
    expect instead: nothing for a flag, the option's metavar (PATH, N, NAME), arguments by their name."""
    from typer import core

    def option_type(self, ctx) -> str | None:
        if self.is_flag:
            return None
        if self.metavar is not None:
            return self.metavar
        label = core.TyperOption.display_type(self, ctx).strip("<>")
        return {"int range": "N", "int": "N", "float range": "X", "float": "X", "path": "PATH"}.get(label, "TEXT")

    def usage_name(self) -> str:
        name = self.display_name_raw
        return name if self.required else f"[{name}]"

    core.TyperOption.display_type_rich = option_type
    core.TyperArgument.display_type_rich = lambda self, ctx: None
    core.TyperArgument._usage_display_name = usage_name


_plain_help_metavars()
app = typer.Typer(
    name="segcli",
    help="Train segmentation_models_pytorch models from YAML experiment files.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,  # bugs print a plain Python traceback
)
COMMANDS = {
    "plan": plan.plan,
    "train": train.train,
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
    defer_scipy_signal()
    try:
        with full_collections_deferred():
            app()
    except SegcliError as exc:
        if os.environ.get("SEGCLI_DEBUG"):
            traceback.print_exc()  # then the same line and exit code as without it
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)


def run() -> None:
    """The program's entry point (`segcli`, `python -m segcli`): `main()`, then an exit without the
    interpreter's teardown. Tests call `main()`: this is for a process of its own."""
    exit_status = 0

    def exit_without_teardown() -> None:
        """The last exit handler (registered first): everything is written, every thread joined and every
        other handler run (W&B's, the DataLoader workers'). What is skipped, the interpreter's teardown, is
        a garbage collection over every object torch and its dependencies made: over a second."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe has nothing left to say
                pass
        os._exit(exit_status)

    atexit.register(exit_without_teardown)
    try:
        main()
    except SystemExit as exc:
        exit_status = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        raise
    except KeyboardInterrupt:
        exit_status = 130
        raise
    except BaseException:
        exit_status = 1  # exit with it once Python has printed the traceback
        raise
