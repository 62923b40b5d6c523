"""Crash safety: atomic full-state files (Lightning format) and the run record that finds them again."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from segcli.errors import CheckpointError
from segcli.training.checkpoints import atomic_save

RECORD = "run.json"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with segcli's atomic write (temp file, fsync, rename) and safe reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


@dataclass
class RunRecord:
    """`run.json` in the run folder: what a later `--resume` needs to find the same W&B run."""

    run_name: str
    wandb_id: str | None = None
    finished: bool = False
    epochs_completed: int = 0

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord | None:
        path = run_dir / RECORD
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable run record ({exc}); delete it to start the run afresh") from None

    def write(self, run_dir: Path) -> None:
        tmp = run_dir / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(run_dir / RECORD)


def state_hparams(path: Path) -> dict[str, Any]:
    """The hyper-parameters stored in a full-state file (read safely)."""
    try:
        state = AtomicCheckpointIO().load_checkpoint(path, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no training state to resume from") from None
    except Exception as exc:  # noqa: BLE001 - refusals of weights_only and corrupt files have many types
        raise CheckpointError(f"{path}: not a readable segcli training state ({type(exc).__name__})") from None
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(hparams, dict) or "experiment" not in hparams:
        raise CheckpointError(f"{path}: not a segcli training state (written by `segcli train`)")
    return hparams
