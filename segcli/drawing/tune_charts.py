"""The pictures of a `segcli tune` study: the optimisation history, the metric against each parameter, and the
parameters' importances. Drawn from plain trial rows (number, state, params, best), so the study's folder
alone redraws them; pruned trials are shown at the best value they reached, hollow."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

STYLES = {"complete": {"marker": "o", "color": "tab:blue"}, "pruned": {"marker": "o", "color": "tab:orange"}}


def _scored(rows: Sequence[Any]) -> list[Any]:
    return [row for row in rows if row.state in STYLES and row.best is not None and not math.isnan(row.best)]


def _scatter(ax, rows: Sequence[Any], x_of) -> None:
    for state, style in STYLES.items():
        chosen = [row for row in rows if row.state == state]
        if chosen:
            face = style["color"] if state == "complete" else "none"
            ax.scatter([x_of(row) for row in chosen], [row.best for row in chosen], marker=style["marker"], s=36,
                       facecolors=face, edgecolors=style["color"], label=state, zorder=3)  # fmt: skip


def history_chart(rows: Sequence[Any], metric: str, direction: str, title: str) -> Figure:
    """Each trial's best metric by trial number, and the best completed trial so far."""
    figure = Figure(figsize=(8, 4.8), layout="constrained")
    ax = figure.subplots()
    scored = _scored(rows)
    _scatter(ax, scored, lambda row: row.number)
    complete = sorted((row for row in scored if row.state == "complete"), key=lambda row: row.number)
    best, steps = None, []
    for row in complete:
        better = best is None or (row.best > best if direction == "maximize" else row.best < best)
        best = row.best if better else best
        steps.append((row.number, best))
    if steps:
        last = max(row.number for row in rows)
        ax.step([n for n, _ in steps] + [last], [b for _, b in steps] + [steps[-1][1]], where="post", color="tab:red",
                label="best completed so far")  # fmt: skip
    failed = sum(row.state == "failed" for row in rows)
    counts = ", ".join(f"{sum(row.state == s for row in rows)} {s}" for s in ("complete", "pruned") if rows)
    ax.set_title(f"{title}: best {metric} of each trial ({counts}{f', {failed} failed' if failed else ''})")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best {metric}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if scored:
        ax.legend(fontsize=8)
    return figure


def slices_chart(rows: Sequence[Any], spaces: Mapping[str, Any], metric: str, title: str) -> Figure:
    """The best metric of each trial against each searched parameter (log axes for log-uniform ones)."""
    keys = list(spaces)
    columns = min(3, max(1, len(keys)))
    lines = math.ceil(len(keys) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.6 * lines), layout="constrained")
    axes = figure.subplots(lines, columns, squeeze=False)
    scored = _scored(rows)
    for index, key in enumerate(keys):
        ax = axes[index // columns][index % columns]
        space = spaces[key]
        with_key = [row for row in scored if key in row.params]
        if space.choice is not None:
            positions = {repr(choice): position for position, choice in enumerate(space.choice)}
            _scatter(ax, with_key, lambda row, key=key, positions=positions: positions[repr(row.params[key])])
            ax.set_xticks(range(len(space.choice)), [str(choice) for choice in space.choice])
            ax.set_xlim(-0.5, len(space.choice) - 0.5)
        else:
            _scatter(ax, with_key, lambda row, key=key: row.params[key])
            if space.log_uniform is not None:
                ax.set_xscale("log")
            ax.set_xlim(*space.bounds)  # where the trials sit in the searched range
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {metric}")
        ax.grid(alpha=0.3)
        if index == 0 and with_key:
            ax.legend(fontsize=8)
    for index in range(len(keys), lines * columns):
        axes[index // columns][index % columns].set_visible(False)
    figure.suptitle(f"{title}: best {metric} against each parameter")
    return figure


def importances_chart(importances: Mapping[str, float], metric: str, title: str) -> Figure:
    """Optuna's importance of each parameter for the metric (they sum to 1), most important on top."""
    names = sorted(importances, key=lambda name: importances[name])
    figure = Figure(figsize=(7, 1.4 + 0.45 * max(len(names), 1)), layout="constrained")
    ax = figure.subplots()
    bars = ax.barh(names, [importances[name] for name in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"importance for {metric} (completed trials)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{title}: parameter importances", fontsize=10)
    return figure
