"""`segcli make-demo-dataset`: write the small generated dataset the demo trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcli.cli.common import stdout_console


def make_demo_dataset(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="Folder to write {train,val}/{images,labels}/*.png into.")
    ],
    train: Annotated[int, typer.Option(min=1, metavar="N", help="Training pairs.")] = 48,
    val: Annotated[int, typer.Option(min=1, metavar="N", help="Validation pairs.")] = 16,
    seed: Annotated[int, typer.Option(metavar="N", help="Same seed, same files.")] = 0,
    height: Annotated[int, typer.Option(min=32, metavar="PIXELS", help="Image height.")] = 96,
    width: Annotated[int, typer.Option(min=32, metavar="PIXELS", help="Image width.")] = 96,
) -> None:
    """Generate coloured shapes on textured backgrounds (classes: background, disc, square, triangle)."""
    from segcli.data.synthetic import DEMO_CLASSES, make_dataset

    make_dataset(path, train=train, val=val, size=(height, width), seed=seed)
    stdout_console().print(f"wrote {train} train and {val} val pairs to {path}; classes: {','.join(DEMO_CLASSES)}")
