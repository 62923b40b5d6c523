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
from segcli.errors import ConfigError, DatasetError


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
    from segcli.data.checks import check_dataset_cached
    from segcli.data.io import label_lookup, list_pairs, never_scored_label
    from segcli.data.samples import choose_pairs, load_samples
    from segcli.drawing.colours import parse_bands
    from segcli.drawing.pictures import render_grid
    from segcli.files import save_image

    env.load_env_file()
    root = env.dataset_path(dataset)
    class_names = env.class_names(classes)
    resolved = resolve_experiment_option(config, experiment)
    if augmented and resolved is None:
        raise ConfigError(
            "--augmented shows an experiment's train transforms: also pass --config FILE --experiment NAME"
        )
    label_map = resolved.label_map if resolved else None
    if resolved is not None and ignore_index is None:
        ignore_index = resolved.ignore_index

    report = check_dataset_cached(root, [split], class_names, ignore_index, label_map=label_map)
    pairs = list_pairs(root, split)
    if not pairs:
        raise DatasetError(
            f"split '{split}' of {root} has no image/mask pairs to draw:\n{format_problems(report.errors)}"
        )
    if report.errors:
        stderr_console().print(
            f"warning: split '{split}' of {root} fails the dataset check ({len(report.errors)} problems); drawn "
            f"anyway, values that are not classes in white:\n{format_problems(report.errors, limit=5)}",
            markup=False,
        )
    channels = resolved.model.in_channels if resolved else report.splits[split].channels.most_common(1)[0][0]
    never_scored = never_scored_label(ignore_index, len(class_names))
    # Outside a region of interest is drawn as ignored, also without an ignore_index (the internal label then).
    drawn_ignored = never_scored if any(pair.roi for pair in pairs) else ignore_index
    pipeline = None
    if augmented:
        from segcli.data.transforms import PixelStats, output_sizes, preview_pipeline

        stats = report.splits[split]
        scale = PixelStats(stats.max_pixel_value())
        where = f"experiment '{experiment}': train_transforms"
        pipeline = preview_pipeline(resolved.train_transforms, where, scale.max_pixel_value, seed=seed,
                                    fill_label=never_scored)  # fmt: skip
        output_sizes(pipeline, where, stats.image_sizes, channels, stats.dtype or "uint8", tries=1)
    samples = load_samples(choose_pairs(pairs, count, seed), channels, pipeline=pipeline,
                           label_lookup=label_lookup(label_map), never_scored=never_scored,
                           bands=parse_bands(bands))  # fmt: skip
    save_image(output, render_grid(samples, class_names, drawn_ignored))
    console = stdout_console()
    console.print(f"wrote {output} ({len(samples)} sample{'s' if len(samples) != 1 else ''} from {root}/{split})")
    if wandb:
        from segcli.training.trackers import TrackedRun, WandbTracker

        run = TrackedRun(name=f"preview-{split}", output_dir=Path("."), run_dir=Path("."), config={}, offline=offline,
                         job_type="preview")  # fmt: skip
        tracker = WandbTracker.start(run)
        if tracker is None:
            console.print("W&B is disabled (WANDB_MODE=disabled): nothing logged")
            return
        folder = tracker.folder
        tracker.log_samples(f"samples/{split}", samples, class_names, drawn_ignored, step=0)
        tracker.close("success")
        if tracker.active:
            console.print(f"logged to W&B project {env.wandb_project()}: {folder}")
