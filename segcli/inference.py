"""The inference core shared by `predict`, `evaluate` and `export-checkpoint`.

A model source (a segcli checkpoint, a run folder, or an export read with its JSON sidecar) becomes a
`Predictor`: a forward function (normalised NCHW float32 -> NCHW logits) plus the metadata that says how
to feed it (`ModelInfo`). Around that forward function, and identical for every source:

- preprocessing is the normalisation stored in the checkpoint, applied with the same Albumentations
  `Normalize` training used, so a pixel reaches the model exactly as it did during validation;
- any image size works: the batch is padded (reflected) up to the model's size multiple and the
  output cropped back;
- with a tile size, large images go through a sliding window whose overlapping tiles are blended
  with Gaussian weights (centre pixels count more than tile borders);
- flip test-time augmentation averages the probabilities of the image and of its mirror image.

Scores are softmax probabilities; the predicted mask is their argmax.
"""

from __future__ import annotations

import io
import json
import math
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segcli.errors import CheckpointError, ConfigError
from segcli.training.checkpoints import load_checkpoint, load_tagged

SIDECAR_FORMAT = "segcli-export"
SIDECAR_VERSION = 1
SMP_SIDECAR = "segcli.json"  # inside an smp `save_pretrained` folder
RUN_BEST = "ckpt_best.pth"  # a run folder stands for its best checkpoint
STATE_DICT_FORMAT = "segcli-state-dict"
EXPORT_FORMATS = ("onnx", "torchscript", "state-dict", "smp")
INPUT_NAME, OUTPUT_NAME = "image", "logits"

Forward = Callable[[torch.Tensor], torch.Tensor]


# --- metadata ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What it takes to rebuild and feed a model: stored in checkpoints and in every export's sidecar."""

    arch: str
    encoder_name: str
    in_channels: int
    classes: int
    class_names: list[str]
    ignore_index: int | None
    mean: list[float]
    std: list[float]
    size_multiple: int
    model_params: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    """The checkpoint it came from: path, kind (best/latest/average_model), epoch, run name, metric."""

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any], path: Path) -> ModelInfo:
        try:
            normalization = payload["normalization"]
            metric = payload.get("metric") or {}
            return cls(
                arch=str(payload["arch"]),
                encoder_name=str(payload["encoder_name"]),
                in_channels=int(payload["in_channels"]),
                classes=int(payload["classes"]),
                class_names=[str(name) for name in payload["class_names"]],
                ignore_index=payload.get("ignore_index"),
                mean=[float(v) for v in normalization["mean"]],
                std=[float(v) for v in normalization["std"]],
                size_multiple=int(payload.get("size_multiple") or 1),
                model_params=dict(payload.get("model_params") or {}),
                source={
                    "checkpoint": str(path.resolve()),
                    "kind": payload.get("kind"),
                    "epoch": payload.get("epoch"),
                    "run_name": payload.get("run_name"),
                    "metric": {"name": metric.get("name"), "value": json_number(metric.get("value"))},
                },
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: segcli checkpoint without valid model metadata ({exc!r})") from None

    @classmethod
    def from_sidecar(cls, data: dict[str, Any], path: Path) -> ModelInfo:
        try:
            return cls(
                arch=str(data["arch"]),
                encoder_name=str(data["encoder_name"]),
                in_channels=int(data["in_channels"]),
                classes=int(data["classes"]),
                class_names=[str(name) for name in data["class_names"]],
                ignore_index=data.get("ignore_index"),
                mean=[float(v) for v in data["normalization"]["mean"]],
                std=[float(v) for v in data["normalization"]["std"]],
                size_multiple=int(data.get("size_multiple") or 1),
                model_params=dict(data.get("model_params") or {}),
                source=dict(data.get("source") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: sidecar without valid model metadata ({exc!r})") from None

    def sidecar(self) -> dict[str, Any]:
        """The sidecar's model part: plain JSON data."""
        return {
            "arch": self.arch,
            "encoder_name": self.encoder_name,
            "model_params": self.model_params,
            "in_channels": self.in_channels,
            "classes": self.classes,
            "class_names": self.class_names,
            "ignore_index": self.ignore_index,
            "normalization": {"mean": self.mean, "std": self.std},
            "size_multiple": self.size_multiple,
            "input": {
                "name": INPUT_NAME,
                "layout": "NCHW",
                "dtype": "float32",
                "preprocessing": f"{'RGB ' if self.in_channels == 3 else ''}(pixel / 255 - mean) / std per channel; "
                f"height and width padded to a multiple of {self.size_multiple}",
            },
            "output": {"name": OUTPUT_NAME, "layout": "NCHW", "meaning": "logits, one channel per class"},
            "source": self.source,
        }


def json_number(value: Any) -> float | None:
    """NaN and infinities are not JSON: they become null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --- loading ----------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A forward function and its metadata; `kind` is `checkpoint` or the export format."""

    forward: Forward
    info: ModelInfo
    kind: str
    path: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def predict(self, images: Sequence[np.ndarray], options: InferenceOptions | None = None) -> list[np.ndarray]:
        """HxWxC uint8 images of one size -> HxW class-index masks (uint8, uint16 beyond 256 classes)."""
        options = options or InferenceOptions()
        batch = to_batch(images, self.info).to(self.device)
        # max(1).indices: the same first maximum as argmax(1), several times faster on CPU.
        masks = probabilities(self.forward, batch, self.info.size_multiple, options).max(1).indices
        dtype = np.uint8 if self.info.classes <= 256 else np.uint16
        return [mask.cpu().numpy().astype(dtype) for mask in masks]


def resolve_model_path(path: Path) -> Path:
    """A run folder means its ckpt_best.pth; an smp export folder and files stand for themselves."""
    if path.is_dir() and not (path / SMP_SIDECAR).is_file():
        best = path / RUN_BEST
        if not best.is_file():
            raise CheckpointError(
                f"{path}: folder holds neither {RUN_BEST} (a run folder) nor {SMP_SIDECAR} (an smp export); "
                "pass a checkpoint file (ckpt_best.pth, ckpt_latest.pth, average_model.pth) or an export"
            )
        return best
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    return path


def sidecar_path(export: Path) -> Path:
    """`model.onnx` -> `model.onnx.json`; an smp folder keeps it inside as segcli.json."""
    if export.is_dir():
        return export / SMP_SIDECAR
    return export.with_name(export.name + ".json")


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable export sidecar ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise CheckpointError(f"{path}: not a segcli export sidecar (written by `segcli export-checkpoint`)")
    if data.get("export_format") not in EXPORT_FORMATS:
        raise CheckpointError(f"{path}: unknown export format {data.get('export_format')!r}")
    return data


def build_model(info: ModelInfo, state_dict: dict[str, torch.Tensor] | None, where: Path) -> torch.nn.Module:
    """The smp model the metadata names (no pretrained download), with `state_dict` loaded, in eval mode."""
    from segcli.config.schema import ModelConfig
    from segcli.models.registry import create_model

    try:
        config = ModelConfig(
            arch=info.arch,
            encoder_name=info.encoder_name,
            encoder_weights=None,
            in_channels=info.in_channels,
            classes=info.classes,
            params=info.model_params,
        )
        model = create_model(config)
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild the model it describes: {exc}") from None
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(
                f"{where}: the weights do not fit {info.arch}/{info.encoder_name}: {detail}"
            ) from None
    return model.eval()


def load_checkpoint_model(path: Path) -> tuple[torch.nn.Module, ModelInfo]:
    """A segcli checkpoint (or run folder) -> the CPU model in eval mode and its metadata."""
    path = resolve_model_path(path)
    if path.suffix == ".onnx" or _is_torchscript(path):  # torch.load would hand a TorchScript file to jit.load
        raise CheckpointError(
            f"{path}: looks like an export but its sidecar {sidecar_path(path).name} is missing; "
            "keep the .json written next to it by `segcli export-checkpoint`"
        )
    payload = load_checkpoint(path)
    info = ModelInfo.from_checkpoint(payload, path)
    return build_model(info, payload.get("state_dict"), path), info


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def select_device(gpu: int | None = None, cpu: bool = False) -> torch.device:
    """--cpu, --gpu N, else cuda:0 when there is a GPU."""
    if cpu:
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if gpu is None:
        return torch.device("cuda:0" if count else "cpu")
    if gpu >= count:
        have = f"only {count} CUDA GPU{'s' if count != 1 else ''}" if count else "no CUDA GPU"
        raise ConfigError(f"--gpu {gpu} was requested but this machine has {have}; use --cpu")
    return torch.device(f"cuda:{gpu}")


def open_model(path: Path, device: torch.device | str = "cpu") -> Predictor:
    """Any model source -> a Predictor. Exports are recognised by their sidecar, checkpoints by their content."""
    device = torch.device(device)
    path = resolve_model_path(path)
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        data = read_sidecar(sidecar)
        info = ModelInfo.from_sidecar(data, sidecar)
        fmt = data["export_format"]
        loader = {
            "onnx": _open_onnx,
            "torchscript": _open_torchscript,
            "state-dict": _open_state_dict,
            "smp": _open_smp,
        }
        forward, device = loader[fmt](path, info, device)
        return Predictor(forward, info, fmt, path, device)
    model, info = load_checkpoint_model(path)
    return Predictor(_module_forward(model.to(device)), info, "checkpoint", path, device)


def _module_forward(module: torch.nn.Module) -> Forward:
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
    return _module_forward(module), device


def _open_state_dict(path: Path, info: ModelInfo, device: torch.device) -> tuple[Forward, torch.device]:
    bundle = load_tagged(path, STATE_DICT_FORMAT, "segcli state-dict bundle", "segcli export-checkpoint")
    return _module_forward(build_model(info, bundle["state_dict"], path).to(device)), device


def _open_smp(path: Path, info: ModelInfo, device: torch.device) -> tuple[Forward, torch.device]:
    import segmentation_models_pytorch as smp

    try:
        with redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from local directory"
            model = smp.from_pretrained(str(path))
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable smp `save_pretrained` folder ({exc})") from None
    return _module_forward(model.eval().to(device)), device


def _open_onnx(path: Path, info: ModelInfo, device: torch.device) -> tuple[Forward, torch.device]:
    session = onnx_session(path)
    input_name = session.get_inputs()[0].name

    def forward(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(session.run(None, {input_name: array})[0])

    return forward, torch.device("cpu")  # onnxruntime's CPU provider: the batch lives on the CPU


def onnx_session(path: Path):
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "running an ONNX model needs onnxruntime, an optional extra: pip install 'segcli[export]'"
        ) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        raise CheckpointError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from None


# --- preprocessing and inference --------------------------------------------------------------


@dataclass(frozen=True)
class InferenceOptions:
    batch_size: int = 4
    """Images per forward pass (tiles per forward pass with `tile`)."""
    tile: int | None = None
    """Sliding-window tile size in pixels (rounded up to the size multiple); None: whole images."""
    overlap: float = 0.25
    """Fraction of a tile shared with its neighbour."""
    flip_tta: bool = False
    """Average with the horizontally flipped image's prediction."""


def normalize(image: np.ndarray, info: ModelInfo) -> np.ndarray:
    """HxWxC uint8 -> HxWxC float32 exactly as training's `Normalize` step produces it."""
    import albumentations as A

    return A.Normalize(mean=info.mean, std=info.std)(image=image)["image"]


def to_batch(images: Sequence[np.ndarray], info: ModelInfo) -> torch.Tensor:
    """Same-size HxWxC uint8 images -> a normalised NCHW float32 batch."""
    sizes = {image.shape for image in images}
    if len(sizes) != 1:
        raise ValueError(f"one batch holds images of one size, got {sorted(sizes)}")
    channels = images[0].shape[2] if images[0].ndim == 3 else 1
    if channels != info.in_channels:
        raise ValueError(f"model takes {info.in_channels} channels, image has {channels}")
    stacked = np.stack([normalize(image.reshape(*image.shape[:2], channels), info) for image in images])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def pad_to_multiple(batch: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right so height and width are multiples; returns the original (height, width) for `crop`.

    Reflection (the image continues plausibly), or edge replication where the padding is too large to
    reflect.
    """
    height, width = batch.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return batch, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(batch, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def crop(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return batch[..., : size[0], : size[1]]


def padded_probabilities(forward: Forward, batch: torch.Tensor, multiple: int) -> torch.Tensor:
    """Softmax of the model's logits for a batch of any size (padded to the multiple, cropped back)."""
    padded, size = pad_to_multiple(batch, multiple)
    logits = forward(padded)
    return crop(logits.float(), size).softmax(1)


def with_flip(predict: Forward) -> Forward:
    """Flip TTA: the mean of the prediction and the mirrored prediction of the mirrored image."""

    def flipped(batch: torch.Tensor) -> torch.Tensor:
        return (predict(batch) + predict(batch.flip(-1)).flip(-1)) / 2

    return flipped


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Evenly spaced window starts from 0 to length - tile, at most `stride` apart."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def gaussian_window(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Blending weights: 1 at the tile centre, falling to exp(-8) at its edges (sigma = size / 8)."""

    def axis(size: int) -> torch.Tensor:
        positions = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
        return torch.exp(-(positions**2) / (2 * (size / 8) ** 2))

    return axis(height)[:, None] * axis(width)[None, :]


def sliding_window(predict: Forward, image: torch.Tensor, tile: int, overlap: float, batch_size: int) -> torch.Tensor:
    """One 1xCxHxW image -> 1xKxHxW scores, from overlapping tiles blended with Gaussian weights."""
    height, width = image.shape[-2:]
    tile_h, tile_w = min(tile, height), min(tile, width)
    stride_h = max(1, int(tile_h * (1 - overlap)))
    stride_w = max(1, int(tile_w * (1 - overlap)))
    windows = [(y, x) for y in tile_starts(height, tile_h, stride_h) for x in tile_starts(width, tile_w, stride_w)]
    weight = gaussian_window(tile_h, tile_w, image.device)
    total = None
    norm = torch.zeros(height, width, device=image.device)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        tiles = torch.cat([image[..., y : y + tile_h, x : x + tile_w] for y, x in chunk])
        scores = predict(tiles)
        if total is None:
            total = torch.zeros(1, scores.shape[1], height, width, device=scores.device)
            norm = norm.to(scores.device)
            weight = weight.to(scores.device)
        for (y, x), score in zip(chunk, scores, strict=True):
            total[0, :, y : y + tile_h, x : x + tile_w] += score * weight
            norm[y : y + tile_h, x : x + tile_w] += weight
    return total / norm


def probabilities(forward: Forward, batch: torch.Tensor, multiple: int, options: InferenceOptions) -> torch.Tensor:
    """Class probabilities NxKxHxW for a normalised batch: padding, optional flip TTA and sliding window."""

    def predict(images: torch.Tensor) -> torch.Tensor:
        return padded_probabilities(forward, images, multiple)

    if options.flip_tta:
        predict = with_flip(predict)
    height, width = batch.shape[-2:]
    if options.tile is None or (height <= options.tile and width <= options.tile):
        return predict(batch)
    tile = -(-options.tile // multiple) * multiple
    return torch.cat(
        [
            sliding_window(predict, batch[i : i + 1], tile, options.overlap, options.batch_size)
            for i in range(len(batch))
        ]
    )


def same_size_batches(items: Iterator[tuple[Any, np.ndarray]], batch_size: int) -> Iterator[list[tuple[Any, Any]]]:
    """Group consecutive (key, image) items into batches of one image size, order kept."""
    batch: list[tuple[Any, np.ndarray]] = []
    for key, image in items:
        if batch and (len(batch) == batch_size or image.shape != batch[0][1].shape):
            yield batch
            batch = []
        batch.append((key, image))
    if batch:
        yield batch
