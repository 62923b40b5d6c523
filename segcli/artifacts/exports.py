"""Exports' file names and their JSON sidecars, which carry the model description `predict` reads back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segcli.artifacts.model_info import ModelInfo
from segcli.errors import CheckpointError

SIDECAR_FORMAT, SIDECAR_VERSION = "segcli-export", 2
STATE_DICT_FORMAT = "segcli-state-dict"
EXPORT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "state-dict": ".state_dict.pth", "smp": "_smp"}
EXPORT_FORMATS = tuple(EXPORT_SUFFIXES)
SMP_SIDECAR = "segcli.json"  # inside an smp `save_pretrained` folder


def sidecar_path(export: Path) -> Path:
    """`model.onnx` -> `model.onnx.json`; an smp folder keeps it inside as segcli.json."""
    if export.is_dir():
        return export / SMP_SIDECAR
    return export.with_name(export.name + ".json")


def sidecar_document(info: ModelInfo, export_format: str, file_name: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "export_format": export_format,
        "file": file_name,
        **info.sidecar(),
        "export": details,
    }


def read_sidecar(path: Path) -> tuple[ModelInfo, str]:
    """An export's sidecar -> (model description, export format)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable export sidecar ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise CheckpointError(f"{path}: not a segcli export sidecar (written by `segcli export-checkpoint`)")
    if data.get("export_format") not in EXPORT_FORMATS:
        raise CheckpointError(f"{path}: unknown export format {data.get('export_format')!r}")
    if data.get("format_version", 1) != SIDECAR_VERSION:
        raise CheckpointError(
            f"{path}: a sidecar of format version {data.get('format_version', 1)}, written by a development version "
            f"of segcli; this one reads version {SIDECAR_VERSION}: export the checkpoint again"
        )
    return ModelInfo.from_dict(data, path), data["export_format"]
