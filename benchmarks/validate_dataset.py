"""validate-dataset speed as a ratio against a bare loop that decodes every image and mask once.

    .venv/bin/python benchmarks/validate_dataset.py [DATASET] [--repeats 5]

The bare loop uses the same readers as the check (cv2 for images, PIL for masks) and does nothing
else. The runs are interleaved and the medians compared, so machine noise hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segcli.data.checks import check_dataset
from segcli.data.io import list_pairs

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "camvid"
CAMVID_CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist".split(",")


def bare_loop(root: Path) -> None:
    for split in ("train", "val"):
        for pair in list_pairs(root, split):
            cv2.imread(str(pair.image), cv2.IMREAD_UNCHANGED)
            with Image.open(pair.mask) as mask:
                mask.load()
                np.asarray(mask)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", nargs="?", type=Path, default=CAMVID)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    runs = {
        "bare decode loop": lambda: bare_loop(args.dataset),
        "check, 1 worker": lambda: check_dataset(args.dataset, ["train", "val"], CAMVID_CLASSES, 11, workers=1),
        "check, 2 workers": lambda: check_dataset(args.dataset, ["train", "val"], CAMVID_CLASSES, 11, workers=2),
    }
    for run in runs.values():  # warm the page cache and imports
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(timed(run))
    pairs = sum(len(list_pairs(args.dataset, split)) for split in ("train", "val"))
    base = statistics.median(times["bare decode loop"])
    print(f"{args.dataset}: {pairs} pairs, {os.cpu_count()} CPUs, median of {args.repeats}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:18s} {pairs / median:7.1f} pairs/s   ratio to bare loop {median / base:.2f}")


if __name__ == "__main__":
    main()
