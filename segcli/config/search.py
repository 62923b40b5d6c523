"""The `search:` block of an experiment file, checked against one experiment before `segcli tune` starts.

Each key is a key path exactly as `--set` takes it (`lr`, `model.encoder_name`, `loss.terms.1.weight`), and
each trial is the experiment with the sampled values set through the same code (`resolve_experiment`). So
the check sets every value a key can take (both ends of a range and a value inside it, every choice) and
validates the result: whatever it finds is one line naming the key and the fix. Pydantic only, no Optuna.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from segcli.config.distribution import SearchDistribution
from segcli.config.loader import experiment_or_problems, problems_message, resolve_experiment
from segcli.config.schema import ExperimentFile
from segcli.errors import ConfigError

SEARCH = "search."
"""How error messages name a search key (`search.lr`), like `--set` keys are named `command-line option lr`."""

EXAMPLE = "search: {lr: {log_uniform: [1e-4, 1e-2]}, model.encoder_name: {choice: [resnet18, resnet34]}}"


def check_search(file: ExperimentFile, name: str, path: Path) -> dict[str, SearchDistribution]:
    """The file's search block, every key checked against experiment `name`; one ConfigError naming every
    problem (a single problem is a single line)."""
    if not file.search:
        raise ConfigError(f"{path}: no `search:` block; add the keys to tune and their values, e.g. {EXAMPLE}")
    current = resolve_experiment(file, name, path).model_dump(mode="json")  # the experiment itself must be valid
    problems = [line for key, space in file.search.items() for line in _problems(file, name, path, key, space, current)]
    if problems:
        raise ConfigError(problems_message(path, problems, "the search block"))
    return dict(file.search)


def probe_values(space: SearchDistribution) -> list[Any]:
    """Values that show whether a key takes what the search gives it: both ends of a range and, for a float
    range, a value inside that is not a whole number (a key of whole numbers refuses it), or every choice."""
    if space.choice is not None:
        return list(space.choice)
    low, high = space.bounds
    if space.integer is not None:
        return [low, high]
    inside = math.sqrt(low * high) if space.log_uniform is not None else (low + high) / 2
    if inside == int(inside):
        inside = inside + 0.5 if inside + 0.5 < high else (low + inside) / 2
    return [low, high, inside]


def _problems(
    file: ExperimentFile, name: str, path: Path, key: str, space: SearchDistribution, current: dict[str, Any]
) -> list[str]:
    found, value = _lookup(current, key)
    if space.bounds is not None and found and value is not None and not _is_number(value):
        return [
            f"{path}: {SEARCH}{key}: {{{space.kind}: [...]}} samples numbers but {key} is {value!r}; "
            f"search other values with {{choice: [...]}}"
        ]
    for probe in probe_values(space):
        lines = experiment_or_problems(file, name, path, {key: probe}, origin=SEARCH)
        if isinstance(lines, list):
            return [line + _hint(line, probe) for line in lines]
    return []


def _hint(line: str, probe: Any) -> str:
    if "unknown key" in line or "is a list" in line:
        return ""  # the key itself is wrong, whatever its value
    whole = " (search whole numbers with {int: [low, high]})" if "valid integer" in line else ""
    return f"{whole} (value tried: {probe!r})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _lookup(data: Any, key: str) -> tuple[bool, Any]:
    """(found, value) at a key path through mappings and lists."""
    for part in key.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return False, None
    return True, data
