"""Every model source -> a `Predictor`: segcli checkpoints, run folders, exports (read with their sidecar),
k-fold folders and ensembles of any of these (their probabilities averaged)."""

from __future__ import annotations

import io
import math
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch

from segcli.artifacts.checkpoints import load_tagged, read_checkpoint
from segcli.artifacts.exports import SMP_SIDECAR, STATE_DICT_FORMAT, read_sidecar, sidecar_path
from segcli.artifacts.folders import KFOLD_RECORD, RunDir, kfold_runs
from segcli.artifacts.model_info import ModelInfo
from segcli.config.schema import ModelConfig
from segcli.data.geometry import fixed_input_size, resize_back
from segcli.errors import CheckpointError, ConfigError, MissingPackageError
from segcli.inference.engine import Forward, InferenceOptions, Scores, masks_from, model_scores, probabilities, to_batch
from segcli.models.registry import create_model


@dataclass
class Predictor:
    """Class probabilities for images, and the metadata that says how to feed the model(s)."""

    scores: Scores
    info: ModelInfo
    kind: str
    """`checkpoint`, the export format, or `ensemble of N`."""
    path: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    members: list[Path] = field(default_factory=list)
    forward: Forward | None = None
    """The model's raw logits (one model only; export checks compare them)."""

    def probabilities(self, images: Sequence[np.ndarray], options: InferenceOptions) -> torch.Tensor:
        """Same-size HxWxC images -> NxKxHxW probabilities at their own size (K = 2 for a one-channel binary
        model); with `options.resize` the model runs at that size and the probabilities are resized back."""
        batch = to_batch(images, self.info, options.resize)
        return resize_back(self.batch_probabilities(batch, options), images[0].shape[:2])

    def batch_probabilities(self, batch: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
        """A normalised NCHW batch, at the size the model runs at -> NxKxHxW probabilities (tiles, TTA as asked)."""
        return probabilities(self.scores, batch.to(self.device), self.info.size_multiple, options)

    def with_label_map(self, label_map: dict[int, int]) -> Predictor:
        """The same model, scored against masks whose stored values `label_map` maps to its classes (added to,
        and overriding, the map the model was trained with)."""
        merged = {**dict(self.info.label_map or []), **label_map}
        info = self.info.model_copy(update={"label_map": [[stored, label] for stored, label in sorted(merged.items())]})
        return replace(self, info=info)

    def predict(self, images: Sequence[np.ndarray], options: InferenceOptions | None = None) -> list[np.ndarray]:
        """Same-size HxWxC images -> HxW class-index masks (uint8, uint16 beyond 256 classes)."""
        return masks_from(self.probabilities(images, options or InferenceOptions()), len(self.info.class_names))


def resolve_model_path(path: Path) -> Path:
    """A run folder means its ckpt_best.pth; an smp export folder and files stand for themselves."""
    if path.is_dir() and not (path / SMP_SIDECAR).is_file():
        best = RunDir(path).best
        if not best.is_file():
            raise CheckpointError(
                f"{path}: folder holds neither {best.name} (a run folder), {SMP_SIDECAR} (an smp export) nor "
                f"{KFOLD_RECORD} (a k-fold folder); pass a checkpoint file (ckpt_best.pth, ckpt_latest.pth, "
                "average_model.pth, ema_model.pth) or an export"
            )
        return best
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    return path


def expand_sources(paths: Sequence[Path]) -> list[Path]:
    """Model sources as given, with each k-fold folder replaced by its folds' best checkpoints."""
    expanded: list[Path] = []
    for path in paths:
        folds = kfold_runs(path)
        expanded += [run.best for run in folds] if folds is not None else [resolve_model_path(path)]
    return expanded


def build_model(info: ModelInfo, state_dict: dict[str, torch.Tensor] | None, where: Path) -> torch.nn.Module:
    """The smp model the metadata names (no pretrained download), with `state_dict` loaded, in eval mode."""
    try:
        config = ModelConfig(
            arch=info.arch,
            encoder_name=info.encoder_name,
            encoder_weights=None,
            in_channels=info.in_channels,
            classes=info.classes,
            params=info.model_params,
        )
        skeleton = _skeleton(config) if state_dict is not None else None
        model = skeleton if skeleton is not None else create_model(config)
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild the model it describes: {exc}") from None
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, assign=skeleton is not None)  # the skeleton takes the saved tensors
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(
                f"{where}: the weights do not fit {info.arch}/{info.encoder_name}: {detail}"
            ) from None
    return model.eval()


def _skeleton(config: ModelConfig) -> torch.nn.Module | None:
    """The model without storage or initialised weights (on the meta device), for weights that replace them all:
    drawing random start weights costs more than loading a checkpoint (0.3 s of 0.45 s for a Unet/resnet18).
    None where that does not work: a model that reads tensor values while being built, or that keeps tensors
    outside its state dict (non-persistent buffers), is built the ordinary way."""
    try:
        with torch.device("meta"):
            model = create_model(config)
    except (NotImplementedError, RuntimeError):
        return None
    saved = {id(tensor) for tensor in model.state_dict(keep_vars=True).values()}
    if any(id(tensor) not in saved for tensor in [*model.parameters(), *model.buffers()]):
        return None
    if any(isinstance(value, torch.Tensor) for module in model.modules() for value in vars(module).values()):
        return None  # a tensor kept as a plain attribute: neither registered nor saved
    return model


def load_checkpoint_model(path: Path) -> tuple[torch.nn.Module, ModelInfo]:
    """A segcli checkpoint (or run folder) -> the CPU model in eval mode and its metadata."""
    path = resolve_model_path(path)
    if path.suffix == ".onnx" or _is_torchscript(path):  # torch.load would hand a TorchScript file to jit.load
        raise CheckpointError(
            f"{path}: looks like an export but its sidecar {sidecar_path(path).name} is missing; "
            "keep the .json written next to it by `segcli export-checkpoint`"
        )
    checkpoint = read_checkpoint(path)
    info = checkpoint.info
    if info.val_transforms is None:  # an older file: its experiment says how it was validated
        transforms = checkpoint.experiment.get("val_transforms") or []
        resize = fixed_input_size(transforms, info.in_channels)
        info = info.model_copy(update={"val_transforms": transforms, "resize": resize})
    return build_model(info, checkpoint.state_dict, path), info


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def open_model(path: Path, device: torch.device | str = "cpu") -> Predictor:
    """One model source -> a Predictor. Exports are recognised by their sidecar, checkpoints by their content."""
    device = torch.device(device)
    path = resolve_model_path(path)
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        info, fmt = read_sidecar(sidecar)
        forward, device = _OPENERS[fmt](path, info, device)
        kind = fmt
    else:
        model, info = load_checkpoint_model(path)
        forward, kind = module_forward(model.to(device)), "checkpoint"
    return Predictor(model_scores(forward, info.size_multiple), info, kind, path, device, [path], forward)


def open_models(paths: Sequence[Path], device: torch.device | str = "cpu") -> Predictor:
    """Several sources (or a k-fold folder) -> one Predictor averaging their probabilities."""
    sources = expand_sources(paths)
    members = [open_model(path, device) for path in sources]
    if len(members) == 1:
        return members[0]
    return ensemble(members)


_SHARED_BY_ENSEMBLE_MEMBERS = ("classes", "class_names", "in_channels", "normalization", "ignore_index",
                               "label_map", "resize", "val_transforms")  # fmt: skip


def ensemble_info(members: Sequence[tuple[Path, ModelInfo]]) -> ModelInfo:
    """The description of several models used as one, for `predict`/`evaluate` and for an ensemble export.

    The members must agree on classes, inputs and normalisation; the ensemble's size multiple is the least
    common multiple of theirs, and its source lists theirs.
    """
    (first_path, first), *others = members
    for path, info in others:
        for key in _SHARED_BY_ENSEMBLE_MEMBERS:
            if getattr(info, key) != getattr(first, key):
                raise CheckpointError(
                    f"{path} and {first_path} cannot be ensembled: their {key} differ "
                    f"({getattr(info, key)!r} vs {getattr(first, key)!r}); ensemble models trained with "
                    "the same classes, normalisation and val_transforms"
                )
    multiple = math.lcm(*(info.size_multiple for _, info in members))
    sources = [info.source or {"path": str(path)} for path, info in members]
    return first.model_copy(update={"size_multiple": multiple, "source": {"ensemble": sources}})


def ensemble(members: list[Predictor]) -> Predictor:
    """The mean of the members' probabilities. They must agree on classes, inputs and normalisation."""
    info = ensemble_info([(member.path, member.info) for member in members])
    device = members[0].device

    def scores(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([member.scores(batch.to(member.device)).to(device) for member in members]).mean(0)

    paths = [path for member in members for path in member.members]
    return Predictor(scores, info, f"ensemble of {len(members)}", members[0].path, device, paths)


def module_forward(module: torch.nn.Module) -> Forward:
    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(batch)

    return forward


@contextmanager
def quiet_torch_deprecations() -> Iterator[None]:
    """torch 2.9+ marks TorchScript and the TorchScript-based ONNX exporter deprecated; users need no warning."""
    with warnings.catch_warnings():
        for message in (
            r".*is deprecated\. Please switch to.*",
            r".*legacy TorchScript-based ONNX export.*",
            r".*The feature will be removed.*",
        ):
            warnings.filterwarnings("ignore", message=message)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _open_torchscript(path: Path, info: ModelInfo, device: torch.device) -> tuple[Forward, torch.device]:
    try:
        with quiet_torch_deprecations():
            module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: not a readable TorchScript file ({str(exc).splitlines()[0][:200]})") from None
    module.eval()
    return module_forward(module), device


def _open_state_dict(path: Path, info: ModelInfo, device: torch.device) -> tuple[Forward, torch.device]:
    bundle = load_tagged(path, STATE_DICT_FORMAT, "segcli state-dict bundle", "written by segcli export-checkpoint")
    return module_forward(build_model(info, bundle["state_dict"], path).to(device)), device


def _open_smp(path: Path, info: ModelInfo, device: torch.device) -> tuple[Forward, torch.device]:
    try:
        with redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from local directory"
            model = smp.from_pretrained(str(path))
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable smp `save_pretrained` folder ({exc})") from None
    return module_forward(model.eval().to(device)), device


def _open_onnx(path: Path, info: ModelInfo, device: torch.device) -> tuple[Forward, torch.device]:
    session = onnx_session(path)
    input_name = session.get_inputs()[0].name

    def forward(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(session.run(None, {input_name: array})[0])

    return forward, torch.device("cpu")  # onnxruntime's CPU provider: the batch lives on the CPU


_OPENERS = {"onnx": _open_onnx, "torchscript": _open_torchscript, "state-dict": _open_state_dict, "smp": _open_smp}


def onnx_session(path: Path):
    try:
        import onnxruntime
    except ImportError:
        raise MissingPackageError("onnxruntime", "running an ONNX model", "export") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        raise CheckpointError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from None
