"""`evaluate_split()`: a model over a whole dataset split, scored with training's own metric code.

The predictions come from the same inference core `predict` uses, in the same order and batches; the
scores come from `segcli.training.metrics` (one confusion matrix over the split, ignore_index left out,
absent classes NaN and out of the means), so the numbers are those training logs for that split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segcli.data.io import Pair, list_pairs, read_image, read_mask
from segcli.errors import DatasetError
from segcli.inference import InferenceOptions, Predictor, json_number, same_size_batches


@dataclass
class Evaluation:
    split: str
    images: int
    class_names: list[str]
    ignore_index: int | None
    matrix: Any
    """K x K int64 tensor: rows target class, columns predicted class."""
    metrics: dict[str, float]
    """training's keys: `<split>/mIoU`, `<split>/mDCC`, `<split>/pixel_accuracy`, `<split>/IoU/<class>`, ..."""

    def to_dict(self) -> dict[str, Any]:
        s = self.split
        pixels = self.matrix.sum(1).tolist()
        return {
            "split": s,
            "images": self.images,
            "class_names": self.class_names,
            "ignore_index": self.ignore_index,
            "mIoU": json_number(self.metrics[f"{s}/mIoU"]),
            "mDCC": json_number(self.metrics[f"{s}/mDCC"]),
            "pixel_accuracy": json_number(self.metrics[f"{s}/pixel_accuracy"]),
            "per_class": {
                name: {
                    "IoU": json_number(self.metrics[f"{s}/IoU/{name}"]),
                    "Dice": json_number(self.metrics[f"{s}/Dice/{name}"]),
                    "pixels": pixels[index],
                }
                for index, name in enumerate(self.class_names)
            },
            "metrics": {key: json_number(value) for key, value in self.metrics.items()},
            "confusion_matrix": self.matrix.tolist(),
        }


def evaluate_split(
    predictor: Predictor,
    root: Path,
    split: str,
    options: InferenceOptions,
    on_total: Callable[[int], None] | None = None,
    on_image: Callable[[], None] | None = None,
) -> Evaluation:
    """Check the split (as train does), predict every image and score the split as a whole."""
    from segcli.data.checks import check_dataset_cached, format_problems

    info = predictor.info
    report = check_dataset_cached(root, [split], info.class_names, info.ignore_index)
    if report.errors:
        raise DatasetError(
            f"split '{split}' of {root} failed the dataset check against the checkpoint's "
            f"{info.classes} classes (ignore_index {info.ignore_index}):\n{format_problems(report.errors)}"
        )
    # In the order `predict <root>/<split>/images` reads them, so both batch the same images together.
    pairs = sorted(list_pairs(root, split), key=lambda pair: pair.image)
    if not pairs:
        raise DatasetError(f"split '{split}' of {root} has no image/mask pairs")
    if on_total:
        on_total(len(pairs))
    return evaluate_pairs(predictor, pairs, options, split, on_image)


def evaluate_pairs(
    predictor: Predictor,
    pairs: Sequence[Pair],
    options: InferenceOptions,
    split: str,
    on_image: Callable[[], None] | None = None,
) -> Evaluation:
    import torch

    from segcli.training.metrics import ConfusionMatrix, epoch_metrics

    info = predictor.info
    confusion = ConfusionMatrix(info.classes, info.ignore_index)

    def images() -> Iterator[tuple[Pair, np.ndarray]]:
        for pair in pairs:
            yield pair, read_image(pair.image, info.in_channels)

    for batch in same_size_batches(images(), options.batch_size):
        predictions = predictor.predict([image for _, image in batch], options)
        for (pair, _), prediction in zip(batch, predictions, strict=True):
            target = read_mask(pair.mask)
            if target.shape != prediction.shape:
                raise DatasetError(
                    f"{pair.mask}: mask is {target.shape[1]}x{target.shape[0]} but its image is "
                    f"{prediction.shape[1]}x{prediction.shape[0]} (WxH)"
                )
            confusion.update(torch.from_numpy(prediction.astype(np.int64)), torch.from_numpy(target.astype(np.int64)))
            if on_image:
                on_image()
    matrix = confusion.compute()
    return Evaluation(
        split=split,
        images=len(pairs),
        class_names=list(info.class_names),
        ignore_index=info.ignore_index,
        matrix=matrix,
        metrics=epoch_metrics(matrix, split, info.class_names),
    )


def render_confusion_matrix(matrix, class_names: Sequence[str], title: str = ""):
    """Row-normalised confusion matrix (each target class's pixels sum to 1) as a PIL image, names on both axes."""
    from PIL import Image, ImageDraw, ImageFont

    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=11)
    size = len(class_names)
    cell = 44 if size <= 20 else 22
    label_width = int(max(font.getlength(name) for name in class_names)) + 12
    header = 28
    left, top = label_width + 22, header + label_width + 22
    title = title or "confusion matrix, rows normalised"
    note = "rows: target class (pixels sum to 1), columns: predicted class; ignored pixels left out"
    width = int(max(left + size * cell + 12, left + small.getlength(note) + 12, font.getlength(title) + 16))
    height = top + size * cell + 30
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill="black", font=font)

    # Column names, written horizontally on a strip that is then rotated to run upwards.
    strip = Image.new("RGB", (label_width, size * cell), "white")
    strip_draw = ImageDraw.Draw(strip)
    for index, name in enumerate(class_names):
        strip_draw.text((label_width - 6 - font.getlength(name), index * cell + cell / 2 - 7), name, "black", font)
    canvas.paste(strip.rotate(90, expand=True), (left, header + 18))
    draw.text((left, header), "predicted class", fill="black", font=font)
    for index, name in enumerate(class_names):
        draw.text((left - 8 - font.getlength(name), top + index * cell + cell / 2 - 7), name, "black", font)
    target_label = Image.new("RGB", (int(font.getlength("target class")) + 4, 16), "white")
    ImageDraw.Draw(target_label).text((0, 0), "target class", fill="black", font=font)
    canvas.paste(target_label.rotate(90, expand=True), (4, top))

    for row in range(size):
        for column in range(size):
            value = rates[row, column]
            shade = int(255 * (1 - value))
            colour = (shade, shade + int((255 - shade) * 0.35), 255)  # white -> blue
            box = [left + column * cell, top + row * cell, left + (column + 1) * cell, top + (row + 1) * cell]
            draw.rectangle(box, fill=colour, outline=(200, 200, 200))
            if cell >= 40 and totals[row, 0] > 0:
                text = f"{value:.2f}"
                ink = "white" if value > 0.55 else "black"
                draw.text((box[0] + (cell - small.getlength(text)) / 2, box[1] + cell / 2 - 6), text, ink, small)
    draw.text((left, top + size * cell + 8), note, fill="black", font=small)
    return canvas
