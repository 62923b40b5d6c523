"""Does `segcli plan` give a user who knows nothing a better model than a reasonable hand-written configuration?

On CamVid at 256x192 (compare_quality.py's copy and its hand configuration: Unet/resnet18 from scratch,
CE + Dice, AdamW 2e-3, cosine over 12 epochs, flip, batch 8), with the same CPU budget for both:
1. `segcli plan DATA --budget B --device cpu` writes one plan (B: the hand runs' median CPU time per torch
   thread, i.e. their wall time on an idle machine, unless --budget is given); the plan file is kept.
2. For each seed, the hand run (compare_quality.py's, stored in its results file under --hand-tag) and the
   planned run (`segcli train -c PLAN -e NAME ... --set seed=S`), one after the other, never two at once.
3. Prints best val mIoU per seed, mean +- sample std, the difference of means, per-class IoU (mean over
   seeds) and each side's wall and CPU minutes.

    python benchmarks/plan_vs_hand.py                      # seeds 7 11 13: hand runs first if missing, then plans
    python benchmarks/plan_vs_hand.py --seeds 7            # one pair
    python benchmarks/plan_vs_hand.py --report             # the tables only, nothing run

Results (and the plan file) live in WORK (default /tmp/segcli-quality, shared with compare_quality.py, whose
segcli runs under the same tag are reused as hand runs).
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_quality as quality  # noqa: E402  (a sibling script, not a package)

HAND_EPOCHS = 12
PLAN_NAME = "camvid256"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _per_class(checkpoint: str) -> dict[str, float]:
    import torch

    metrics = torch.load(checkpoint, weights_only=True, map_location="cpu")["metrics"]
    return {name: float(metrics.get(f"val/IoU/{name}", float("nan"))) for name in quality.CLASSES}


def _hand_args(args) -> argparse.Namespace:
    return argparse.Namespace(batch_size=8, lr=2e-3, epochs=HAND_EPOCHS, workers=2, segcli_cmd=args.segcli_cmd,
                              tag=args.hand_tag)  # fmt: skip


def run_hand(args, data: Path, seed: int) -> dict:
    before = _children_cpu()
    run = quality.run_segcli(_hand_args(args), data, seed, args.work)
    run["cpu_seconds"] = _children_cpu() - before
    run["per_class"] = _per_class(run["checkpoint"])
    return run


def make_plan(args, data: Path, budget_minutes: float) -> Path:
    path = args.work / "plan" / f"{PLAN_NAME}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [*shlex.split(args.segcli_cmd), "plan", str(data), "--output", str(path), "--name", PLAN_NAME,
               "--budget", f"{budget_minutes:.1f}m", "--device", "cpu", "--classes", ",".join(quality.CLASSES),
               "--overwrite"]  # fmt: skip
    log = args.work / "plan" / "plan.log"
    code, _ = quality.run_logged(command, log, cwd=path.parent)
    if code != 0:
        raise RuntimeError(f"segcli plan exited {code}; see {log}")
    return path


def run_plan(args, data: Path, plan: Path, seed: int) -> dict:
    out = args.work / "runs" / f"plan-{args.tag}" / f"seed{seed}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    command = [*shlex.split(args.segcli_cmd), "train", "-c", str(plan), "-e", PLAN_NAME, "--dataset", str(data),
               "--classes", ",".join(quality.CLASSES), "--offline", "--output-dir", str(out), "--set", f"seed={seed}",
               "--cpu"]  # fmt: skip
    log = args.work / f"plan-{args.tag}-seed{seed}.log"
    before = _children_cpu()
    code, seconds = quality.run_logged(command, log, cwd=out)
    if code != 0:
        raise RuntimeError(f"planned run seed {seed} exited {code}; see {log}")
    (checkpoint,) = (out / "checkpoints").glob("*/ckpt_best.pth")
    import torch

    payload = torch.load(checkpoint, weights_only=True, map_location="cpu")
    return {
        "best_val_mIoU": float(payload["metrics"]["val/mIoU"]),
        "best_epoch": payload["epoch"] - 1,
        "seconds": seconds,
        "cpu_seconds": _children_cpu() - before,
        "per_class": _per_class(str(checkpoint)),
        "checkpoint": str(checkpoint),
        "log": str(log),
        "command": shlex.join(command),
    }


def _store(args, key: str, run: dict, **fields) -> None:
    results = quality.load_results(args.results)
    run.update(key=key, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields)
    results["runs"] = [r for r in results["runs"] if r["key"] != key] + [run]
    quality.save_results(args.results, results)


def hand_key(args, seed: int) -> str:
    return quality.run_key("segcli", args.hand_tag, seed, HAND_EPOCHS)


def plan_key(args, seed: int) -> str:
    return f"plan|{args.tag}|seed={seed}"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.4f} ± {std:.4f} (n={len(values)})"


def print_report(args) -> None:
    results = quality.load_results(args.results)
    pairs = [(seed, quality.find_run(results, hand_key(args, seed)), quality.find_run(results, plan_key(args, seed)))
             for seed in args.seeds]  # fmt: skip
    print(f"best val mIoU, CamVid 256x192: hand configuration [{args.hand_tag}] vs segcli plan [{args.tag}]")
    print(f"{'seed':>6}  {'hand':<28}  {'plan':<28}  {'plan-hand':>9}")
    for seed, hand, plan in pairs:
        cells = []
        for run in (hand, plan):
            if run is None:
                cells.append("-")
                continue
            cpu = run.get("cpu_seconds")
            spent = f"{run['seconds'] / 60:.0f} min" + (f", {cpu / 60:.0f} CPU-min" if cpu else "")
            cells.append(f"{run['best_val_mIoU']:.4f} ({spent})")
        diff = f"{plan['best_val_mIoU'] - hand['best_val_mIoU']:+.4f}" if hand and plan else "-"
        print(f"{seed:>6}  {cells[0]:<28}  {cells[1]:<28}  {diff:>9}")
    hands = [h["best_val_mIoU"] for _, h, _ in pairs if h]
    plans = [p["best_val_mIoU"] for _, _, p in pairs if p]
    difference = f"{statistics.fmean(plans) - statistics.fmean(hands):+.4f}" if hands and plans else "-"
    print(f"{'mean':>6}  {_mean_std(hands):<28}  {_mean_std(plans):<28}  {difference:>9}")
    print("\nper-class val IoU at the best epoch, mean over seeds")
    print(f"{'class':<12} {'hand':>7} {'plan':>7}")
    for name in quality.CLASSES:
        values = []
        for side in (1, 2):
            scores = [run[side]["per_class"][name] for run in pairs if run[side] and "per_class" in run[side]]
            values.append(f"{statistics.fmean(scores):.4f}" if scores else "-")
        print(f"{name:<12} {values[0]:>7} {values[1]:>7}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 13])
    p.add_argument("--budget", type=float, default=None, help="minutes (default: from the hand runs' CPU time)")
    p.add_argument("--threads", type=int, default=2, help="torch threads the hand runs' CPU time is divided by")
    p.add_argument("--hand-tag", default="hand", help="compare_quality.py tag of the hand runs")
    p.add_argument("--tag", default="untagged", help="label stored with the planned runs (e.g. the commit)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--segcli-cmd", default=None, help="command that runs segcli (default: '<python> -m segcli')")
    p.add_argument("--source", type=Path, default=quality.SOURCE)
    p.add_argument("--data", type=Path, default=quality.CACHE)
    p.add_argument("--work", type=Path, default=quality.WORK)
    p.add_argument("--report", action="store_true", help="print the tables from the results; run nothing")
    args = p.parse_args(argv)
    args.segcli_cmd = args.segcli_cmd or f"{shlex.quote(args.python)} -m segcli"
    args.results = args.work / "results.json"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        print_report(args)
        return 0
    data = quality.prepare_dataset(args.source, args.data, quality.SIZE)
    for seed in args.seeds:
        if quality.find_run(quality.load_results(args.results), hand_key(args, seed)) is None:
            print(f"hand seed {seed}: running ({datetime.now():%H:%M:%S})", flush=True)
            _store(args, hand_key(args, seed), run_hand(args, data, seed), kind="segcli", tag=args.hand_tag,
                   seed=seed, epochs=HAND_EPOCHS)  # fmt: skip
    results = quality.load_results(args.results)
    hand_cpu = [r["cpu_seconds"] for s in args.seeds if (r := quality.find_run(results, hand_key(args, s)))
                and r.get("cpu_seconds")]  # fmt: skip
    budget = args.budget or (statistics.median(hand_cpu) / args.threads / 60 if hand_cpu else 20.0)
    plan = make_plan(args, data, budget)
    print(f"plan for a {budget:.1f} min budget: {plan}", flush=True)
    for seed in args.seeds:
        if quality.find_run(quality.load_results(args.results), plan_key(args, seed)) is not None:
            continue
        print(f"plan seed {seed}: running ({datetime.now():%H:%M:%S})", flush=True)
        started = time.monotonic()
        run = run_plan(args, data, plan, seed)
        _store(args, plan_key(args, seed), run, kind="plan", tag=args.tag, seed=seed, budget_minutes=budget,
               plan=plan.read_text())  # fmt: skip
        print(
            f"plan seed {seed}: {run['best_val_mIoU']:.4f} in {(time.monotonic() - started) / 60:.0f} min", flush=True
        )
    print()
    print_report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
