"""Pruning's worth: the same 12-trial `segcli tune` search (lr log-uniform, encoder) without and with a pruner.

    .venv/bin/python benchmarks/tune_pruning.py [--dataset ../shared/datasets/camvid-mini] [--pruners none median]
        [--trials 12] [--work /tmp/segcli-tune-pruning]

Each search is a real `segcli tune` run in a subprocess (benchmarks/tune_pruning.yaml, CPU, W&B disabled), in
its own output folder; a search whose folder already holds its trials continues (the study is resumable),
so a killed benchmark picks up where it stopped. For each pruner the table gives the epochs trained by all
trials, the best val mIoU of the completed trials, and both relative to the search without pruning (the
first pruner named). The target: at most 50% of the epochs, a best mIoU within 0.01.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASET = HERE.parents[1] / "shared" / "datasets" / "camvid-mini"
CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"


def search(pruner: str, args: argparse.Namespace) -> dict:
    output = args.work / pruner
    command = [sys.executable, "-m", "segcli", "tune", "-c", str(HERE / "tune_pruning.yaml"), "-e", "camvid-mini",
               "--dataset", str(args.dataset), "--classes", CLASSES, "--cpu", "--trials", str(args.trials),
               "--pruner", pruner, "--study", f"pruning-{pruner}", "--output-dir", str(output)]  # fmt: skip
    # One thread per search: on a busy machine torch's threads would wait on each other, and the searches run side
    # by side (--pruners runs them one after the other; start one benchmark per pruner to run them at once).
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    with (args.work / f"{pruner}.log").open("a") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    with (output / "tune" / f"pruning-{pruner}" / "tune_results.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    complete = [float(row["best val/mIoU"]) for row in rows if row["state"] == "complete"]
    return {
        "pruner": pruner,
        "trials": len(rows),
        "complete": len(complete),
        "pruned": sum(row["state"] == "pruned" for row in rows),
        "epochs": sum(int(row["epochs"] or 0) for row in rows),
        "best_mIoU": max(complete) if complete else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--pruners", nargs="+", default=["none", "median"])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--work", type=Path, default=Path("/tmp/segcli-tune-pruning"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = [search(pruner, args) for pruner in args.pruners]
    reference = results[0]
    print(f"{'pruner':<10} {'trials':>6} {'pruned':>6} {'epochs':>6} {'share':>6} {'best mIoU':>9} {'diff':>7}")
    for result in results:
        share = result["epochs"] / reference["epochs"]
        diff = result["best_mIoU"] - reference["best_mIoU"]
        print(f"{result['pruner']:<10} {result['trials']:>6} {result['pruned']:>6} {result['epochs']:>6} "
              f"{share:>6.0%} {result['best_mIoU']:>9.4f} {diff:>+7.4f}")  # fmt: skip
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
