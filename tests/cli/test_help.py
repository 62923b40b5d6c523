"""What `--help` and the output of commands look like outside a terminal."""

from __future__ import annotations

import pytest

from tests.support import run_segcli

COMMANDS = ["train", "validate-dataset", "preview-samples", "list-experiments", "report", "find-lr",
            "make-demo-dataset", "export-checkpoint", "predict", "evaluate", "benchmark", "schema"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_metavars_not_python_types(command, in_tmp_cwd):
    """`<bool>` on flags, `<list[str]>`, `{checkpoint}` were Typer's defaults."""
    result = run_segcli(command, "--help", cwd=in_tmp_cwd, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for python_type in ("<bool>", "<list[", "<path>", "<int", "<float", "<str>"):
        assert python_type not in result.stdout, (python_type, result.stdout)
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


def test_piped_output_is_not_wrapped(tiny_dataset, in_tmp_cwd):
    """Paths and commands broke across lines at 80 columns when stdout was a file."""
    deep = in_tmp_cwd / ("a-rather-long-folder-name-" * 4) / "data"
    import shutil

    shutil.copytree(tiny_dataset, deep)
    result = run_segcli("validate-dataset", "--dataset", deep, "--classes", "background,disc,square,triangle",
                        cwd=in_tmp_cwd, env={"COLUMNS": "80"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert any(str(deep) in line for line in result.stdout.splitlines()), result.stdout
