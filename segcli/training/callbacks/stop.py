"""A clean Ctrl-C: the first one finishes the epoch (its state is saved) and stops; the second aborts now."""

from __future__ import annotations

import signal

import pytorch_lightning as pl


class GracefulStop(pl.Callback):
    def __init__(self, on_request=None) -> None:
        self.requested = False
        self.on_request = on_request or (lambda: None)
        """Told when the first Ctrl-C arrives (the CLI says what will happen)."""
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        self.on_request()

    def __enter__(self) -> GracefulStop:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.requested:
            trainer.should_stop = True
