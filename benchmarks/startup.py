"""Median start-up time of the light commands (they must not import torch), next to the interpreter's own.

Each command is timed as a whole process, alternating with `python -c pass` (the floor no command can go
below) and `python -c "import typer"` (the floor of any Typer app), so the ratios hold on a noisy machine.

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


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, capture_output=True, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    segcli = shutil.which("segcli", path=str(Path(sys.executable).parent)) or "segcli"
    repo = Path(__file__).resolve().parents[1]
    floors = {"python -c pass": [sys.executable, "-c", "pass"],
              "python -c 'import typer'": [sys.executable, "-c", "import typer"]}  # fmt: skip
    runs = {name: [] for name in floors} | {"segcli " + " ".join(c): [] for c in COMMANDS}
    for _ in range(args.repeats):
        for name, argv in floors.items():
            runs[name].append(timed(argv, repo))
        for command in COMMANDS:
            runs["segcli " + " ".join(command)].append(timed([segcli, *command], repo))
    bare = statistics.median(runs["python -c pass"])
    for name, times in runs.items():
        median = statistics.median(times)
        print(f"{name:32s} median {median * 1000:6.0f} ms  ({median / bare:4.1f}x python -c pass)")


if __name__ == "__main__":
    main()
