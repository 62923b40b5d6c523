"""Crash safety: atomic full-state files, the run record that finds them again, and a clean Ctrl-C."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
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


class GracefulStop(pl.Callback):
    """First Ctrl-C: finish the current epoch (its state is saved) and stop. Second Ctrl-C: abort now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("\nstopping after this epoch (its state will be saved); press Ctrl-C again to abort now\n")

    def __enter__(self) -> GracefulStop:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.requested:
            trainer.should_stop = True
