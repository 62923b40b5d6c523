"""Whole-process cost of `segcli train` against a bare PyTorch script doing the same epochs.

Runs `segcli train -c experiments/camvid.yaml -e mini --set max_epochs=N` and `benchmarks/bare_train.py`
alternately (bare, segcli, bare, segcli, ...), each a fresh process timed from start to exit, and prints
every pair and the median ratio. The CPU time of each side (its process and the children it waited for) is
printed beside the wall time: on a shared VM it moves less from run to run, but the target is wall time.
Extra `--set` values for segcli can be given to see what a feature costs
(e.g. `--segcli-set average=null --segcli-set "log_predictions={count: 0, worst: 0}" --wandb disabled`).

    .venv/bin/python benchmarks/overhead.py --data ../shared/datasets/camvid-mini --epochs 6 --pairs 3
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and the children it waited for, e.g. DataLoader workers)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "camvid-mini")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--segcli-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--wandb", choices=("offline", "disabled"), default="offline", help="segcli's W&B mode")
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": args.wandb, "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1"}  # fmt: skip
    # Python's default, which some sandboxes turn off: the untimed first run caches segcli's compiled modules,
    # as a user's first run does (compiling its 68 modules at every start costs 0.16 s here).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    scratch = Path(tempfile.mkdtemp(prefix="segcli-overhead-"))
    segcli = [sys.executable, "-m", "segcli", "train", "-c", str(REPO / "experiments" / "camvid.yaml"), "-e", "mini",
              "--dataset", str(args.data), "--classes", CLASSES, "--cpu", "--overwrite",
              "--output-dir", str(scratch / "segcli"), "--set", f"max_epochs={args.epochs}"]  # fmt: skip
    for value in args.segcli_set:
        segcli += ["--set", value]
    bare = [sys.executable, str(REPO / "benchmarks" / "bare_train.py"), "--data", str(args.data),
            "--epochs", str(args.epochs), "--output", str(scratch / "bare")]  # fmt: skip
    timed(segcli, env)  # warm the dataset-check cache and the file system once, untimed
    ratios, cpu_ratios = [], []
    for pair in range(args.pairs):
        bare_seconds, bare_cpu = timed(bare, env)
        segcli_seconds, segcli_cpu = timed(segcli, env)
        ratios.append(segcli_seconds / bare_seconds)
        cpu_ratios.append(segcli_cpu / bare_cpu)
        print(f"pair {pair + 1}: bare {bare_seconds:.1f} s, segcli {segcli_seconds:.1f} s, ratio {ratios[-1]:.3f}"
              f" (CPU: bare {bare_cpu:.1f} s, segcli {segcli_cpu:.1f} s, ratio {cpu_ratios[-1]:.3f})",
              flush=True)  # fmt: skip
    print(f"median ratio segcli/bare over {args.pairs} pairs: {statistics.median(ratios):.3f} "
          f"(CPU time: {statistics.median(cpu_ratios):.3f})")  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
