"""`segcli find-lr`: Lightning's learning-rate range test on the experiment's real model and data."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from segcli.cli.common import ClassesOpt, ConfigOpt, DatasetOpt, TrackerOpt, stdout_console, tracker_override


def find_lr(
    config: ConfigOpt,
    experiment: Annotated[str, typer.Option("--experiment", "-e", metavar="NAME", help="Experiment name.")],
    dataset: DatasetOpt = None,
    classes: ClassesOpt = None,
    min_lr: Annotated[float, typer.Option(min=0.0, metavar="LR", help="Smallest learning rate tried.")] = 1e-7,
    max_lr: Annotated[float, typer.Option(min=0.0, metavar="LR", help="Largest learning rate tried.")] = 1.0,
    steps: Annotated[
        int, typer.Option(min=1, metavar="N", help="Training steps, one learning rate each (13 at least).")
    ] = 100,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Plot of loss vs lr.")] = Path(
        "lr_finder.png"
    ),
    apply: Annotated[
        bool, typer.Option("--apply", help="Also print the `segcli train ... --set lr=...` command to use.")
    ] = False,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run on the CPU even when a GPU is present.")] = False,
    tracker: TrackerOpt = None,
) -> None:
    """Train a few steps with a rising learning rate and suggest the one where the loss falls fastest."""
    from segcli.config import env
    from segcli.config.loader import load_experiment_file, resolve_experiment

    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")  # Lightning's own progress bar, noise in a log file
    from segcli.training.lr_finder import find_learning_rate

    names = tracker_override(tracker)
    resolved = resolve_experiment(load_experiment_file(config), experiment, config, {"tracker": names} if names else {})
    inputs = env.data_inputs(dataset, classes)
    finding = find_learning_rate(
        resolved, dataset=inputs.dataset, class_names=inputs.class_names, name=experiment,
        force_cpu=cpu, min_lr=min_lr, max_lr=max_lr, steps=steps, plot=output,
        trackers=resolved.trackers if names else None,
    )  # fmt: skip
    console = stdout_console()
    if finding.suggestion is None:
        console.print(f"no suggestion: the loss was not finite at enough steps over {min_lr:g}..{max_lr:g}; see "
                      f"{output}")  # fmt: skip
        raise typer.Exit(1)
    console.print(f"suggested lr: {finding.suggestion:.3g} after {len(finding.lrs)} steps (the experiment has "
                  f"{resolved.lr:g}); plot: {output}")  # fmt: skip
    if apply:
        console.print(f"segcli train -c {config} -e {experiment} --set lr={finding.suggestion:.3g}")
