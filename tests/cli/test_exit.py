"""`segcli` as a process of its own: what it printed and its exit status, for a success, a user error, a bug and
Ctrl-C alike."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import assert_user_error, run_segcli


def test_output_to_a_pipe_is_complete_and_the_exit_status_kept(tmp_path):
    result = run_segcli("schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["$schema"]  # the whole document arrived before the process left
    assert_user_error(run_segcli("report", tmp_path / "missing", cwd=tmp_path), "missing")


@pytest.mark.parametrize(
    ("raised", "status", "printed", "traceback"),
    [
        ("RuntimeError('a bug')", 1, "RuntimeError: a bug", True),  # a bug keeps its traceback
        ("SystemExit(3)", 3, "", False),
        ("KeyboardInterrupt()", 130, "", False),  # Ctrl-C: the shell's code, no traceback
    ],
)
def test_a_command_that_raises_keeps_its_exit_status(raised, status, printed, traceback, tmp_path):
    probe = (
        "import sys\n"
        "import segcli.cli.app as app\n"
        f"def command():\n    raise {raised}\n"
        "next(info for info in app.app.registered_commands if info.name == 'schema').callback = command\n"
        "sys.argv = ['segcli', 'schema']\n"
        "app.main()\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == status, result.stderr
    assert printed in result.stderr
    assert ("Traceback" in result.stderr) is traceback, result.stderr
