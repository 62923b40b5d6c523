"""`segcli validate-dataset`: every dataset problem in one pass, for people (tables) or scripts (--json)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from segcli.cli.common import (
    EXIT_PROBLEMS,
    ClassesOpt,
    DatasetOpt,
    ExperimentOpt,
    IgnoreIndexOpt,
    JsonOpt,
    OptionalConfigOpt,
    ProgressReport,
    resolve_experiment_option,
    stdout_console,
)

LINES_PER_KIND = 10


def validate_dataset(
    dataset: DatasetOpt = None,
    classes: ClassesOpt = None,
    ignore_index: IgnoreIndexOpt = None,
    config: OptionalConfigOpt = None,
    experiment: ExperimentOpt = None,
    split: Annotated[
        Optional[list[str]],
        typer.Option("--split", metavar="NAME", help="Split to check (repeatable). Default: train and val."),
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(min=1, metavar="N", help="Files decoded in parallel. Default: the CPU count.")
    ] = None,
    json_output: JsonOpt = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1).")] = False,
) -> None:
    """Check a dataset: pairs, readability, sizes, mask channels and values, bit depth, class frequencies.

    With -c FILE -e NAME, `ignore_index` and `label_map` come from the experiment (and, without
    CLASS_NAMES, as many class names as its model has). Exit code 0 when clean, 1 when problems were
    found, 2 for usage errors.
    """
    from segcli.config import env
    from segcli.data.checks import check_dataset

    resolved = resolve_experiment_option(config, experiment)
    label_map, count = None, None
    if resolved is not None:
        ignore_index = resolved.ignore_index if ignore_index is None else ignore_index
        label_map = resolved.label_map
        count = 2 if resolved.model.classes == 1 else resolved.model.classes
    inputs = env.data_inputs(dataset, classes, default_count=count)
    root, class_names = inputs.dataset, inputs.class_names
    splits = split or ["train", "val"]
    with ProgressReport("checking", enabled=not json_output, unit="pairs") as progress:
        report = check_dataset(
            root, splits, class_names, ignore_index, workers,
            on_total=progress.total, on_pair=progress.advance, label_map=label_map,
        )  # fmt: skip
    failed = bool(report.errors or (strict and report.warnings))
    if json_output:
        typer.echo(json.dumps({"ok": not failed, **report.to_dict()}, indent=2))
    else:
        _print_report(report, failed)
    raise typer.Exit(EXIT_PROBLEMS if failed else 0)


def _print_report(report, failed: bool) -> None:
    from rich.table import Table

    from segcli.data.check_report import count_errors, group_problems

    console = stdout_console()
    pairs = ", ".join(f"{split}: {stats.pairs} pairs" for split, stats in report.splits.items())
    console.print(f"[bold]{report.root}[/bold]  ({pairs})", highlight=False)

    groups = group_problems(report.problems)
    if groups:
        table = Table(title="problems", show_lines=True)
        table.add_column("kind", no_wrap=True)
        table.add_column("count", justify="right")
        table.add_column("where and what", overflow="fold")
        for group in groups:
            # The causes and their fixes first, whole; then the files, cut after LINES_PER_KIND.
            files = [f"{p.split}/{p.file}: {p.detail}" for p in group.files]
            if group.kind == "mask-values":
                files = _value_summary(report) + files
            shown = files[:LINES_PER_KIND]
            if len(files) > LINES_PER_KIND:
                shown.append(f"... and {len(files) - LINES_PER_KIND} more")
            style = "red" if group.severity == "error" else "yellow"
            count = len(group.files) or len(group.causes)
            table.add_row(f"[{style}]{group.kind}[/{style}]", str(count), "\n".join(group.causes + shown))
        console.print(table)

    frequencies = Table(title="class pixel frequencies")
    frequencies.add_column("label", justify="right")
    frequencies.add_column("class")
    for split in report.splits:
        frequencies.add_column(split, justify="right")
    stats_of = list(report.splits.values())

    def shares(pixels) -> list[str]:
        """Each split's `pixels(stats)` as a share of all its mask pixels (values that are no class included)."""
        return [f"{100 * pixels(stats) / (stats.mask_pixels or 1):.2f}%" for stats in stats_of]

    for index, name in enumerate(report.class_names):
        frequencies.add_row(str(index), name, *shares(lambda stats, index=index: stats.class_pixels[index]))
    if report.ignore_index is not None:
        frequencies.add_row(str(report.ignore_index), "(ignored)", *shares(lambda stats: stats.ignored_pixels))
    if any(stats.unknown_pixels for stats in stats_of):
        unknown = sorted({value for stats in stats_of for value in stats.bad_values})
        values = ", ".join(map(str, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        frequencies.add_row(values, "(not a class)", *shares(lambda stats: stats.unknown_pixels))
    console.print(frequencies)

    for split, stats in report.splits.items():
        sizes = ", ".join(f"{w}x{h} x{n}" for (h, w), n in stats.image_sizes.most_common(5))
        more = f" (+{len(stats.image_sizes) - 5} more sizes)" if len(stats.image_sizes) > 5 else ""
        console.print(f"{split} image sizes (WxH): {sizes or '-'}{more}", highlight=False)
        if stats.dtype:
            console.print(f"{split} pixels: {_depth(stats)}", highlight=False)

    warnings = len(group_problems(report.warnings))
    if failed:
        console.print(f"[red bold]{count_errors(report.errors)}, {warnings} warning(s)[/red bold]", highlight=False)
    else:
        console.print(f"[green bold]OK[/green bold]: no errors, {warnings} warning(s)", highlight=False)


def _value_summary(report) -> list[str]:
    """'value 255: in 12 files (a.png, b.png, ...)' per split, before the per-file lines."""
    lines = []
    for split, stats in report.splits.items():
        for value, (files, names) in sorted(stats.bad_values.items()):
            lines.append(f"{split}: value {value} in {files} file(s), e.g. {', '.join(names)}")
    return lines


def _depth(stats) -> str:
    """'uint16, max 4095: 12-bit data; mean/std per channel 0.213/0.051' (what normalize: dataset would use)."""
    text = stats.dtype
    if stats.bits_used is not None:
        text += f", max {stats.max_value:g}: {stats.bits_used}-bit data"
    elif stats.dtype.startswith("float"):
        text += f", max {stats.max_value:g}"
    measured = stats.channel_mean_std(stats.max_pixel_value())
    if measured:
        pairs = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(*measured, strict=True))
        text += f"; mean/std per channel (0..1 scale) {pairs}"
    return text
