"""`segcli plan`: from a folder of images to an experiment file that trains well, every decision explained."""

from __future__ import annotations

import json
import re
import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from segcli.cli.common import ClassesOpt, JsonOpt, parse_duration, stdout_console


class Device(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


class Domain(str, Enum):
    auto = "auto"
    natural = "natural"
    aerial = "aerial"
    microscopy = "microscopy"
    medical = "medical"


_BYTES = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(text: str) -> int | None:
    """'24GB', '512MB', 'auto' -> bytes (None for auto)."""
    from segcli.errors import ConfigError

    if text.strip().lower() == "auto":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]b?)", text.strip().lower())
    if not match:
        raise ConfigError(f"--memory {text}: write an amount such as 24GB or 512MB, or auto")
    return int(float(match.group(1)) * _BYTES[match.group(2)])


def plan(
    dataset: Annotated[
        Optional[Path],
        typer.Argument(metavar="DATASET", help="Dataset root with {train,val}/{images,labels}. Default: DATASET_PATH."),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", metavar="FILE", help="The experiment file. Default: NAME.yaml.")
    ] = None,
    name: Annotated[
        Optional[str],
        typer.Option(metavar="NAME", help="The experiment's name. Default: the dataset folder's name."),
    ] = None,
    budget: Annotated[
        str, typer.Option(metavar="DURATION", help="Training time the plan fills: 30m, 2h, 1h30m, ...")
    ] = "30m",
    device: Annotated[
        Optional[Device], typer.Option(metavar="gpu|cpu", help="Plan for this device. Default: a GPU if present.")
    ] = None,
    memory: Annotated[
        str, typer.Option(metavar="24GB|auto", help="Memory a training batch may use. Default: what is free.")
    ] = "auto",
    domain: Annotated[
        Domain, typer.Option(metavar="auto|natural|aerial|microscopy|medical", help="Sets the augmentations.")
    ] = Domain.auto,
    pretrained: Annotated[
        Optional[bool],
        typer.Option(
            "--pretrained/--no-pretrained",
            help="ImageNet encoder weights. Default: for 8-bit RGB when they can be downloaded.",
        ),
    ] = None,  # fmt: skip
    classes: ClassesOpt = None,
    lr_test: Annotated[
        bool, typer.Option("--lr-test", help="Measure the learning rate with a range test on the data (find-lr).")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing FILE.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Measure the dataset and write an experiment file that trains well on it, each decision with its reason.

    Classes and void labels, label map, normalisation, crop, model, batch size (measured), learning rate and
    schedule, epochs for the --budget, class weights and rare-class crops, augmentations for the domain.
    Nothing is written but the experiment file.
    """
    from segcli.config import env
    from segcli.errors import ConfigError

    inputs = env.data_inputs(dataset, classes, required=False)
    root, names = inputs.dataset, inputs.class_names
    experiment_name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", root.resolve().name).strip("-") or "plan"
    path = output or Path(f"{experiment_name}.yaml")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass --overwrite to replace it, or --output another file")
    from segcli.files import write_text
    from segcli.planning.plan_file import render
    from segcli.planning.planner import PlanRequest, plan_dataset

    request = PlanRequest(
        dataset=root, name=experiment_name, budget_seconds=parse_duration(budget, "--budget"),
        device=device.value if device else None, memory_bytes=parse_memory(memory), class_names=names,
        domain=None if domain is Domain.auto else domain.value, pretrained=pretrained, lr_test=lr_test,
    )  # fmt: skip
    result = plan_dataset(request)
    run = result.run
    command = shlex.join(["segcli", "train", "-c", str(path), "-e", experiment_name, "--dataset", str(root),
                          "--classes", ",".join(run.class_names)])  # fmt: skip
    fp = result.fingerprint
    header = [
        f"segcli plan for {root}: {fp.train.pairs} train / {fp.val.pairs if fp.val else 0} val pairs, "
        f"planned in {result.seconds:.0f} s on {result.target.device}",
        f"train: {command}",
    ]
    write_text(path, render(run, experiment_name, header))
    if json_output:
        document = {
            "file": str(path),
            "experiment": experiment_name,
            "train_command": command,
            "class_names": run.class_names,
            "decisions": [{"key": d.key, "value": d.value, "reason": d.reason} for d in run.decisions],
            "notes": [d.reason for d in run.notes],
            "epochs": run.epochs,
            "epoch_seconds": round(run.epoch_seconds, 2),
            "estimate_seconds": round(run.estimate_seconds, 1),
            "budget_seconds": request.budget_seconds,
            "device": result.target.device,
            "planning_seconds": round(result.seconds, 1),
        }
        typer.echo(json.dumps(document, indent=2))
        return
    _print_plan(run, path, command, result.seconds)


def _print_plan(run, path: Path, command: str, seconds: float) -> None:
    from rich.table import Table
    from rich.text import Text

    from segcli.planning.plan_file import flow

    console = stdout_console()
    table = Table(title=Text(f"plan: {path}"), show_lines=False)
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("why", overflow="fold")
    for decision in run.decisions:  # Text: values such as [cross_entropy, dice] are not markup
        table.add_row(Text(decision.key), Text(flow(decision.value)), Text(decision.reason))
    console.print(table)
    for note in run.notes:
        console.print(note.reason, markup=False)
    console.print(f"wrote {path} (planned in {seconds:.0f} s); train it with:", markup=False)
    console.print(command, markup=False, soft_wrap=True)
