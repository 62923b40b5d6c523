"""Several experiments one after another (`-e all`, `-e A -e B`): a failure is reported, the others still run.

Under several processes (DDP) every process runs the same loop, so each experiment's Trainer finds all
of its peers; only the first process reports.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

from segcli.errors import SegcliError
from segcli.training.finish import TrainResult


@dataclass
class SweepOutcome:
    name: str
    result: TrainResult | None
    error: str | None = None
    """One line: what failed (a user error's message, or "unexpected error" for a bug)."""


def run_sweep(
    names: list[str],
    run_one: Callable[[str], TrainResult],
    *,
    on_start: Callable[[str, int, int], None] = lambda name, index, total: None,
    on_failure: Callable[[str, str], None] = lambda name, message: None,
) -> list[SweepOutcome]:
    """Run every experiment; `on_failure(name, message)` gets a user error's message or a bug's traceback."""
    outcomes = []
    for index, name in enumerate(names):
        on_start(name, index, len(names))
        try:
            outcomes.append(SweepOutcome(name, run_one(name)))
        except SegcliError as exc:
            on_failure(name, f"error: experiment {name}: {exc}")
            outcomes.append(SweepOutcome(name, None, str(exc).splitlines()[0]))
        except Exception:  # a bug in one run must not cost the others; its traceback is reported
            on_failure(name, traceback.format_exc())
            outcomes.append(SweepOutcome(name, None, "unexpected error (traceback above)"))
    return outcomes
