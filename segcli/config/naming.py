"""Run names: `<config-file-stem>-<experiment>[-set<hash>]`, and the names of k-fold and tune trial runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def override_suffix(overrides: dict[str, Any]) -> str:
    """A short stable tag for a run name, so runs with different --set values do not collide."""
    if not overrides:
        return ""
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()
    return f"-set{digest[:6]}"


def run_name(config: Path, experiment: str, overrides: dict[str, Any] | None = None) -> str:
    return f"{config.stem}-{experiment}{override_suffix(overrides or {})}"


def fold_run_name(run: str, fold: int) -> str:
    """1-based, like every count segcli shows: `<run>-fold1` .. `<run>-foldK`."""
    return f"{run}-fold{fold}"


def kfold_folder_name(run: str) -> str:
    return f"{run}-kfold"


def trial_run_name(study: str, number: int) -> str:
    """Optuna's trial number, as the study database, Optuna's own tools and tune_results.csv show it."""
    return f"{study}-trial{number:03d}"
