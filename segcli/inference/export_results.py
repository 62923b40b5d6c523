"""What an export is asked by default and what it reports: the format, opset and check defaults, the check's
and the export's results.

torch-free, so `segcli export-checkpoint` shows the same defaults in its --help and prints results without
importing torch; `export.py` does the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segcli.artifacts.model_info import ModelInfo
from segcli.files import json_number

DEFAULT_FORMAT = "onnx"
DEFAULT_SIZE = 256
"""Height and width of the example input the model is exported (traced) with."""
DEFAULT_OPSET = 17
ONNX_OPSETS = range(7, 21)
"""The opsets torch's TorchScript-based ONNX exporter (`dynamo=False`) writes: 7 to 20. torch.onnx has no
public constant for them (only the private `torch.onnx._constants`); above 20 it only warns, then writes a
model it does not support."""
DEFAULT_TOLERANCE = 1e-4
"""Largest accepted max |export - PyTorch| / max |PyTorch logit| (float32 kernels differ around 1e-6)."""
DEFAULT_MIN_AGREEMENT = 0.999
"""Smallest accepted share of pixels with the same predicted class (random inputs put a few on ties)."""


@dataclass
class InputCheck:
    shape: tuple[int, int, int, int]
    max_abs_diff: float
    max_relative_diff: float
    """max |export - PyTorch| / max |PyTorch logit|."""
    class_agreement: float
    """Share of pixels whose predicted class is the same."""


@dataclass
class CheckResult:
    """Export vs PyTorch on random inputs of each shape (batch, channels, height, width)."""

    inputs: list[InputCheck]
    tolerance: float
    min_agreement: float
    relative_to: str = "logits"
    """The scale differences are divided by: the model's `logits`, or an ensemble's `members' logits`."""

    @property
    def max_relative_diff(self) -> float:
        return max(check.max_relative_diff for check in self.inputs)

    @property
    def min_class_agreement(self) -> float:
        return min(check.class_agreement for check in self.inputs)

    @property
    def passed(self) -> bool:
        # `not >` rather than `<=`: NaN fails.
        return all(
            check.max_relative_diff <= self.tolerance and check.class_agreement >= self.min_agreement
            for check in self.inputs
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "relative_to": self.relative_to,
            "tolerance": self.tolerance,
            "min_agreement": self.min_agreement,
            "max_relative_diff": json_number(self.max_relative_diff),
            "min_class_agreement": json_number(self.min_class_agreement),
            "inputs": [
                {
                    "shape": list(c.shape),
                    "max_abs_diff": json_number(c.max_abs_diff),
                    "max_relative_diff": json_number(c.max_relative_diff),
                    "class_agreement": c.class_agreement,
                }
                for c in self.inputs
            ],  # fmt: skip
        }


@dataclass
class ExportResult:
    format: str
    path: Path
    sidecar: Path
    info: ModelInfo
    sources: list[Path]
    details: dict[str, Any]
    """Format specifics: the ONNX opset, how TorchScript was produced (script or trace)."""
    check: CheckResult | None
    written: bool
    """False when the check failed: nothing was moved into place."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "written": self.written,
            "path": str(self.path) if self.written else None,
            "sidecar": str(self.sidecar) if self.written else None,
            "sources": [str(source) for source in self.sources],
            "model": self.info.to_dict(),
            "details": self.details,
            "check": None if self.check is None else self.check.to_dict(),
        }
