"""Which of several training processes this one is, as the launcher's environment says."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import REPO

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
LAUNCHES = [({}, True), ({"RANK": "0"}, True), ({"RANK": "1"}, False), ({"SLURM_PROCID": "2"}, False),
            ({"LOCAL_RANK": "1"}, False)]  # fmt: skip


@pytest.mark.parametrize(("environment", "primary"), LAUNCHES)
def test_only_the_first_process_is_primary(environment, primary):
    """Lightning reads the rank once, when it is imported: each launch is a fresh process."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    code = "from segcli.devices import is_primary_process; print(is_primary_process())"
    result = subprocess.run([sys.executable, "-c", code], env={**env, **environment, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert result.stdout.strip() == str(primary)
