"""segcli's file formats: the run folder, checkpoints, export sidecars, the run record.

A checkpoint and an export sidecar carry the same model description, `ModelInfo`, parsed by one function.
Checkpoints hold only tensors and plain values: `torch.load(path, weights_only=True)` reads them. Files
are written through `segcli.files` (atomic, fsynced). torch is imported inside the functions that read
checkpoints, so the torch-free commands can use the run folder's names.

Longer than 300 lines on purpose: it is the one owner of every format segcli reads back.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segcli.errors import CheckpointError
from segcli.files import json_number, write_json

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

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's event files (a folder)."""
        return self.path / "tensorboard"

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


def kfold_runs(folder: Path) -> list[RunDir] | None:
    """The fold runs a k-fold folder lists in its kfold.json, in fold order; None for any other folder."""
    record = folder / KFOLD_RECORD
    if not (folder.is_dir() and record.is_file()):
        return None
    try:
        return [RunDir(folder / name) for name in json.loads(record.read_text())["runs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{record}: unreadable k-fold record ({exc!r})") from None


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
    val_transforms: list[dict[str, Any]] | None = None
    """The val pipeline's transforms ([{name, params}, ...]): `evaluate` scores images through them, as validation
    scored them. None in older files (a checkpoint's experiment then holds them)."""
    resize: list[int] | None = None
    """[height, width] the val pipeline resized every image to: the model's input size, which predict, evaluate
    and exports' users apply by default (Albumentations' Resize, probabilities resized back)."""
    image_dtype: str | None = None
    """The training images' dtype (uint8, uint16, float32, ...), from the dataset check."""
    image_scale: float | None = None
    """What the training images were divided by to reach 0..1: 255 for 8-bit, 4095 for 12-bit data, 1 for floats."""
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
                val_transforms=_transforms(data["val_transforms"]) if data.get("val_transforms") is not None else None,
                resize=[int(v) for v in data["resize"]] if data.get("resize") else None,
                image_dtype=str(data["image_dtype"]) if data.get("image_dtype") else None,
                image_scale=float(data["image_scale"]) if data.get("image_scale") else None,
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
        resize = ""
        if self.resize:
            resize = (f"resized to {self.resize[1]}x{self.resize[0]} (WxH; OpenCV bilinear, the size the model was "
                      "trained at; resize the output probabilities back bilinearly), then ")  # fmt: skip
        return {
            **self.to_dict(),
            "input": {
                "name": INPUT_NAME,
                "layout": "NCHW",
                "dtype": "float32",
                "preprocessing": f"{'RGB ' if self.in_channels == 3 else ''}{resize}{recipe}; height and width padded "
                f"to a multiple of {self.size_multiple}"
                + (
                    f"; pixels of the training data's kind ({self.image_dtype}, up to {self.image_scale:g})"
                    if self.image_dtype and self.image_scale
                    else ""
                ),
            },
            "output": {
                "name": OUTPUT_NAME,
                "layout": "NCHW",
                "meaning": "logits of the foreground (sigmoid)"
                if self.binary
                else "logits, one channel per class (softmax)",
            },
        }


def _transforms(data: list[Any]) -> list[dict[str, Any]]:
    return [{"name": str(item["name"]), "params": dict(item.get("params") or {})} for item in data]


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
    """These weights' own val scores, under `val/*` whatever the weights are (evaluate compares with them)."""
    run_name: str
    experiment: dict[str, Any]
    scored_as: str = "val"
    """The prefix the run logged these weights' scores under: `val` (the trained weights), `val_ema` (the EMA),
    `val_avg` (the SWA average)."""

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
            "scored_as": self.scored_as,
        }

    @property
    def metric(self) -> dict[str, Any]:
        """The monitored score of these weights, named as the run logged it (`val_avg/mIoU` for the average)."""
        monitored = (self.experiment.get("monitor") or {}).get("metric", "val/mIoU")
        score = monitored.split("/", 1)[1]
        return {"name": f"{self.scored_as}/{score}", "value": json_number(self.metrics.get(f"val/{score}"))}


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive


def load_plain(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain values only, never pickled code. Anything else is one
    CheckpointError in segcli's words: torch's own (warnings about pickle protocols, advice to load with
    weights_only=False, which would run the file's code) would mislead."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4 ... please file an issue"
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and corrupt files have many types
        with path.open("rb") as stream:
            archive = stream.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if archive and not isinstance(exc, pickle.UnpicklingError):  # torch's format, cut short or damaged
            detail = str(exc).splitlines()[0].split(". ")[0][:200]
            raise CheckpointError(f"{path}: not a readable {what}: damaged or truncated ({detail})") from None
        raise CheckpointError(
            f"{path}: not a {what} (it is not a file of plain tensors; segcli never loads pickled code)"
        ) from None


def load_tagged(path: Path, expected_format: str, what: str, hint: str) -> dict[str, Any]:
    """`load_plain` of a dict whose "format" is `expected_format`."""
    payload = load_plain(path, what)
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        if isinstance(payload, dict) and isinstance(payload.get("hyper_parameters"), dict):
            raise CheckpointError(
                f"{path}: this is the full training state that `segcli train --resume` continues from, not a "
                f"model file; pass ckpt_best.pth, ckpt_latest.pth or average_model.pth from the same folder"
            )
        raise CheckpointError(f"{path}: not a {what} ({hint})")
    return payload


OLDER_SCORED_AS = {"average_model": "val_avg", "ema_model": "val_ema"}
"""Files written before checkpoints named their weights' scores: known by the file name."""


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
            scored_as=str(payload.get("scored_as") or OLDER_SCORED_AS.get(kind, "val")),
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
    """`run.json` in the run folder: what a later `--resume` needs to continue the same tracker runs."""

    run_name: str
    wandb_id: str | None = None
    mlflow_run_id: str | None = None
    finished: bool = False
    epochs_completed: int = 0
    seconds: float | None = None
    """The run's time: wall-clock seconds `segcli train` spent on it (checks, epochs, the final files), summed over
    resumes and updated after every epoch; every summary shows this one figure. None in records older than it."""
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
    if not path.exists():
        raise CheckpointError(f"{path}: no training state to resume from")
    state = load_plain(path, "segcli training state")
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(hparams, dict) or "experiment" not in hparams:
        raise CheckpointError(f"{path}: not a segcli training state (written by `segcli train`)")
    return state
