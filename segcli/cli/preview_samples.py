"""`segcli preview-samples`: a PNG grid of seeded samples (image, mask, overlay) with a class legend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcli.cli.common import (
    BandsOpt,
    ClassesOpt,
    DatasetOpt,
    ExperimentOpt,
    IgnoreIndexOpt,
    OfflineOpt,
    OptionalConfigOpt,
    resolve_experiment_option,
    stderr_console,
    stdout_console,
)


def preview_samples(
    dataset: DatasetOpt = None,
    classes: ClassesOpt = None,
    split: Annotated[str, typer.Option(metavar="NAME", help="Split to sample from.")] = "train",
    count: Annotated[int, typer.Option("-n", "--count", min=1, metavar="N", help="Number of samples.")] = 4,
    seed: Annotated[int, typer.Option(metavar="N", help="Same seed, same samples (and augmentations).")] = 0,
    config: OptionalConfigOpt = None,
    experiment: ExperimentOpt = None,
    augmented: Annotated[
        bool, typer.Option("--augmented", help="Show the experiment's train transforms applied (what the model sees).")
    ] = False,
    ignore_index: IgnoreIndexOpt = None,
    bands: BandsOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="PNG file to write.")] = Path(
        "preview.png"
    ),
    wandb: Annotated[bool, typer.Option("--wandb", help="Also log the samples to the W&B project.")] = False,
    offline: OfflineOpt = False,
) -> None:
    """Write a picture of random samples with their masks and a legend of every class.

    A dataset that fails the check is drawn anyway (with a warning): values that are not classes get a
    white colour and a legend entry of their own, so you can see what is wrong.
    """
    from segcli.config import env
    from segcli.data.check_report import format_problems
    from segcli.data.samples import preview_samples as preview
    from segcli.drawing.colours import parse_bands
    from segcli.drawing.pictures import render_grid
    from segcli.files import save_image

    inputs = env.data_inputs(dataset, classes)
    root, class_names = inputs.dataset, inputs.class_names
    resolved = resolve_experiment_option(config, experiment)
    found = preview(root, split, class_names, resolved, experiment_name=experiment or "", ignore_index=ignore_index,
                    count=count, seed=seed, augmented=augmented, bands=parse_bands(bands))  # fmt: skip
    if found.report.errors:
        stderr_console().print(
            f"warning: split '{split}' of {root} fails the dataset check ({len(found.report.errors)} problems); "
            f"drawn anyway, values that are not classes in white:\n{format_problems(found.report.errors, limit=5)}",
            markup=False,
        )
    save_image(output, render_grid(found.samples, class_names, found.ignored))
    console = stdout_console()
    count = len(found.samples)
    console.print(f"wrote {output} ({count} sample{'s' if count != 1 else ''} from {root}/{split})")
    if wandb:
        from segcli.training.trackers import WandbTracker

        folder = WandbTracker.log_preview(split, found.samples, class_names, found.ignored, offline)
        if folder is None:
            console.print("W&B is disabled (WANDB_MODE=disabled): nothing logged")
        elif folder:
            console.print(f"logged to W&B project {env.wandb_project()}: {folder}")
