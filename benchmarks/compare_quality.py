"""Does `segcli train` reach the quality of a plain PyTorch loop at equal settings?

1. Makes a 256x192 (W x H) copy of CamVid outside the repo (images BILINEAR, labels NEAREST),
   reused when already complete.
2. For each seed, runs benchmarks/reference_loop.py and `segcli train` with the same settings,
   one after the other in subprocesses (never two trainings at once).
3. Stores each finished run in a results JSON, so a killed comparison continues where it stopped,
   and runs of different segcli versions are kept apart by --tag.
4. Prints per-seed best val mIoU, mean +- sample std, and the difference of means.

    python benchmarks/compare_quality.py                       # reference + segcli, seeds 7 11 13
    python benchmarks/compare_quality.py --only reference
    python benchmarks/compare_quality.py --only segcli --tag baseline-9c88e52 \
        --segcli-cmd "env PYTHONPATH=/tmp/segcli-baseline .venv/bin/python -m segcli"
    python benchmarks/compare_quality.py --report              # the table only, nothing run
    python benchmarks/compare_quality.py --only reference --match-segcli   # diagnostic, see below

`--match-segcli` runs (and tabulates) the reference loop with segcli's randomness for the same seed
(initial weights, batch order, flips; reference_loop.py --match-segcli), stored apart from the
plain reference runs: a paired comparison where only the training step itself differs.

segcli runs with the working directory set to its run folder (outside the repo), so a
PYTHONPATH pointing at another checkout is not shadowed by the repo's own `segcli/` and no
`.env` of the repo is read.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = Path("/work/shared/datasets/camvid")
CACHE = Path("/tmp/segcli-camvid-256x192")
WORK = Path("/tmp/segcli-quality")
SIZE = (256, 192)  # W x H
CLASSES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]
IGNORE_INDEX = 11
SPLITS = ("train", "val")
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
RUN_ENV = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_SILENT": "true"}

EXPERIMENT_YAML = """\
model: {{arch: Unet, encoder_name: resnet18, encoder_weights: null, in_channels: 3, classes: {classes}}}
defaults:
  batch_size: {batch_size}
  lr: {lr}
  max_epochs: {epochs}
  ignore_index: {ignore_index}
  num_workers: {workers}
  train_transforms: [{{name: horizontal_flip, params: {{p: 0.5}}}}]
  optimizer: {{name: AdamW, params: {{weight_decay: 0.0001}}}}
  scheduler: {{name: CosineAnnealingLR, params: {{T_max: {epochs}}}}}
  loss: [cross_entropy, dice]
  monitor: val/mIoU
experiments:
  parity: {{}}
"""


# --- the downscaled dataset -------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))


def prepare_dataset(source: Path, target: Path, size: tuple[int, int]) -> Path:
    """A resized copy of source at `target`; reused when its completion marker matches."""
    from PIL import Image

    marker = target / ".complete.json"
    expected = {
        "source": str(source),
        "size_WxH": list(size),
        "counts": {f"{s}/{k}": len(_files(source / s / k)) for s in SPLITS for k in ("images", "labels")},
    }
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == expected:
                return target
        except json.JSONDecodeError:
            pass
        print(f"{target} is stale or incomplete: rebuilding", flush=True)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    for split in SPLITS:
        for kind, resample in (("images", Image.BILINEAR), ("labels", Image.NEAREST)):
            out = partial / split / kind
            out.mkdir(parents=True)
            for path in _files(source / split / kind):
                with Image.open(path) as im:
                    if kind == "images":
                        im = im.convert("RGB")
                    im.resize(size, resample).save(out / (path.stem + ".png"))
    (partial / ".complete.json").write_text(json.dumps(expected, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    print(f"made {target} ({size[0]}x{size[1]}) in {time.monotonic() - started:.0f} s", flush=True)
    return target


# --- results file -----------------------------------------------------------------------------


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"runs": []}


def save_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def run_key(kind: str, tag: str | None, seed: int, epochs: int) -> str:
    return f"{kind}|{tag if kind == 'segcli' else kind}|seed={seed}|epochs={epochs}"


def reference_kind(args) -> str:
    return "reference-matched" if args.match_segcli else "reference"


def find_run(results: dict, key: str) -> dict | None:
    return next((r for r in results["runs"] if r["key"] == key), None)


# --- runners ----------------------------------------------------------------------------------


def run_logged(command: list[str], log: Path, cwd: Path) -> tuple[int, float]:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **RUN_ENV}
    started = time.monotonic()
    with log.open("w") as out:
        out.write(f"# cwd {cwd}\n# {shlex.join(command)}\n")
        out.flush()
        code = subprocess.call(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return code, time.monotonic() - started


def run_reference(args, data: Path, seed: int, work: Path) -> dict:
    kind = reference_kind(args)
    out = work / "runs" / kind / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [
        args.python,
        str(HERE / "reference_loop.py"),
        "--data",
        str(data),
        "--seed",
        str(seed),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--workers",
        str(args.workers),
        "--json",
        str(out / "result.json"),
        *(["--match-segcli"] if args.match_segcli else []),
    ]
    log = work / f"{kind}-seed{seed}.log"
    code, seconds = run_logged(command, log, cwd=out)
    if code != 0:
        raise RuntimeError(f"{kind} seed {seed} exited {code}; see {log}")
    result = json.loads((out / "result.json").read_text())
    history = [
        {"epoch": h["epoch"], "val/mIoU": h["val_mIoU"], "val/loss": h["val_loss"], "train/loss": h["train_loss"]}
        for h in result["history"]
    ]
    return {
        "best_val_mIoU": result["best_val_mIoU"],
        "best_epoch": result["best_epoch"],
        "history": history,
        "seconds": seconds,
        "log": str(log),
        "command": shlex.join(command),
    }


def run_segcli(args, data: Path, seed: int, work: Path) -> dict:
    import torch

    tag = args.tag or "untagged"
    out = work / "runs" / f"segcli-{tag}" / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)  # a killed run's leftovers would make segcli refuse
    out.mkdir(parents=True)
    config = out / "parity.yaml"
    config.write_text(
        EXPERIMENT_YAML.format(
            classes=len(CLASSES),
            batch_size=args.batch_size,
            lr=args.lr,
            epochs=args.epochs,
            ignore_index=IGNORE_INDEX,
            workers=args.workers,
        )
    )
    command = [
        *shlex.split(args.segcli_cmd),
        "train",
        "-c",
        str(config),
        "-e",
        "parity",
        "--dataset",
        str(data),
        "--classes",
        ",".join(CLASSES),
        "--offline",
        "--output-dir",
        str(out),
        "--set",
        f"seed={seed}",
        "--cpu",
    ]
    log = work / f"segcli-{tag}-seed{seed}.log"
    code, seconds = run_logged(command, log, cwd=out)
    if code != 0:
        raise RuntimeError(f"segcli seed {seed} exited {code}; see {log}")
    found = sorted(glob.glob(str(out / "checkpoints" / "parity-parity-set*" / "ckpt_best.pth")))
    if len(found) != 1:
        raise RuntimeError(f"expected one ckpt_best.pth under {out / 'checkpoints'}, found {found}")
    payload = torch.load(found[0], weights_only=True, map_location="cpu")
    history = segcli_history(Path(found[0]).parent / "metrics.csv")
    return {
        "best_val_mIoU": float(payload["metrics"]["val/mIoU"]),
        "best_epoch": payload["epoch"] - 1,
        "history": history,
        "seconds": seconds,
        "log": str(log),
        "checkpoint": found[0],
        "command": shlex.join(command),
    }


def segcli_history(metrics_csv: Path) -> list[dict]:
    """The run's metrics.csv as history rows; segcli counts epochs from 1, the results file from 0."""
    import csv

    with metrics_csv.open(newline="") as stream:
        return [
            {"epoch": int(row["epoch"]) - 1, "val/mIoU": float(row["val/mIoU"]), "val/loss": float(row["val/loss"])}
            for row in csv.DictReader(stream)
        ]


# --- table ------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def print_table(results: dict, seeds: list[int], epochs: int, tag: str | None, ref_kind: str = "reference") -> None:
    tag = tag or "untagged"
    rows, ref_scores, seg_scores = [], [], []
    for seed in seeds:
        ref = find_run(results, run_key(ref_kind, None, seed, epochs))
        seg = find_run(results, run_key("segcli", tag, seed, epochs))
        cells = []
        for run, bucket in ((ref, ref_scores), (seg, seg_scores)):
            if run is None:
                cells.append("-".center(22))
                continue
            bucket.append(run["best_val_mIoU"])
            best_epoch = "?" if run.get("best_epoch") is None else run["best_epoch"] + 1
            cells.append(f"{run['best_val_mIoU']:.4f} (ep {best_epoch:>2}, {run['seconds'] / 60:4.1f} min)")
        diff = f"{seg['best_val_mIoU'] - ref['best_val_mIoU']:+.4f}" if ref and seg else "-"
        rows.append(f"{seed:>6}  {cells[0]:<28}  {cells[1]:<28}  {diff:>8}")
    (rm, rs), (sm, ss) = _mean_std(ref_scores), _mean_std(seg_scores)
    title = f"best val mIoU, {epochs} epochs: {ref_kind} loop vs segcli [{tag}]"
    print(title)
    print(f"{'seed':>6}  {ref_kind:<28}  {'segcli':<28}  {'seg-ref':>8}")
    print("\n".join(rows))
    print(
        f"{'mean':>6}  {f'{rm:.4f} ± {rs:.4f} (n={len(ref_scores)})':<28}  "
        f"{f'{sm:.4f} ± {ss:.4f} (n={len(seg_scores)})':<28}  {sm - rm:>+8.4f}"
    )
    print("(± is the sample standard deviation over seeds; seg-ref of the mean row is the difference of means)")


def print_curves(results: dict, seeds: list[int], epochs: int, tag: str | None, ref_kind: str = "reference") -> None:
    """Per-epoch val mIoU / val loss of both sides, seed by seed (for paired --match-segcli runs)."""
    for seed in seeds:
        ref = find_run(results, run_key(ref_kind, None, seed, epochs))
        seg = find_run(results, run_key("segcli", tag or "untagged", seed, epochs))
        if not (ref and seg):
            continue
        print(f"\nseed {seed}: per-epoch val mIoU / val loss, {ref_kind} vs segcli [{tag or 'untagged'}]")
        seg_rows = {row["epoch"]: row for row in seg["history"]}
        for row in ref["history"]:
            other = seg_rows.get(row["epoch"], {})
            print(
                f"  epoch {row['epoch'] + 1:>3}  {row['val/mIoU']:.4f} / {row['val/loss']:.4f}   "
                f"{other.get('val/mIoU', math.nan):.4f} / {other.get('val/loss', math.nan):.4f}"
            )


# --- main -------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("reference", "segcli"), default=None, help="run only one side")
    p.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 13])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--python", default=sys.executable, help="interpreter for the reference loop")
    p.add_argument("--segcli-cmd", default=None, help="command that runs segcli (default: '<python> -m segcli')")
    p.add_argument("--tag", default=None, help="label stored with segcli results (e.g. baseline-9c88e52)")
    p.add_argument("--source", type=Path, default=SOURCE, help="full-size CamVid")
    p.add_argument("--data", type=Path, default=CACHE, help="where the 256x192 copy is made / reused")
    p.add_argument("--work", type=Path, default=WORK, help="logs and run folders")
    p.add_argument("--results", type=Path, default=None, help="results JSON (default: WORK/results.json)")
    p.add_argument(
        "--match-segcli",
        action="store_true",
        help="reference runs with segcli's randomness for the seed (a paired diagnostic)",
    )
    p.add_argument("--rerun", action="store_true", help="run again even when the results already hold the run")
    p.add_argument("--curves", action="store_true", help="also print per-epoch curves of both sides")
    p.add_argument("--report", action="store_true", help="print the table from the results file; run nothing")
    args = p.parse_args(argv)
    args.segcli_cmd = args.segcli_cmd or f"{shlex.quote(args.python)} -m segcli"
    args.results = args.results or args.work / "results.json"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = load_results(args.results)
    if args.report:
        print_table(results, args.seeds, args.epochs, args.tag, reference_kind(args))
        if args.curves:
            print_curves(results, args.seeds, args.epochs, args.tag, reference_kind(args))
        return 0
    data = prepare_dataset(args.source, args.data, SIZE)
    kinds = [args.only] if args.only else ["reference", "segcli"]
    kinds = [reference_kind(args) if kind == "reference" else kind for kind in kinds]
    failures = 0
    for seed in args.seeds:
        for kind in kinds:
            key = run_key(kind, args.tag or "untagged", seed, args.epochs)
            if find_run(results, key) and not args.rerun:
                print(f"{key}: already in {args.results}, skipped", flush=True)
                continue
            print(f"{key}: running ({datetime.now():%H:%M:%S})", flush=True)
            runner = run_segcli if kind == "segcli" else run_reference
            try:
                run = runner(args, data, seed, args.work)
            except RuntimeError as exc:
                print(f"{key}: FAILED: {exc}", flush=True)
                failures += 1
                continue
            run.update(
                key=key,
                kind=kind,
                tag=args.tag if kind == "segcli" else None,
                seed=seed,
                epochs=args.epochs,
                finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            results = load_results(args.results)  # re-read: another invocation may have added runs
            results["runs"] = [r for r in results["runs"] if r["key"] != key] + [run]
            save_results(args.results, results)
            print(f"{key}: best val mIoU {run['best_val_mIoU']:.4f} in {run['seconds'] / 60:.1f} min", flush=True)
    print()
    print_table(load_results(args.results), args.seeds, args.epochs, args.tag, reference_kind(args))
    if args.curves:
        print_curves(load_results(args.results), args.seeds, args.epochs, args.tag, reference_kind(args))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
