"""Constants and helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
CAMVID_CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
DEMO_CLASSES = "background,disc,square,triangle"


def run_segcli(
    *args, cwd: Path, env: dict[str, str] | None = None, replace_env: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as a user runs it; `env` adds to (or replaces) the environment."""
    return subprocess.run(
        [sys.executable, "-m", "segcli", *map(str, args)],
        cwd=cwd,
        env=env if replace_env else {**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one `error:` message on stderr holding every fragment, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stderr.startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
