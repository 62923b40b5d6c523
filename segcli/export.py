"""`export()`: a segcli checkpoint -> ONNX, TorchScript, a state-dict bundle or an smp folder, checked.

Every export gets a JSON sidecar (class names, normalisation, input channels, size multiple,
arch/encoder, the source checkpoint and its metric) that `predict` reads back. The export is first
written to a temporary folder beside the output; with `check`, it is loaded back the way `predict`
loads it and run against the PyTorch model on the same random inputs at two sizes (and two batch
sizes). Only an export that passes is moved into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segcli.errors import ConfigError
from segcli.inference import (
    EXPORT_FORMATS,
    INPUT_NAME,
    OUTPUT_NAME,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    SMP_SIDECAR,
    STATE_DICT_FORMAT,
    ModelInfo,
    json_number,
    load_checkpoint_model,
    open_model,
    quiet_torch_deprecations,
    resolve_model_path,
)

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-3
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "state-dict": ".state_dict.pth", "smp": "_smp"}


@dataclass
class CheckResult:
    """Max abs difference of the logits, export vs PyTorch, per input shape (batch, channels, height, width)."""

    shapes: list[tuple[int, int, int, int]]
    differences: list[float]
    tolerance: float

    @property
    def max_abs_diff(self) -> float:
        return max(self.differences)

    @property
    def passed(self) -> bool:
        return all(diff <= self.tolerance for diff in self.differences)  # NaN fails too

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "max_abs_diff": json_number(self.max_abs_diff),
            "inputs": [
                {"shape": list(shape), "max_abs_diff": json_number(diff)}
                for shape, diff in zip(self.shapes, self.differences, strict=True)
            ],
        }


@dataclass
class ExportResult:
    format: str
    path: Path
    sidecar: Path
    info: ModelInfo
    source: Path
    details: dict[str, Any]
    """Format specifics: the ONNX opset, how TorchScript was produced (script or trace)."""
    check: CheckResult | None
    written: bool
    """False when the check failed: nothing was moved into place."""


def default_output(checkpoint: Path, fmt: str) -> Path:
    """Beside the checkpoint: ckpt_best.onnx, ckpt_best.torchscript.pt, ckpt_best.state_dict.pth, ckpt_best_smp/."""
    return checkpoint.with_name(checkpoint.stem + SUFFIXES[fmt])


def _output_path(output: Path | None, checkpoint: Path, fmt: str) -> Path:
    """An existing folder receives the default file name; an existing folder is only replaced by an smp export
    when it is an earlier smp export (or empty)."""
    if output is None:
        output = default_output(checkpoint, fmt)
    elif output.is_dir() and fmt != "smp":
        output = output / default_output(checkpoint, fmt).name
    if fmt == "smp" and output.exists():
        if not output.is_dir() or not ((output / SMP_SIDECAR).is_file() or not any(output.iterdir())):
            raise ConfigError(f"--output {output} exists and is not an earlier smp export; pass a new folder")
    elif output.is_dir():
        raise ConfigError(f"--output {output} is a folder; pass a file name")
    return output


def check_sizes(height: int, width: int, multiple: int) -> list[tuple[int, int]]:
    """The export size, then a different one (still a multiple) so fixed shapes cannot pass."""
    return [(height, width), (height + 2 * multiple, width + multiple)]


def export(
    checkpoint: Path,
    fmt: str,
    output: Path | None = None,
    height: int = 256,
    width: int = 256,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export one checkpoint; see the module docstring. Raises SegcliError subclasses for user mistakes."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; valid formats: {', '.join(EXPORT_FORMATS)}")
    checkpoint = resolve_model_path(checkpoint)
    model, info = load_checkpoint_model(checkpoint)
    for name, value in (("--height", height), ("--width", width)):
        if value <= 0 or value % info.size_multiple:
            raise ConfigError(
                f"{name} {value}: {info.arch} with {info.encoder_name} needs a positive multiple of "
                f"{info.size_multiple}, e.g. {max(1, round(value / info.size_multiple)) * info.size_multiple}"
            )
    if fmt == "onnx":
        _check_opset(opset)
    output = _output_path(output, checkpoint, fmt)
    output.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, info.in_channels, height, width, generator=torch.Generator().manual_seed(0))

    staging = Path(tempfile.mkdtemp(prefix=".segcli-export-", dir=output.parent))
    try:
        staged = staging / output.name
        details = _WRITERS[fmt](model, info, example, staged, opset)
        sidecar_data = {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "export_format": fmt,
            "file": output.name,
            **info.sidecar(),
            "export": details,
        }
        sidecar_name = SMP_SIDECAR if fmt == "smp" else output.name + ".json"
        staged_sidecar = (staged / sidecar_name) if fmt == "smp" else staging / sidecar_name
        _write_json(staged_sidecar, sidecar_data)
        result = None
        if check:
            result = check_export(model, staged, info, check_sizes(height, width, info.size_multiple), tolerance)
            sidecar_data["check"] = result.to_dict()
            _write_json(staged_sidecar, sidecar_data)
        sidecar = output / SMP_SIDECAR if fmt == "smp" else output.with_name(sidecar_name)
        written = result is None or result.passed
        if written:
            _move_into_place(staged, output)
            if fmt != "smp":
                staged_sidecar.replace(sidecar)
        return ExportResult(fmt, output, sidecar, info, checkpoint, details, result, written)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_export(
    model: torch.nn.Module, export_path: Path, info: ModelInfo, sizes: list[tuple[int, int]], tolerance: float
) -> CheckResult:
    """Load the export as `predict` does and compare its logits with the PyTorch model's."""
    predictor = open_model(export_path, "cpu")
    generator = torch.Generator().manual_seed(1)
    shapes, differences = [], []
    for batch, (height, width) in zip((2, 1), sizes, strict=True):
        inputs = torch.randn(batch, info.in_channels, height, width, generator=generator)
        with torch.inference_mode():
            expected = model(inputs)
        actual = predictor.forward(inputs)
        if actual.shape != expected.shape:
            difference = float("inf")
        else:
            difference = float((actual.float() - expected.float()).abs().max())
        shapes.append((batch, info.in_channels, height, width))
        differences.append(difference)
    return CheckResult(shapes, differences, tolerance)


def _check_opset(opset: int) -> None:
    from torch.onnx import _constants

    low = getattr(_constants, "ONNX_MIN_OPSET", 7)
    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
    if not low <= opset <= high:
        raise ConfigError(f"--opset {opset}: this torch exports opsets {low} to {high} (default {DEFAULT_OPSET})")


@contextmanager
def _optional_dependency(extra: str) -> Iterator[None]:
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name in ("onnx", "onnxscript", "onnxruntime"):
            raise ConfigError(
                f"this needs the `{exc.name}` package, an optional extra: pip install 'segcli[{extra}]'"
            ) from None
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _move_into_place(staged: Path, output: Path) -> None:
    if output.is_dir() and not output.is_symlink():
        shutil.rmtree(output)
    elif output.exists():
        output.unlink()
    staged.replace(output)


# --- the four formats -------------------------------------------------------------------------


def _write_onnx(model, info: ModelInfo, example: torch.Tensor, path: Path, opset: int) -> dict[str, Any]:
    """The TorchScript-based exporter (dynamo=False): it needs no onnxscript and keeps H and W dynamic."""
    axes = {0: "batch", 2: "height", 3: "width"}
    with quiet_torch_deprecations(), _optional_dependency("export"):
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                do_constant_folding=True,
            )
        except torch.onnx.errors.OnnxExporterError as exc:  # the exporter refuses an operator at this opset
            raise ConfigError(
                f"ONNX opset {opset} cannot express {info.arch} with {info.encoder_name}: "
                f"{str(exc).splitlines()[0][:300]}; try a newer --opset (default {DEFAULT_OPSET}) or "
                "--format torchscript"
            ) from None
    try:
        import onnx
    except ImportError:
        return {"opset": opset}
    onnx.checker.check_model(str(path))
    return {"opset": opset, "onnx_version": onnx.__version__}


def _write_torchscript(model, info: ModelInfo, example: torch.Tensor, path: Path, opset: int) -> dict[str, Any]:
    """Scripted when smp marks the model and its encoder scriptable (control flow and shapes stay general);
    traced otherwise (UnetPlusPlus, DPT, some encoders), which the check then verifies at a second size."""
    scriptable = getattr(model, "_is_torch_scriptable", True) and getattr(model.encoder, "_is_torch_scriptable", True)
    with quiet_torch_deprecations():
        module, method = None, "trace"
        if scriptable:
            try:
                module, method = torch.jit.script(model), "script"
            except Exception:  # noqa: BLE001 - the TorchScript compiler raises many types; tracing is the fallback
                module = None
        if module is None:
            with torch.no_grad():
                module = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(module, str(path))
    return {"torchscript": method, "torch_version": torch.__version__}


def _write_state_dict(model, info: ModelInfo, example: torch.Tensor, path: Path, opset: int) -> dict[str, Any]:
    """Plain tensors and JSON-able metadata: `torch.load(weights_only=True)` plus `smp.create_model` rebuild it."""
    bundle = {
        "format": STATE_DICT_FORMAT,
        "format_version": SIDECAR_VERSION,
        "state_dict": {key: value.detach().cpu().clone() for key, value in model.state_dict().items()},
        "metadata": json.loads(json.dumps(info.sidecar())),
    }
    torch.save(bundle, path)
    return {"load_with": "torch.load(path, weights_only=True)['state_dict']"}


def _write_smp(model, info: ModelInfo, example: torch.Tensor, path: Path, opset: int) -> dict[str, Any]:
    model.save_pretrained(str(path))
    return {"load_with": "segmentation_models_pytorch.from_pretrained(folder)"}


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "state-dict": _write_state_dict, "smp": _write_smp}
