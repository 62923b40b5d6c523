"""Charts (matplotlib, without pyplot's global state, so they can be drawn on the writer thread).

matplotlib is the one well-kept plotting library every segmentation user already has; drawing curves
with PIL by hand would be more code and less legible. Figures are returned unsaved: the caller writes
them atomically (`segcli.files.save_image`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from segcli.drawing.colours import palette

STAGE_STYLES = {"train": ("tab:blue", "-"), "val": ("tab:orange", "-"), "val_ema": ("tab:green", "--")}


def _series(rows: Sequence[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["epoch"], row[key]) for row in rows if key in row and row[key] is not None]
    points = [(epoch, value) for epoch, value in points if not math.isnan(value)]
    return [p[0] for p in points], [p[1] for p in points]


def _wide(values: Sequence[float]) -> bool:
    """Positive values spanning more than a factor 20: better read on a log scale."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20


def results_chart(
    rows: Sequence[Mapping[str, float]], best_epoch: int | None, title: str, average: Mapping[str, float] | None = None
) -> Figure:
    """Loss, mIoU, mDCC (train, val, EMA when present) and the learning rate per epoch; best epoch marked; the
    SWA average's scores (`val_avg/*`, measured once at the end) as a star at the last epoch."""
    average = average or {}
    figure = Figure(figsize=(11, 7))
    # Fixed margins instead of a layout engine, whose measuring pass was half of the chart's drawing time (0.4 s
    # here, drawn at the end of a run and every 30 s during it); wide enough for tick labels such as 0.00100.
    axes = figure.subplots(2, 2, gridspec_kw={"left": 0.065, "right": 0.985, "bottom": 0.075, "top": 0.885,
                                              "wspace": 0.17, "hspace": 0.34})  # fmt: skip
    panels = [("loss", axes[0][0], True), ("mIoU", axes[0][1], False), ("mDCC", axes[1][0], False)]
    for metric, ax, is_loss in panels:
        plotted = []
        for stage, (colour, style) in STAGE_STYLES.items():
            epochs, values = _series(rows, f"{stage}/{metric}")
            if epochs:
                ax.plot(epochs, values, style, color=colour, marker="o", markersize=3, label=stage)
                plotted += values
        if f"val_avg/{metric}" in average and rows and not math.isnan(average[f"val_avg/{metric}"]):
            ax.plot([rows[-1]["epoch"]], [average[f"val_avg/{metric}"]], "*", color="tab:purple", markersize=12,
                    label="average_model")  # fmt: skip
        ax.set_title(metric + (" (lower is better)" if is_loss else ""))
        if not is_loss:
            ax.set_ylim(0, 1)
        elif _wide(plotted):  # one wild early val loss must not flatten every later epoch into a line
            ax.set_yscale("log")
    lr_axis = axes[1][1]
    epochs, values = _series(rows, "lr")
    if epochs:
        lr_axis.plot(epochs, values, color="tab:gray", marker="o", markersize=3)
        if _wide(values):
            lr_axis.set_yscale("log")
    lr_axis.set_title("learning rate")
    for ax in (*(p[1] for p in panels), lr_axis):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:red", alpha=0.4, linestyle=":", label=f"best (epoch {best_epoch})")
        if ax is not lr_axis and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def per_class_chart(scores: Mapping[str, float], title: str) -> Figure:
    """IoU per class as horizontal bars, best on top, in the classes' own colours; NaN classes listed as absent."""
    names = list(scores)
    colours = {name: tuple(c / 255 for c in colour) for name, colour in zip(names, palette(len(names)), strict=True)}
    present = sorted((name for name in names if not math.isnan(scores[name])), key=lambda name: scores[name])
    absent = [name for name in names if math.isnan(scores[name])]
    figure = Figure(figsize=(7, 1.2 + 0.32 * max(len(names), 1)), layout="constrained")
    ax = figure.subplots()
    bars = ax.barh(present, [scores[name] for name in present], color=[colours[name] for name in present],
                   edgecolor="black", linewidth=0.5)  # fmt: skip
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("IoU")
    ax.grid(axis="x", alpha=0.3)
    if absent:
        title += f"\nabsent (NaN, left out of the mean): {', '.join(absent)}"
    ax.set_title(title, fontsize=10)
    return figure


def lr_finder_chart(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None, title: str) -> Figure:
    """Loss against learning rate (log scale), the suggested rate marked."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    ax.plot(lrs, losses, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3, which="both")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.2e}")
        ax.legend()
    ax.set_title(title)
    return figure


def figure_image(figure: Figure) -> Image.Image:
    """A figure as a picture (what the trackers log)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
