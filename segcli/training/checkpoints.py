"""segcli's `.pth` files: weights plus the metadata needed to rebuild the model, written atomically.

Every value is a tensor or plain Python data, so `torch.load(weights_only=True)` reads them.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from segcli.errors import CheckpointError, StorageError

FORMAT = "segcli-checkpoint"
FORMAT_VERSION = 1
LATEST, BEST, AVERAGE = "ckpt_latest.pth", "ckpt_best.pth", "average_model.pth"
STATE = "state_latest.ckpt"  # the full training state (Lightning's format) that --resume continues from


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(
                f"disk full while writing {path}; the previous file is intact. Free space, then continue "
                "with `segcli train ... --resume`"
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def load_tagged(path: Path, expected_format: str, what: str, written_by: str) -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a dict whose "format" is `expected_format`: never unpickled code."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and corrupt files have many types
        raise CheckpointError(
            f"{path}: not a readable {what} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise CheckpointError(f"{path}: not a {what} (expected a file written by `{written_by}`)")
    return payload


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a segcli checkpoint safely; anything else is a clear error."""
    return load_tagged(path, FORMAT, "segcli checkpoint", "segcli train")


def checkpoint_payload(
    state_dict: dict[str, torch.Tensor],
    task,
    *,
    epoch: int,
    global_step: int,
    normalization: dict[str, list[float]],
    size_multiple: int,
    run_name: str,
    metrics: dict[str, float],
    kind: str,
) -> dict[str, Any]:
    experiment = task.experiment
    monitor = experiment.monitor.metric
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "state_dict": {key: value.detach().cpu().clone() for key, value in state_dict.items()},
        "arch": experiment.model.arch,
        "encoder_name": experiment.model.encoder_name,
        "in_channels": experiment.model.in_channels,
        "classes": experiment.model.classes,
        "model_params": dict(experiment.model.params),
        "class_names": list(task.class_names),
        "ignore_index": experiment.ignore_index,
        "normalization": normalization,
        "size_multiple": size_multiple,
        "epoch": epoch,
        "global_step": global_step,
        "metric": {"name": monitor, "value": metrics.get(monitor, float("nan"))},
        "metrics": metrics,
        "run_name": run_name,
        "experiment": experiment.model_dump(mode="json"),
    }
