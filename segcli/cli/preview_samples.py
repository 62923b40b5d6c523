"""`segcli preview-samples`: a PNG grid of seeded samples (image, mask, overlay) with a class legend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from segcli.cli.options import ClassesOpt, DatasetOpt, IgnoreIndexOpt
from segcli.errors import ConfigError, DatasetError


def preview_samples(
    dataset: DatasetOpt = None,
    classes: ClassesOpt = None,
    split: Annotated[str, typer.Option(help="Split to sample from.")] = "train",
    count: Annotated[int, typer.Option("-n", "--count", min=1, help="Number of samples.")] = 4,
    seed: Annotated[int, typer.Option(help="Same seed, same samples (and augmentations).")] = 0,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Experiment file, for --augmented.")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", "-e", help="Experiment name.")] = None,
    augmented: Annotated[
        bool, typer.Option("--augmented", help="Show the experiment's train transforms applied (what the model sees).")
    ] = False,
    ignore_index: IgnoreIndexOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path("preview.png"),
    wandb: Annotated[bool, typer.Option("--wandb", help="Also log the samples to the W&B project.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Keep the W&B run offline.")] = False,
) -> None:
    """Write a picture of random samples with their masks and a legend of every class."""
    from segcli import env
    from segcli.data.checks import check_dataset_cached, format_problems
    from segcli.data.io import list_pairs
    from segcli.data.samples import choose_pairs, load_samples
    from segcli.data.visualize import render_grid

    env.load_env_file()
    root = env.dataset_path(dataset)
    class_names = env.class_names(classes)
    resolved = None
    if config is not None or experiment is not None:
        if config is None or experiment is None:
            raise ConfigError("--config and --experiment go together: name the experiment file and the experiment")
        from segcli.config.loader import load_experiment_file, resolve_experiment

        resolved = resolve_experiment(load_experiment_file(config), experiment, config)
        if ignore_index is None:
            ignore_index = resolved.ignore_index
    if augmented and resolved is None:
        raise ConfigError(
            "--augmented shows an experiment's train transforms: also pass --config FILE --experiment NAME"
        )

    report = check_dataset_cached(root, [split], class_names, ignore_index)
    if report.errors:
        raise DatasetError(f"split '{split}' of {root} failed the dataset check:\n{format_problems(report.errors)}")
    pairs = list_pairs(root, split)
    channels = resolved.model.in_channels if resolved else 3
    pipeline = mean_std = None
    if augmented:
        from segcli.data.transforms import build_pipeline, normalization

        specs = resolved.train_transforms
        pipeline = build_pipeline(specs, f"experiment '{experiment}': train_transforms", channels, False, seed)
        mean_std = normalization(specs, channels)
    samples = load_samples(choose_pairs(pairs, count, seed), channels, pipeline, mean_std)

    output.parent.mkdir(parents=True, exist_ok=True)
    render_grid(samples, class_names, ignore_index).save(output)
    console = Console()
    console.print(f"wrote {output} ({len(samples)} samples from {root}/{split})", highlight=False)
    if wandb:
        import wandb as wandb_sdk

        from segcli.training.wandb_logging import wandb_images, wandb_mode

        project = env.wandb_project()
        with wandb_sdk.init(project=project, job_type="preview", mode=wandb_mode(offline), dir=".") as run:
            run.log({f"samples/{split}": wandb_images(samples, class_names, ignore_index)})
            console.print(f"logged to W&B project {project}: {run.dir}", highlight=False)
