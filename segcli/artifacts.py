"""segcli's file formats: the run folder, checkpoints, export sidecars, the run record.

A checkpoint and an export sidecar carry the same model description, `ModelInfo`, parsed by one function.
Checkpoints hold only tensors and plain values: `torch.load(path, weights_only=True)` reads them. Files
are written through `segcli.files` (atomic, fsynced). torch is imported inside the functions that read
checkpoints, so the torch-free commands can use the run folder's names.

Longer than 300 lines on purpose: it is the one owner of every format segcli reads back.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segcli.errors import CheckpointError
from segcli.files import write_json

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "segcli-checkpoint", 2
SIDECAR_FORMAT, SIDECAR_VERSION = "segcli-export", 2
STATE_DICT_FORMAT = "segcli-state-dict"
EXPORT_FORMATS = ("onnx", "torchscript", "state-dict", "smp")
SMP_SIDECAR = "segcli.json"  # inside an smp `save_pretrained` folder
KFOLD_RECORD = "kfold.json"  # marks a k-fold folder: its split, its fold runs and their summary
TUNE_RECORD = "tune.json"  # marks a tune folder: the study's settings, its search block, the importances
INPUT_NAME, OUTPUT_NAME = "image", "logits"


# --- the run folder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    """Every file name of `<output-dir>/checkpoints/<run-name>/`."""

    path: Path

    @property
    def latest(self) -> Path:
        return self.path / "ckpt_latest.pth"

    @property
    def best(self) -> Path:
        return self.path / "ckpt_best.pth"

    @property
    def average(self) -> Path:
        return self.path / "average_model.pth"

    @property
    def ema(self) -> Path:
        return self.path / "ema_model.pth"

    @property
    def state(self) -> Path:
        """The full training state (Lightning's format) that --resume continues from."""
        return self.path / "state_latest.ckpt"

    @property
    def record(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def results_png(self) -> Path:
        return self.path / "results.png"

    @property
    def per_class_png(self) -> Path:
        return self.path / "per_class.png"

    @property
    def confusion_png(self) -> Path:
        return self.path / "confusion_matrix.png"

    @property
    def worst_png(self) -> Path:
        return self.path / "worst_predictions.png"

    def weights(self) -> list[Path]:
        """The model files a user loads, in the order the summary lists them."""
        return [self.best, self.latest, self.ema, self.average]

    def run_files(self) -> list[Path]:
        """Everything a run writes: what --overwrite removes."""
        return [*self.weights(), self.state, self.record, self.metrics_csv, self.results_png, self.per_class_png,
                self.confusion_png, self.worst_png]  # fmt: skip

    def has_checkpoints(self) -> bool:
        return any(path.exists() for path in self.weights())

    def remove_leftovers(self) -> None:
        """Temporary files of a write killed half-way (the real files are intact)."""
        for leftover in self.path.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)


@dataclass(frozen=True)
class TuneDir:
    """Every file name of `<output-dir>/tune/<study>/`: the study, its results and one run folder per trial."""

    path: Path

    @property
    def study_db(self) -> Path:
        """The default storage (SQLite)."""
        return self.path / "study.db"

    @property
    def record(self) -> Path:
        """tune.json: the study's settings and search block, what `segcli report` needs besides the CSV."""
        return self.path / TUNE_RECORD

    @property
    def results_csv(self) -> Path:
        return self.path / "tune_results.csv"

    @property
    def best_yaml(self) -> Path:
        return self.path / "best.yaml"

    @property
    def history_png(self) -> Path:
        return self.path / "optimization_history.png"

    @property
    def importances_png(self) -> Path:
        return self.path / "param_importances.png"

    @property
    def slices_png(self) -> Path:
        return self.path / "param_slices.png"

    def pictures(self) -> list[Path]:
        return [self.history_png, self.importances_png, self.slices_png]

    def trial(self, run_name: str) -> RunDir:
        return RunDir(self.path / run_name)

    def lock(self, number: int) -> Path:
        """Held by the process running trial `number` while it runs: whoever can take it knows that process died."""
        return self.path / f".trial{number:03d}.lock"


# --- the model description shared by checkpoints and exports ------------------------------------


def json_number(value: Any) -> float | None:
    """NaN and infinities are not JSON: they become null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ModelInfo:
    """What it takes to rebuild and feed a model: stored in every checkpoint and every export's sidecar."""

    arch: str
    encoder_name: str
    in_channels: int
    classes: int
    class_names: list[str]
    ignore_index: int | None
    normalization: dict[str, Any]
    """`mode` (imagenet, dataset, explicit: `(pixel / max_pixel_value - mean) / std`; image, min_max: per image)."""
    size_multiple: int
    model_params: dict[str, Any] = field(default_factory=dict)
    label_map: list[list[int]] | None = None
    """[[stored value, class], ...] applied to masks before scoring (evaluate)."""
    input_size: list[int] | None = None
    """[height, width] of the images the model saw in training (after the val transforms)."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where the weights came from: checkpoint path, kind, run name, epoch (1-based), metric."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> ModelInfo:
        try:
            return cls(
                arch=str(data["arch"]),
                encoder_name=str(data["encoder_name"]),
                in_channels=int(data["in_channels"]),
                classes=int(data["classes"]),
                class_names=[str(name) for name in data["class_names"]],
                ignore_index=None if data.get("ignore_index") is None else int(data["ignore_index"]),
                normalization=_normalization(data["normalization"]),
                size_multiple=int(data.get("size_multiple") or 1),
                model_params=dict(data.get("model_params") or {}),
                label_map=[[int(a), int(b)] for a, b in data["label_map"]] if data.get("label_map") else None,
                input_size=[int(v) for v in data["input_size"]] if data.get("input_size") else None,
                source=dict(data.get("source") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: no valid model description ({exc!r})") from None

    def with_source(self, **source: Any) -> ModelInfo:
        return ModelInfo(**{**asdict(self), "source": {**self.source, **source}})

    @property
    def binary(self) -> bool:
        """smp's binary convention: one output channel, sigmoid, foreground above 0.5."""
        return self.classes == 1

    def sidecar(self) -> dict[str, Any]:
        """The model part of an export's sidecar: plain JSON data, plus how to feed the model."""
        norm = self.normalization
        if norm["mode"] in ("image", "min_max"):
            recipe = f"per image: {norm['mode']} normalisation of each image (see normalization.mode)"
        else:
            recipe = "(pixel / max_pixel_value - mean) / std per channel"
        return {
            **self.to_dict(),
            "input": {
                "name": INPUT_NAME,
                "layout": "NCHW",
                "dtype": "float32",
                "preprocessing": f"{'RGB ' if self.in_channels == 3 else ''}{recipe}; height and width padded to a "
                f"multiple of {self.size_multiple}",
            },
            "output": {
                "name": OUTPUT_NAME,
                "layout": "NCHW",
                "meaning": "logits of the foreground (sigmoid)"
                if self.binary
                else "logits, one channel per class (softmax)",
            },
        }


def _normalization(data: dict[str, Any]) -> dict[str, Any]:
    mode = str(data.get("mode", "explicit"))
    values = {key: None if data.get(key) is None else [float(v) for v in data[key]] for key in ("mean", "std")}
    if mode not in ("image", "min_max") and (values["mean"] is None or values["std"] is None):
        raise ValueError(f"normalization mode {mode} needs mean and std")
    return {"mode": mode, **values, "max_pixel_value": float(data.get("max_pixel_value") or 255.0)}


# --- checkpoints ------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A segcli `.pth` file: weights, the model description, and what the run measured at that epoch."""

    info: ModelInfo
    state_dict: dict[str, torch.Tensor]
    epoch: int
    """1-based: the number of completed training epochs the weights come from."""
    global_step: int
    metrics: dict[str, float]
    run_name: str
    experiment: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model": self.info.to_dict(),
            "state_dict": self.state_dict,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "metrics": dict(self.metrics),
            "run_name": self.run_name,
            "experiment": self.experiment,
        }

    @property
    def metric(self) -> dict[str, Any]:
        """The monitored metric's name and value at this epoch."""
        name = (self.experiment.get("monitor") or {}).get("metric", "val/mIoU")
        return {"name": name, "value": json_number(self.metrics.get(name))}


def load_tagged(path: Path, expected_format: str, what: str, hint: str) -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a dict whose "format" is `expected_format`: never unpickled code."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and corrupt files have many types
        raise CheckpointError(
            f"{path}: not a readable {what} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        if isinstance(payload, dict) and isinstance(payload.get("hyper_parameters"), dict):
            raise CheckpointError(
                f"{path}: this is the full training state that `segcli train --resume` continues from, not a "
                f"model file; pass ckpt_best.pth, ckpt_latest.pth or average_model.pth from the same folder"
            )
        raise CheckpointError(f"{path}: not a {what} ({hint})")
    return payload


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a segcli checkpoint safely; anything else is a clear error."""
    payload = load_tagged(path, CHECKPOINT_FORMAT, "segcli checkpoint", "expected a file written by `segcli train`")
    if payload.get("format_version", 1) == 1:
        payload = _from_version_1(payload)
    kind = path.stem.removeprefix("ckpt_")
    try:
        info = ModelInfo.from_dict(payload["model"], path)
        checkpoint = Checkpoint(
            info=info,
            state_dict=payload["state_dict"],
            epoch=int(payload["epoch"]),
            global_step=int(payload.get("global_step") or 0),
            metrics={str(k): float(v) for k, v in (payload.get("metrics") or {}).items()},
            run_name=str(payload.get("run_name") or ""),
            experiment=dict(payload.get("experiment") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: segcli checkpoint without valid metadata ({exc!r})") from None
    source = {"checkpoint": str(path.resolve()), "kind": kind, "run_name": checkpoint.run_name,
              "epoch": checkpoint.epoch, "metric": checkpoint.metric}  # fmt: skip
    checkpoint.info = info.with_source(**source)
    return checkpoint


def _from_version_1(payload: dict[str, Any]) -> dict[str, Any]:
    """Files of segcli 0.1: flat model keys, 0-based epoch, mean/std normalisation over 0..255."""
    keys = ("arch", "encoder_name", "in_channels", "classes", "class_names", "ignore_index", "size_multiple")
    model = {key: payload.get(key) for key in keys}
    model["model_params"] = payload.get("model_params") or {}
    model["normalization"] = {"mode": "explicit", **payload.get("normalization", {}), "max_pixel_value": 255.0}
    return {**payload, "model": model, "epoch": int(payload.get("epoch", 0)) + 1}


# --- export sidecars -----------------------------------------------------------------------------


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
    if data.get("format_version", 1) == 1:
        data = {**data, "normalization": {"mode": "explicit", **data["normalization"], "max_pixel_value": 255.0}}
    return ModelInfo.from_dict(data, path), data["export_format"]


# --- the run record and the training state ----------------------------------------------------------


@dataclass
class RunRecord:
    """`run.json` in the run folder: what a later `--resume` needs to find the same W&B run."""

    run_name: str
    wandb_id: str | None = None
    finished: bool = False
    epochs_completed: int = 0
    report: dict[str, Any] | None = None
    """Best epoch, monitor, class names and confusion matrix: what `segcli report` needs besides metrics.csv."""

    @classmethod
    def read(cls, run_dir: RunDir) -> RunRecord | None:
        if not run_dir.record.is_file():
            return None
        try:
            return cls(**json.loads(run_dir.record.read_text()))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{run_dir.record}: unreadable run record ({exc}); delete it to start the run afresh"
            ) from None

    def write(self, run_dir: RunDir) -> None:
        write_json(run_dir.record, asdict(self))


def read_training_state(path: Path) -> dict[str, Any]:
    """A full-state file (Lightning's format, written by segcli train), read safely."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no training state to resume from") from None
    except Exception as exc:  # noqa: BLE001 - refusals of weights_only and corrupt files have many types
        raise CheckpointError(f"{path}: not a readable segcli training state ({type(exc).__name__})") from None
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(hparams, dict) or "experiment" not in hparams:
        raise CheckpointError(f"{path}: not a segcli training state (written by `segcli train`)")
    return state
