"""Start-up until the first training step: segcli's `train()` against benchmarks/bare_train.py.

Each side is a fresh process, launched alternately (bare, segcli, bare, ...). It prints the wall-clock time of
its first training step (once the first batch is loaded, before its forward pass); the driver subtracts the
moment it launched the process, then stops it. segcli's side covers its imports, the experiment, the dataset
check (the cache is warmed by a first, untimed run), the model, the loaders and Lightning's set-up: what a user
waits for after `segcli train` (less Typer's argument parsing, about 0.1 s). The bare side covers its imports,
the model and the loaders.

    .venv/bin/python benchmarks/first_step.py --data ../shared/datasets/camvid --repeats 5
    .venv/bin/python benchmarks/first_step.py --data ... --segcli-path /path/to/other/checkout   # another version
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
MARK = "first-step "


def segcli_child(data: Path, config: Path, experiment: str, output: Path) -> None:
    """The segcli side, in the child process: `train()` with a callback that reports the first step."""
    import pytorch_lightning as pl

    from segcli.config.loader import load_experiment_file, resolve_experiment
    from segcli.training.run import RunOptions, train

    class FirstStep(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            print(f"{MARK}{time.time()}", flush=True)
            time.sleep(3600)  # the driver stops the process

    resolved = resolve_experiment(load_experiment_file(config), experiment, config, {})
    options = RunOptions(dataset=data, class_names=CLASSES.split(","), run_name="first-step",
                         experiment_name=experiment, output_dir=output, offline=True, progress=False, force_cpu=True,
                         overwrite=True, extra_callbacks=[FirstStep()])  # fmt: skip
    train(resolved, options)


def until_first_step(command: list[str], env: dict[str, str]) -> float:
    """Seconds from launching `command` to the first step it reports; the process and its DataLoader workers
    are then stopped (its own process group), before the next one starts."""
    with tempfile.TemporaryFile("w+") as errors:
        launched = time.time()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env,
                                   start_new_session=True)  # fmt: skip
        try:
            for line in process.stdout:
                if line.startswith(MARK):
                    return float(line[len(MARK) :]) - launched
            errors.seek(0)
            raise RuntimeError(f"{command[:3]} exited {process.wait()} before its first step:\n{errors.read()[-2000:]}")
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=HERE / "benchmark.yaml")
    parser.add_argument("--experiment", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segcli-path", type=Path, default=HERE.parent, help="the checkout whose segcli is timed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        segcli_child(args.data, args.config, args.experiment, args.output)
        return
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    segcli_env = {**env, "PYTHONPATH": str(args.segcli_path.resolve())}
    with tempfile.TemporaryDirectory() as scratch:
        sides = {  # both with their default DataLoader workers: min(4, CPUs)
            "bare script": ([sys.executable, str(HERE / "bare_train.py"), "--data", str(args.data), "--output",
                             f"{scratch}/bare", "--first-step"], env),
            "segcli train()": ([sys.executable, str(Path(__file__).resolve()), "--child", "--data", str(args.data),
                                "--config", str(args.config), "--experiment", args.experiment, "--output",
                                f"{scratch}/segcli"], segcli_env),
        }  # fmt: skip
        until_first_step(*sides["segcli train()"])  # untimed: fills the dataset check's cache, as an earlier run did
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, (command, side_env) in sides.items():
                times[name].append(until_first_step(command, side_env))
    bare = statistics.median(times["bare script"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        runs = ", ".join(f"{value:.2f}" for value in seconds)
        print(f"{name:16s} median {median:6.2f} s  ({median / bare:4.2f}x the bare script)  runs: {runs}")


if __name__ == "__main__":
    main()
