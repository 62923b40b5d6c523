"""`segcli list-experiments`: what each experiment changes relative to the defaults (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from segcli.cli.common import EXIT_PROBLEMS, JsonOpt, stderr_console, stdout_console
from segcli.errors import ConfigError


def _config_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return files


def _describe(value) -> str:
    """Transform lists read as `resize(height=512, width=512), horizontal_flip(p=0.5)`."""
    if isinstance(value, list) and all(isinstance(item, dict) and "name" in item for item in value):
        calls = []
        for item in value:
            params = ", ".join(f"{k}={v}" for k, v in (item.get("params") or {}).items())
            calls.append(f"{item['name']}({params})")
        return ", ".join(calls) or "[]"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def collect(paths: list[Path]) -> tuple[list[dict], list[str]]:
    """One row per experiment, and one message per file that could not be read."""
    from segcli.config.loader import flatten, load_experiment_file, resolve_experiment
    from segcli.config.naming import run_name

    rows, problems = [], []
    for file in _config_files(paths):
        try:
            parsed = load_experiment_file(file)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        for name, override in parsed.experiments.items():
            try:
                resolve_experiment(parsed, name, file)
                status = "ok"
            except ConfigError as exc:
                status = "invalid: " + str(exc).splitlines()[-1].strip()
            rows.append(
                {
                    "config": str(file),
                    "experiment": name,
                    "run_name": run_name(file, name),
                    "changes": flatten(override or {}),
                    "status": status,
                }
            )
    return rows, problems


def list_experiments(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(metavar="PATH...", help="Experiment files or folders (default: experiments/)."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """List every experiment with what it changes relative to its file's defaults.

    Exit code 0 when every experiment is valid, 1 when one is invalid, 2 when a file cannot be read.
    """
    from rich.table import Table

    rows, problems = collect(paths or [Path("experiments")])
    if json_output:
        typer.echo(json.dumps({"experiments": rows, "errors": problems}, indent=2))
    else:
        table = Table(title="experiments")
        table.add_column("config", no_wrap=True)
        table.add_column("experiment", no_wrap=True)
        table.add_column("changes vs defaults", overflow="fold")
        table.add_column("status")
        for row in rows:
            changes = "\n".join(f"{k} = {_describe(v)}" for k, v in row["changes"].items()) or "(defaults)"
            table.add_row(row["config"], row["experiment"], changes, row["status"])
        stdout_console().print(table)
        for problem in problems:
            stderr_console().print(f"error: {problem}", markup=False)
    invalid = sum(row["status"] != "ok" for row in rows)
    if invalid and not json_output:
        verb = "is" if invalid == 1 else "are"
        stderr_console().print(f"{invalid} of {len(rows)} experiments {verb} invalid (see status); train refuses them",
                               markup=False)  # fmt: skip
    if problems:
        raise typer.Exit(2)
    if invalid:
        raise typer.Exit(EXIT_PROBLEMS)
