"""W&B's mode and its service process, without torch or Lightning.

`segcli train` starts the service (`wandb.setup()`: a helper process, no run) on a thread while torch and
Lightning import on the main one, so the run itself starts in a fraction of a second once every check has
passed. The run, and with it any file in the output folder, still waits for the checks.

`wandb.init` imports W&B's launch modules, whose pydantic models read their docstrings by searching
`sys.modules` once per frame: about 0.15 s before torch is imported, 1.4 s of CPU after it. They are imported
on the calling thread, before torch: on a thread of their own they raced torch's import for the interpreter
lock and lost, paying the 1.4 s on the run's critical path. W&B itself is imported by smp (through timm) anyway.
"""

from __future__ import annotations

import logging
import netrc
import os
import threading


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


def quiet_wandb() -> None:
    """W&B's own chatter (anonymous-mode notes, "Symlinked 1 file ...") is not for segcli's users."""
    os.environ.setdefault("WANDB_SILENT", "true")
    logging.getLogger("wandb").setLevel(logging.ERROR)


def start_service(mode: str) -> None:
    """Start W&B's service process in the background, unless W&B is disabled or this is not the first
    process of a multi-process run (those never log)."""
    if mode == "disabled" or os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        return
    quiet_wandb()
    try:
        import wandb.sdk.launch.inputs.internal  # noqa: F401 - before torch: see the module docstring
    except Exception:  # noqa: BLE001 - the run's own start reports (or works around) what went wrong
        return
    threading.Thread(target=_setup, name="segcli-wandb-service", daemon=True).start()


def _setup() -> None:
    try:
        import wandb

        wandb.setup()
    except Exception:  # noqa: BLE001 - as above
        pass
