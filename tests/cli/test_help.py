"""What `--help` and the output of commands look like outside a terminal."""

from __future__ import annotations

import re

import pytest

from tests.support import run_segcli

COMMANDS = ["train", "validate-dataset", "preview-samples", "list-experiments", "report", "find-lr",
            "make-demo-dataset", "export-checkpoint", "predict", "evaluate", "benchmark", "schema"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_options_show_their_metavars_and_flags_no_type(command, in_tmp_cwd):
    """Every option that takes a value names it (PATH, N, NAME, ...); a flag shows none (`<bool>`, `<int>`,
    `<path>` are Typer's fallbacks when an option has no metavar)."""
    result = run_segcli(command, "--help", cwd=in_tmp_cwd, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    options = result.stdout.partition("Options:")[2]
    assert options, result.stdout
    for python_type in ("<bool>", "<list[", "<path>", "<int", "<float", "<str>", "<text>"):
        assert python_type not in options, (python_type, options)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_never_splits_an_option_or_its_metavar(command, in_tmp_cwd):
    """`--format onnx|torchscript|st` / `ate-dict|smp` was split mid-word at 80 columns."""
    result = run_segcli(command, "--help", cwd=in_tmp_cwd, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert len(line) <= 80 or re.match(r"^\s+(-\w, )?--[\w-]+ \S+$", line), line
    if command == "export-checkpoint":
        assert "--format onnx|torchscript|state-dict|smp" in result.stdout, result.stdout


def test_piped_output_is_not_wrapped(tiny_dataset, in_tmp_cwd):
    """Paths and commands broke across lines at 80 columns when stdout was a file."""
    deep = in_tmp_cwd / ("a-rather-long-folder-name-" * 4) / "data"
    import shutil

    shutil.copytree(tiny_dataset, deep)
    result = run_segcli("validate-dataset", "--dataset", deep, "--classes", "background,disc,square,triangle",
                        cwd=in_tmp_cwd, env={"COLUMNS": "80"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert any(str(deep) in line for line in result.stdout.splitlines()), result.stdout
