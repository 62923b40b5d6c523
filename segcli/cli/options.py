"""Options shared by several commands, spelled the same way everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="Experiment file (YAML), e.g. experiments/unetpp.yaml.")
]
ExperimentOpt = Annotated[str, typer.Option("--experiment", "-e", help="Experiment name inside the config file.")]
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
