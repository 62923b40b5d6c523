"""The `.env` file and the process switches that keep every command off the network."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segcli.errors import ConfigError

# Set before albumentations / huggingface_hub are imported: they read these at import time.
OFFLINE_SWITCHES = {
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations checks PyPI for updates on import
}


def apply_offline_switches() -> None:
    for key, value in OFFLINE_SWITCHES.items():
        os.environ.setdefault(key, value)


def load_env_file(path: Path | None = None) -> None:
    """Load `.env` from the current directory without overriding variables already set.

    A line python-dotenv cannot parse is an error: silently skipping it would drop a setting.
    """
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    path = path or Path.cwd() / ".env"
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as stream:
        for binding in parse_stream(stream):
            if binding.error:
                raise ConfigError(
                    f"{path}:{binding.original.line}: cannot parse "
                    f"{binding.original.string.strip()!r}; each line must be KEY=VALUE"
                )
    for key, value in dotenv_values(path).items():
        if value is not None:
            os.environ.setdefault(key, value)


def dataset_input(option: Path | None) -> Path:
    """`.env` loaded (never overriding the environment), then the dataset folder: --dataset, else DATASET_PATH.
    The folder must exist."""
    load_env_file()
    if option is None:
        value = os.environ.get("DATASET_PATH")
        if not value:
            raise ConfigError("no dataset: pass --dataset PATH or set DATASET_PATH in .env")
        option = Path(value)
    if not option.is_dir():
        raise ConfigError(f"dataset folder {option} does not exist; pass --dataset PATH or fix DATASET_PATH in .env")
    return option


@dataclass(frozen=True)
class DataInputs:
    dataset: Path
    class_names: list[str] | None
    """None only where the command can do without them and neither --classes nor CLASS_NAMES names them."""


def data_inputs(
    dataset: Path | None, classes: str | None = None, *, required: bool = True, default_count: int | None = None
) -> DataInputs:
    """What every command that reads a dataset starts from: `.env` loaded (never overriding the environment), the
    dataset folder (--dataset, else DATASET_PATH) and the class names (--classes, else CLASS_NAMES, else
    `class0..` for `default_count` classes; else None, or an error when `required`)."""
    root = dataset_input(dataset)
    if classes is None and not os.environ.get("CLASS_NAMES"):
        if default_count is not None:
            return DataInputs(root, [f"class{index}" for index in range(default_count)])
        if not required:
            return DataInputs(root, None)
    return DataInputs(root, class_names(classes))


def class_names(option: str | None) -> list[str]:
    """--classes, else CLASS_NAMES: comma-separated names in label order."""
    value = option if option is not None else os.environ.get("CLASS_NAMES")
    if value is None:
        raise ConfigError("no class names: pass --classes a,b,c or set CLASS_NAMES=a,b,c in .env (label order)")
    names = [name.strip() for name in value.split(",")]
    if not any(names):
        raise ConfigError("CLASS_NAMES is empty: list the class names in label order, e.g. CLASS_NAMES=background,road")
    if "" in names:
        raise ConfigError(f"CLASS_NAMES has an empty name: {value!r}; remove the extra comma")
    if len(set(names)) != len(names):
        raise ConfigError(f"CLASS_NAMES has duplicate names: {value!r}")
    return names


def wandb_project(option: str | None = None) -> str:
    return option or os.environ.get("WANDB_PROJECT") or "segcli"


def mlflow_experiment() -> str:
    """MLflow's counterpart of WANDB_PROJECT."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or "segcli"
