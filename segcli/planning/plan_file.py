"""The plan as an experiment file: every planned key on one line with its reason as a comment."""

from __future__ import annotations

from typing import Any

import yaml

from segcli.planning.budget import PlannedRun
from segcli.planning.rules import Decision

COMMENT_COLUMN = 44  # comments start here when the key and value are shorter


def flow(value: Any) -> str:
    """One value as YAML on one line (flow style), as segcli's loader reads it back."""
    text = yaml.safe_dump([value], default_flow_style=True, width=2**31, sort_keys=False).strip()
    return text[1:-1]


def _line(prefix: str, reason: str) -> str:
    reason = " ".join(reason.split())
    return f"{prefix:<{COMMENT_COLUMN}}  # {reason}" if reason else prefix


def _block(decisions: list[Decision], indent: str, strip: str = "") -> list[str]:
    """One line per key; the entries of a list (transforms) under their key, one line each, in order."""
    by_key: dict[str, list[Decision]] = {}
    for decision in decisions:
        by_key.setdefault(decision.key, []).append(decision)
    lines: list[str] = []
    for key, group in by_key.items():
        name = key.removeprefix(strip)
        if name in ("train_transforms", "val_transforms"):
            lines.append(f"{indent}{name}:")
            lines += [_line(f"{indent}  - {flow(entry.value)}", entry.reason) for entry in group]
        else:
            lines += [_line(f"{indent}{name}: {flow(entry.value)}", entry.reason) for entry in group]
    return lines


def render(run: PlannedRun, name: str, header: list[str]) -> str:
    """The experiment file: header and notes as comments, then `model`, `defaults` and one experiment."""
    model = [d for d in run.decisions if d.key and d.key.startswith("model.")]
    defaults = [d for d in run.decisions if d.key and not d.key.startswith("model.")]
    lines = [f"# {line}" for line in header]
    lines += [f"# {' '.join(note.reason.split())}" for note in run.notes]
    lines += ["model:", *_block(model, "  ", strip="model."), "defaults:", *_block(defaults, "  ")]
    lines += ["experiments:", f"  {flow(name)}: {{}}", ""]
    return "\n".join(lines)
