"""`segcli evaluate`: training's metrics for a model (or an ensemble) over a whole dataset split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from segcli.cli.common import (
    BatchSizeOpt,
    CpuOpt,
    DatasetOpt,
    GpuOpt,
    JsonOpt,
    ModelsArg,
    OverlapOpt,
    ProgressReport,
    ResizeOpt,
    TileOpt,
    TtaOpt,
    fmt,
    inference_options,
    stderr_console,
    stdout_console,
)


def evaluate(
    models: ModelsArg,
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option(metavar="NAME", help="Split to score.")] = "val",
    json_output: JsonOpt = False,
    per_image: Annotated[bool, typer.Option("--per-image", help="With --json: every image's own scores too.")] = False,
    worst: Annotated[
        Optional[int],
        typer.Option(min=1, metavar="K", help="List the K images with the lowest mIoU and draw them (--worst-output)."),
    ] = None,
    worst_output: Annotated[Path, typer.Option(metavar="FILE", help="Where --worst draws its images.")] = Path(
        "worst_predictions.png"
    ),
    confusion_matrix: Annotated[
        Optional[Path],
        typer.Option("--confusion-matrix", metavar="FILE", help="Also write the row-normalised confusion matrix."),
    ] = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = 0.25,
    batch_size: BatchSizeOpt = 4,
    tta: TtaOpt = None,
    resize: ResizeOpt = None,
    label_map: Annotated[
        Optional[str],
        typer.Option(
            "--label-map",
            metavar="STORED:CLASS,...",
            help="Map these masks' stored values to the model's classes, e.g. 255:1 for 0/255 masks (added to the "
            "label map the model was trained with).",
        ),
    ] = None,
    roi: Annotated[
        Optional[Path],
        typer.Option(
            "--roi",
            metavar="DIR",
            help="Score only inside the region masks in DIR (same stems as the images, zero: outside) instead of "
            "the split's roi/ folder.",
        ),
    ] = None,
    gpu: GpuOpt = None,
    cpu: CpuOpt = False,
) -> None:
    """Per-class IoU and Dice, mIoU, mDCC and pixel accuracy over a split (class names from the model); with region
    masks (the split's roi/ or --roi), only inside them."""
    from segcli.config import env
    from segcli.data.io import never_scored_label
    from segcli.devices import inference_device
    from segcli.drawing.pictures import PREDICTION_COLUMNS, render_confusion_matrix, render_grid
    from segcli.files import save_image
    from segcli.inference.evaluate import evaluate_pairs, split_pairs
    from segcli.inference.loading import open_models

    root = env.dataset_input(dataset)  # the class names are the checkpoint's
    predictor = open_models(models, inference_device(gpu, cpu))
    if label_map is not None:
        predictor = predictor.with_label_map(parse_label_map(label_map))
    options = inference_options(batch_size, tile, overlap, tta, resize, predictor.info)
    pairs = split_pairs(predictor, root, split, roi)
    with ProgressReport(f"evaluating {split}", enabled=not json_output) as progress:
        progress.total(len(pairs))
        result = evaluate_pairs(predictor, pairs, options, split, progress.advance, keep_worst=worst or 0)
    notes = stderr_console()
    for warning in result.warnings:
        notes.print(f"warning: {warning}", markup=False)
    source = predictor.info.source
    run = source.get("run_name") or predictor.path.parent.name
    if confusion_matrix is not None:
        title = f"{run}, {predictor.path.name} ({predictor.kind}) on {split}, {result.images} images"
        save_image(confusion_matrix, render_confusion_matrix(result.matrix, result.class_names, title))
        notes.print(f"wrote {confusion_matrix}", markup=False)
    if worst:
        samples = result.worst_samples
        title = f"{run}: the {len(samples)} {split} images with the lowest mIoU"
        info = predictor.info
        ignored = never_scored_label(info.ignore_index, len(info.class_names))
        save_image(worst_output, render_grid(samples, info.class_names, ignored, PREDICTION_COLUMNS, title))
        notes.print(f"wrote {worst_output}", markup=False)
    if json_output:
        document = {"models": [str(path) for path in predictor.members], "model_kind": predictor.kind,
                    "dataset": str(root), **result.to_dict(per_image=per_image)}  # fmt: skip
        if worst:
            document["worst"] = [score.name for score in result.worst(worst)]
        typer.echo(json.dumps(document, indent=2, allow_nan=False))
        return
    _print_table(result, predictor, root, worst)


def parse_label_map(text: str) -> dict[int, int]:
    """`255:1` or `7:0,8:1,0:255` -> {stored value: class}."""
    from segcli.config.schema import MAX_LABEL
    from segcli.errors import ConfigError

    mapping = {}
    for pair in text.split(","):
        stored, _, label = pair.strip().partition(":")
        if not (stored.isdigit() and label.isdigit() and int(stored) <= MAX_LABEL and int(label) <= MAX_LABEL):
            raise ConfigError(
                f"--label-map {text}: write STORED:CLASS pairs of labels 0..{MAX_LABEL}, separated by commas, "
                "e.g. --label-map 255:1"
            )
        mapping[int(stored)] = int(label)
    return mapping


def _print_table(result, predictor, root: Path, worst: int | None) -> None:
    from rich.table import Table

    s = result.split
    pixels = result.matrix.sum(1).tolist()
    own = result.at_image_size
    console = stdout_console()
    console.print(f"{predictor.kind} {predictor.path} on {root / s}: {result.images} images")
    console.print(f"scored as validation scored them ({result.scored_as})")
    absent = any(result.metrics[f"{s}/IoU/{name}"] != result.metrics[f"{s}/IoU/{name}"] for name in result.class_names)
    table = Table(
        caption="-: class absent from both targets and predictions (left out of the means)" if absent else None
    )
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Dice", justify="right")
    table.add_column("pixels", justify="right")
    if own is not None:
        table.add_column("IoU at image size", justify="right")
    for index, name in enumerate(result.class_names):
        cells = [fmt(result.metrics[f"{s}/IoU/{name}"]), fmt(result.metrics[f"{s}/Dice/{name}"]), f"{pixels[index]:,}"]
        if own is not None:
            cells.append(fmt(own.metrics[f"{s}/IoU/{name}"]))
        table.add_row(name, *cells)
    table.add_section()
    # A binary model's headline is the foreground's IoU and Dice (README), not a mean over both classes.
    foreground = result.class_names[1] if predictor.info.binary else None
    headline = f"{foreground} (binary headline: mIoU, mDCC)" if foreground else "mean"
    mean = [fmt(result.metrics[f"{s}/mIoU"]), fmt(result.metrics[f"{s}/mDCC"]), f"{sum(pixels):,}"]
    table.add_row(headline, *mean, *([fmt(own.metrics[f"{s}/mIoU"])] if own is not None else []))
    console.print(table)
    ignored = "" if result.ignore_index is None else f"; label {result.ignore_index} ignored"
    meaning = f" (binary: the {foreground} IoU and Dice)" if foreground else ""
    console.print(
        f"mIoU {fmt(result.metrics[f'{s}/mIoU'])}  mDCC {fmt(result.metrics[f'{s}/mDCC'])}{meaning}  "
        f"pixel accuracy {fmt(result.metrics[f'{s}/pixel_accuracy'])}{ignored}"
    )
    if own is not None:
        console.print(
            f"at the images' own size ({own.model_input}): mIoU {fmt(own.metrics[f'{s}/mIoU'])}  "
            f"mDCC {fmt(own.metrics[f'{s}/mDCC'])}  pixel accuracy {fmt(own.metrics[f'{s}/pixel_accuracy'])}"
        )
    if worst:
        ranked = Table(title=f"the {worst} images with the lowest mIoU")
        ranked.add_column("image")
        ranked.add_column("mIoU", justify="right")
        for score in result.worst(worst):
            ranked.add_row(score.name, fmt(score.mIoU))
        console.print(ranked)
