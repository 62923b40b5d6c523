"""`export()`: segcli checkpoints -> ONNX, TorchScript, a state-dict bundle or an smp folder, checked.

Every export gets a JSON sidecar (class names, normalisation, input channels, size multiple,
arch/encoder, the source checkpoint and its metric) that `predict` reads back. The export is first
written to a temporary folder beside the output; with `check`, it is loaded back the way `predict`
loads it and run against the PyTorch model on the same random inputs at two sizes (and two batch
sizes). Parity is judged relative to the logits' scale (a model after one epoch can have logits near
10^4, where an absolute 1e-3 means nothing; for an ensemble, its members' logits: see `check_export`) and
by how many pixels get the same class. Only an export that passes is moved into place
(`files.move_into_place`: fsync, rename), then its sidecar.

Several checkpoints export as one ensemble model (ONNX or TorchScript) whose output is the log of the
members' mean probabilities: softmax (or for binary models the sigmoid) of it is that mean, so every
consumer of segcli's exports reads it like a single model's logits.

The defaults and the result types live in `export_results.py`, which needs no torch.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from segcli.artifacts.exports import (
    EXPORT_FORMATS,
    EXPORT_SUFFIXES,
    SIDECAR_VERSION,
    SMP_SIDECAR,
    STATE_DICT_FORMAT,
    sidecar_document,
)
from segcli.artifacts.model_info import INPUT_NAME, OUTPUT_NAME, ModelInfo
from segcli.errors import ConfigError, MissingPackageError, StorageError
from segcli.files import move_into_place, save_torch, write_json
from segcli.inference.export_results import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_OPSET,
    DEFAULT_SIZE,
    DEFAULT_TOLERANCE,
    ONNX_OPSETS,
    CheckResult,
    ExportResult,
    InputCheck,
)
from segcli.inference.loading import (
    ensemble_info,
    expand_sources,
    load_checkpoint_model,
    open_model,
    quiet_torch_deprecations,
)
from segcli.models.metrics import predictions


def default_output(given: list[Path], sources: list[Path], fmt: str) -> Path:
    """Beside the checkpoint: ckpt_best.onnx, ckpt_best.torchscript.pt, ckpt_best.state_dict.pth, ckpt_best_smp/;
    for a k-fold folder, ensemble.onnx inside it."""
    if len(sources) == 1:
        return sources[0].with_name(sources[0].stem + EXPORT_SUFFIXES[fmt])
    if len(given) == 1 and given[0].is_dir():
        return given[0] / f"ensemble{EXPORT_SUFFIXES[fmt]}"
    raise ConfigError("an ensemble of several checkpoints needs --output FILE (where to write it)")


def _output_path(output: Path | None, given: list[Path], sources: list[Path], fmt: str) -> Path:
    """An existing folder receives the default file name; an existing folder is only replaced by an smp export
    when it is an earlier smp export (or empty)."""
    if output is None:
        output = default_output(given, sources, fmt)
    elif output.is_dir() and fmt != "smp":
        output = output / (
            f"ensemble{EXPORT_SUFFIXES[fmt]}" if len(sources) > 1 else default_output(given, sources, fmt).name
        )
    if fmt == "smp" and output.exists():
        if not output.is_dir() or not ((output / SMP_SIDECAR).is_file() or not any(output.iterdir())):
            raise ConfigError(f"--output {output} exists and is not an earlier smp export; pass a new folder")
    elif output.is_dir():
        raise ConfigError(f"--output {output} is a folder; pass a file name")
    return output


def check_sizes(height: int, width: int, multiple: int) -> list[tuple[int, int]]:
    """The export size, then a different one (still a multiple) so fixed shapes cannot pass."""
    return [(height, width), (height + 2 * multiple, width + multiple)]


class EnsembleModule(torch.nn.Module):
    """Several models as one: the log of their mean probabilities (a logit of the mean for binary models)."""

    def __init__(self, members: list[torch.nn.Module], binary: bool):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.binary = binary

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.binary:
            mean = torch.stack([member(images).sigmoid() for member in self.members]).mean(0)
            return torch.logit(mean, eps=1e-7)
        mean = torch.stack([member(images).softmax(1) for member in self.members]).mean(0)
        return torch.log(mean.clamp_min(1e-12))


def _load_models(checkpoints: list[Path], fmt: str) -> tuple[torch.nn.Module, ModelInfo]:
    loaded = [load_checkpoint_model(path) for path in checkpoints]
    if len(loaded) == 1:
        return loaded[0]
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"--format {fmt} holds one model's weights; export an ensemble as onnx or torchscript")
    info = ensemble_info([(path, info) for path, (_, info) in zip(checkpoints, loaded, strict=True)])
    return EnsembleModule([model for model, _ in loaded], info.binary).eval(), info


def export(
    checkpoints: Path | list[Path],
    fmt: str,
    output: Path | None = None,
    *,
    height: int = DEFAULT_SIZE,
    width: int = DEFAULT_SIZE,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> ExportResult:
    """Export one checkpoint, or several (or a k-fold folder) as an ensemble; see the module docstring.

    Raises SegcliError subclasses for user mistakes.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; valid formats: {', '.join(EXPORT_FORMATS)}")
    given = checkpoints if isinstance(checkpoints, list) else [checkpoints]
    sources = expand_sources(given)
    model, info = _load_models(sources, fmt)
    for name, value in (("--height", height), ("--width", width)):
        if value <= 0 or value % info.size_multiple:
            raise ConfigError(
                f"{name} {value}: {info.arch} with {info.encoder_name} needs a positive multiple of "
                f"{info.size_multiple}, e.g. {max(1, round(value / info.size_multiple)) * info.size_multiple}"
            )
    if fmt == "onnx":
        _check_opset(opset)
    output = _output_path(output, given, sources, fmt)
    output.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, info.in_channels, height, width, generator=torch.Generator().manual_seed(0))

    staging = Path(tempfile.mkdtemp(prefix=".segcli-export-", dir=output.parent))
    try:
        staged = staging / output.name
        details = _WRITERS[fmt](model, info, example, staged, opset)
        if len(sources) > 1:
            details["ensemble"] = {"members": len(sources), "output": "log of the members' mean probabilities"}
        document = sidecar_document(info, fmt, output.name, details)
        sidecar_name = SMP_SIDECAR if fmt == "smp" else output.name + ".json"
        staged_sidecar = (staged / sidecar_name) if fmt == "smp" else staging / sidecar_name
        write_json(staged_sidecar, document)
        result = None
        if check:
            sizes = check_sizes(height, width, info.size_multiple)
            result = check_export(model, staged, info, sizes, tolerance, min_agreement)
            document["check"] = result.to_dict()
            write_json(staged_sidecar, document)
        sidecar = output / SMP_SIDECAR if fmt == "smp" else output.with_name(sidecar_name)
        written = result is None or result.passed
        if written:
            move_into_place(staged, output)
            if fmt != "smp":
                move_into_place(staged_sidecar, sidecar)
        return ExportResult(fmt, output, sidecar, info, sources, details, result, written)
    except StorageError:  # it named the staging folder, which is gone
        raise StorageError(f"disk full while exporting {output}; nothing was written. Free space, then run the "
                           "command again") from None  # fmt: skip
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_export(
    model: torch.nn.Module,
    export_path: Path,
    info: ModelInfo,
    sizes: list[tuple[int, int]],
    tolerance: float,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> CheckResult:
    """Load the export as `predict` does and compare its logits and classes with the PyTorch model's.

    The difference is scaled by the logits float32 works at. An ensemble's output, the log of its members'
    mean probabilities, spans at most 0..-27.6 (it is clamped at 1e-12), but its float32 error comes from the
    members' logits, which can be in the hundreds: scaled by its own range, a correct export of confident
    members failed at 1e-4 with every pixel's class the same (so did its probabilities: near 0.5 they move by
    a quarter of the logits' error). Scaled by the members' largest logit, an ensemble is held to the standard
    of each member (the log of a mean of softmaxes moves by at most twice the members' logits), and a wrong
    member still moves it by far more.
    """
    ensemble = isinstance(model, EnsembleModule)
    exported = open_model(export_path, "cpu").forward
    generator = torch.Generator().manual_seed(1)
    checks = []
    for batch, (height, width) in zip((2, 1), sizes, strict=True):
        inputs = torch.randn(batch, info.in_channels, height, width, generator=generator)
        with torch.inference_mode():
            expected = model(inputs).float()
            logits = [member(inputs) for member in model.members] if ensemble else [expected]
        actual = exported(inputs).float()
        shape = (batch, info.in_channels, height, width)
        if actual.shape != expected.shape:
            checks.append(InputCheck(shape, float("inf"), float("inf"), 0.0))
            continue
        difference = float((actual - expected).abs().max())
        scale = max(*(float(values.abs().max()) for values in logits), 1.0)
        agreement = float((predictions(actual) == predictions(expected)).float().mean())
        checks.append(InputCheck(shape, difference, difference / scale, agreement))
    return CheckResult(checks, tolerance, min_agreement, "members' logits" if ensemble else "logits")


def _check_opset(opset: int) -> None:
    if opset not in ONNX_OPSETS:
        raise ConfigError(
            f"--opset {opset}: torch exports opsets {ONNX_OPSETS.start} to {ONNX_OPSETS.stop - 1} "
            f"(default {DEFAULT_OPSET})"
        )


# --- the four formats -------------------------------------------------------------------------


def _write_onnx(model, info: ModelInfo, example: torch.Tensor, path: Path, opset: int) -> dict[str, Any]:
    """The TorchScript-based exporter (dynamo=False): it needs no onnxscript and keeps H and W dynamic."""
    try:
        import onnx  # torch's exporter needs it, and reports its absence as an opset it cannot export
    except ImportError:
        raise MissingPackageError("onnx", "--format onnx", "export") from None
    axes = {0: "batch", 2: "height", 3: "width"}
    with quiet_torch_deprecations():
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
    onnx.checker.check_model(str(path))
    return {"opset": opset, "onnx_version": onnx.__version__}


def _write_torchscript(model, info: ModelInfo, example: torch.Tensor, path: Path, opset: int) -> dict[str, Any]:
    """Scripted where TorchScript's compiler takes the model (control flow and shapes stay general); traced where
    it refuses (UnetPlusPlus, DPT, some encoders; smp marks those unscriptable), which the check then
    verifies at a second size."""
    with quiet_torch_deprecations():
        module, method = None, "trace"
        if hasattr(model, "encoder"):  # an ensemble has none: it is traced
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
    save_torch(bundle, path)
    return {"load_with": "torch.load(path, weights_only=True)['state_dict']"}


def _write_smp(model, info: ModelInfo, example: torch.Tensor, path: Path, opset: int) -> dict[str, Any]:
    model.save_pretrained(str(path))
    return {"load_with": "segmentation_models_pytorch.from_pretrained(folder)"}


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "state-dict": _write_state_dict, "smp": _write_smp}
