"""Options shared by several commands, spelled the same way everywhere."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="Experiment file (YAML), e.g. experiments/unetpp.yaml.")
]


def complete_experiments(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion: the experiment names of the --config file given before."""
    config = ctx.params.get("config")
    if not config:
        return []
    from segcli.config.loader import load_experiment_file
    from segcli.errors import SegcliError

    try:
        names = list(load_experiment_file(Path(config)).experiments)
    except SegcliError:
        return []
    return [name for name in [*names, "all"] if name.startswith(incomplete)]


ExperimentsOpt = Annotated[
    list[str],
    typer.Option(
        "--experiment",
        "-e",
        help="Experiment name (repeatable; `all` runs every experiment of the file).",
        autocompletion=complete_experiments,
    ),
]
DatasetOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--dataset", help="Dataset root holding {train,val}/{images,labels}. Default: DATASET_PATH from .env."
    ),
]
ClassesOpt = Annotated[
    Optional[str],
    typer.Option("--classes", help="Comma-separated class names in label order. Default: CLASS_NAMES from .env."),
]
IgnoreIndexOpt = Annotated[
    Optional[int], typer.Option("--ignore-index", help="Label value that marks ignored pixels (not a class).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts instead of tables.")]


# --- after training: predict, evaluate, export-checkpoint ---------------------------------------


class Tta(str, Enum):
    flip = "flip"


ModelArg = Annotated[
    Path,
    typer.Argument(
        help="A segcli checkpoint (ckpt_best.pth, ckpt_latest.pth, average_model.pth) or a run folder (its "
        "ckpt_best.pth).",
        show_default=False,
    ),
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Images per forward pass (tiles per pass with --tile).")
]
TileOpt = Annotated[
    Optional[int],
    typer.Option(
        "--tile",
        min=1,
        help="Sliding-window inference with tiles of this size (rounded up to the model's size multiple), "
        "blended where they overlap. Default: whole images.",
    ),
]
OverlapOpt = Annotated[
    float, typer.Option("--overlap", min=0.0, max=0.9, help="Fraction of a tile its neighbour shares.")
]
TtaOpt = Annotated[
    Optional[Tta], typer.Option("--tta", help="Test-time augmentation: 'flip' averages with the mirrored image.")
]
GpuOpt = Annotated[Optional[int], typer.Option("--gpu", min=0, help="Run on cuda:N. Default: cuda:0 if present.")]
CpuOpt = Annotated[bool, typer.Option("--cpu", help="Run on the CPU even when a GPU is present.")]
