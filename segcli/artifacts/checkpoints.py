"""segcli checkpoints (`.pth`: weights, the model description, the run's scores) and the full training state,
read safely: `torch.load(path, weights_only=True)`, tensors and plain values only."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segcli.artifacts.model_info import ModelInfo
from segcli.errors import CheckpointError
from segcli.files import json_number

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "segcli-checkpoint", 2


@dataclass
class Checkpoint:
    """A segcli `.pth` file: weights, the model description, and what the run measured at that epoch."""

    info: ModelInfo
    state_dict: dict[str, torch.Tensor]
    epoch: int
    """1-based: the number of completed training epochs the weights come from."""
    global_step: int
    metrics: dict[str, float]
    """These weights' own val scores, under `val/*` whatever the weights are (evaluate compares with them)."""
    run_name: str
    experiment: dict[str, Any]
    scored_as: str = "val"
    """The prefix the run logged these weights' scores under: `val` (the trained weights), `val_ema` (the EMA),
    `val_avg` (the SWA average)."""

    def payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model": self.info.to_dict(),
            "state_dict": self.state_dict,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "metrics": dict(self.metrics),
            "run_name": self.run_name,
            "experiment": self.experiment,
            "scored_as": self.scored_as,
        }

    @property
    def metric(self) -> dict[str, Any]:
        """The monitored score of these weights, named as the run logged it (`val_avg/mIoU` for the average)."""
        monitored = (self.experiment.get("monitor") or {}).get("metric", "val/mIoU")
        score = monitored.split("/", 1)[1]
        return {"name": f"{self.scored_as}/{score}", "value": json_number(self.metrics.get(f"val/{score}"))}


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive


def load_plain(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain values only, never pickled code. Anything else is one
    CheckpointError in segcli's words: torch's own (warnings about pickle protocols, advice to load with
    weights_only=False, which would run the file's code) would mislead."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4 ... please file an issue"
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and corrupt files have many types
        with path.open("rb") as stream:
            archive = stream.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if archive and not isinstance(exc, pickle.UnpicklingError):  # torch's format, cut short or damaged
            detail = str(exc).splitlines()[0].split(". ")[0][:200]
            raise CheckpointError(f"{path}: not a readable {what}: damaged or truncated ({detail})") from None
        raise CheckpointError(
            f"{path}: not a {what} (it is not a file of plain tensors; segcli never loads pickled code)"
        ) from None


def load_tagged(path: Path, expected_format: str, what: str, hint: str) -> dict[str, Any]:
    """`load_plain` of a dict whose "format" is `expected_format`."""
    payload = load_plain(path, what)
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        if isinstance(payload, dict) and isinstance(payload.get("hyper_parameters"), dict):
            raise CheckpointError(
                f"{path}: this is the full training state that `segcli train --resume` continues from, not a "
                f"model file; pass ckpt_best.pth, ckpt_latest.pth or average_model.pth from the same folder"
            )
        raise CheckpointError(f"{path}: not a {what} ({hint})")
    return payload


OLDER_SCORED_AS = {"average_model": "val_avg", "ema_model": "val_ema"}
"""Files written before checkpoints named their weights' scores: known by the file name."""


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a segcli checkpoint safely; anything else is a clear error."""
    payload = load_tagged(path, CHECKPOINT_FORMAT, "segcli checkpoint", "expected a file written by `segcli train`")
    if payload.get("format_version", 1) != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: a checkpoint of format version {payload.get('format_version', 1)}, written by a development "
            f"version of segcli; this one reads version {CHECKPOINT_VERSION}: train the model again"
        )
    kind = path.stem.removeprefix("ckpt_")
    try:
        info = ModelInfo.from_dict(payload["model"], path)
        checkpoint = Checkpoint(
            info=info,
            state_dict=payload["state_dict"],
            epoch=int(payload["epoch"]),
            global_step=int(payload.get("global_step") or 0),
            metrics={str(k): float(v) for k, v in (payload.get("metrics") or {}).items()},
            run_name=str(payload.get("run_name") or ""),
            experiment=dict(payload.get("experiment") or {}),
            scored_as=str(payload.get("scored_as") or OLDER_SCORED_AS.get(kind, "val")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: segcli checkpoint without valid metadata ({exc!r})") from None
    source = {"checkpoint": str(path.resolve()), "kind": kind, "run_name": checkpoint.run_name,
              "epoch": checkpoint.epoch, "metric": checkpoint.metric}  # fmt: skip
    checkpoint.info = info.with_source(**source)
    return checkpoint


def read_training_state(path: Path) -> dict[str, Any]:
    """A full-state file (Lightning's format, written by segcli train), read safely."""
    if not path.exists():
        raise CheckpointError(f"{path}: no training state to resume from")
    state = load_plain(path, "segcli training state")
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(hparams, dict) or "experiment" not in hparams:
        raise CheckpointError(f"{path}: not a segcli training state (written by `segcli train`)")
    return state
