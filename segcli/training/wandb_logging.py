"""Weights & Biases: offline unless a key is configured, sample images, live checkpoint sync."""

from __future__ import annotations

import netrc
import os
from collections.abc import Sequence
from pathlib import Path

from segcli.data.samples import Sample


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(offline: bool) -> str:
    """--offline wins, then WANDB_MODE; with no API key the run is offline (`wandb sync` it later)."""
    if offline:
        return "offline"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_api_key() else "offline"


def wandb_images(samples: Sequence[Sample], class_names: Sequence[str], ignore_index: int | None) -> list:
    """wandb.Image objects with the mask as an overlay; W&B shows the class names as its legend."""
    import wandb

    labels = {index: name for index, name in enumerate(class_names)}
    if ignore_index is not None and ignore_index not in labels:
        labels[ignore_index] = "ignored"
    return [
        wandb.Image(s.image, caption=s.name, masks={"ground_truth": {"mask_data": s.mask, "class_labels": labels}})
        for s in samples
    ]


def sync_file_live(run, path: Path) -> None:
    """Upload `path` now and again whenever it changes (a link in the run folder, not an artifact copy)."""
    run.save(str(path), base_path=str(path.parent), policy="live")
