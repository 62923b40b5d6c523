"""`segcli benchmark`: loader, model, real training step and a bare loop, side by side."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from segcli.cli.common import (
    ClassesOpt,
    DatasetOpt,
    ExperimentOpt,
    IgnoreIndexOpt,
    JsonOpt,
    OptionalConfigOpt,
    resolve_experiment_option,
    stdout_console,
)

DEFAULT_MODEL = {"arch": "Unet", "encoder_name": "resnet18", "encoder_weights": None}


def benchmark(
    config: OptionalConfigOpt = None,
    experiment: ExperimentOpt = None,
    dataset: DatasetOpt = None,
    classes: ClassesOpt = None,
    ignore_index: IgnoreIndexOpt = None,
    steps: Annotated[
        int, typer.Option(min=1, metavar="N", help="Timed steps per section (after 3 warm-up steps).")
    ] = 10,
    cpu: Annotated[bool, typer.Option("--cpu", help="Benchmark on the CPU even when a GPU is present.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Where training time goes: images/s of the loader, the model, `segcli train`'s step and a bare loop.

    Without --config it measures Unet/resnet18 from scratch with the default settings.
    """
    from rich.table import Table

    from segcli.config import env
    from segcli.config.schema import Experiment

    inputs = env.data_inputs(dataset, classes)
    root, class_names = inputs.dataset, inputs.class_names
    resolved = resolve_experiment_option(config, experiment)
    if resolved is not None:
        name = f"{config.stem}-{experiment}"
    else:
        model = {**DEFAULT_MODEL, "classes": len(class_names)}
        resolved = Experiment.model_validate({"model": model, "ignore_index": ignore_index})
        name = "default"

    from segcli.training.benchmark import run_benchmark

    result = run_benchmark(resolved, dataset=root, class_names=class_names, name=name, force_cpu=cpu, steps=steps)
    if json_output:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"benchmark: {result['arch']}, batch {result['batch_size']}, {result['machine']['device']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for section, rate in result["images_per_s"].items():
        table.add_row(f"{section} images/s", f"{rate:.2f}")
    for ratio, value in result["ratios"].items():
        table.add_row(ratio.replace("_", " "), f"{value:.3f}")
    table.add_row(
        "metric update",
        f"{result['metric_update_ms']:.3f} ms ({100 * result['metric_update_share_of_step']:.2f}% of a step)",
    )
    table.add_row("peak RSS", f"{result['peak_rss_mb']:.0f} MB")
    if result["gpu_peak_allocated_mb"] is not None:
        table.add_row("GPU peak allocated", f"{result['gpu_peak_allocated_mb']:.0f} MB")
        table.add_row("GPU utilisation", f"{result['gpu_utilization_percent']}%")
    table.add_row("precision / channels_last", f"{result['precision']} / {result['channels_last']}")
    whole = result["whole_run"]
    if whole:
        table.add_section()
        table.add_row("whole run (2 epochs)", f"{whole['total_seconds']:.1f} s")
        table.add_row("start-up until the first step", f"{whole['startup_seconds']:.1f} s")
        table.add_row("one epoch (steps + validation)", f"{whole['epoch_seconds']:.1f} s")
        table.add_row(
            "epoch end (checkpoints, report, logging)",
            f"{whole['epoch_end_seconds']:.2f} s ({100 * whole['epoch_end_share_of_epoch']:.1f}% of an epoch)",
        )
        table.add_row("after the last epoch (SWA, worst images)", f"{whole['finish_seconds']:.1f} s")
    stdout_console().print(table)
