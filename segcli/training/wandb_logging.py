"""Weights & Biases: offline unless a key is configured, sample images, live checkpoint sync."""

from __future__ import annotations

import netrc
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segcli.data.io import Pair, read_image, read_mask


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


def sample_images(
    pairs: Sequence[Pair],
    class_names: Sequence[str],
    ignore_index: int | None,
    count: int,
    seed: int,
    in_channels: int = 3,
):
    """`count` seeded random pairs as wandb.Image objects with the mask as an overlay and class legend."""
    import wandb

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    labels = {index: name for index, name in enumerate(class_names)}
    if ignore_index is not None and ignore_index not in labels:
        labels[ignore_index] = "ignored"
    images = []
    for index in sorted(int(i) for i in chosen):
        pair = pairs[index]
        image, mask = read_image(pair.image, in_channels), read_mask(pair.mask)
        images.append(
            wandb.Image(
                image, caption=pair.image.name, masks={"ground_truth": {"mask_data": mask, "class_labels": labels}}
            )
        )
    return images


def sync_file_live(run, path: Path) -> None:
    """Upload `path` now and again whenever it changes (a link in the run folder, not an artifact copy)."""
    run.save(str(path), base_path=str(path.parent), policy="live")
