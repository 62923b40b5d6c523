"""Median start-up time of the light commands (they must not import torch).

.venv/bin/python benchmarks/startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [["--help"], ["list-experiments"], ["validate-dataset", "--help"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    segcli = shutil.which("segcli", path=str(Path(sys.executable).parent)) or "segcli"
    repo = Path(__file__).resolve().parents[1]
    for command in COMMANDS:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            subprocess.run([segcli, *command], cwd=repo, capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        print(f"segcli {' '.join(command):24s} median {statistics.median(times) * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
