"""The global random state in the training state, so a resumed run draws what the uninterrupted one would.

Data order and augmentation have their own seeds (per epoch and per sample); this covers what draws from
torch's global generators during training (dropout, random layers of some encoders).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


class RngState(pl.Callback):
    def state_dict(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
