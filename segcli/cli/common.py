"""What the commands share: options spelled the same everywhere, consoles, progress, numbers, exit codes.

Light by design (typer, rich and the standard library): every command module imports it at start-up.
"""

from __future__ import annotations

import re
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

EXIT_PROBLEMS = 1  # found problems: validate-dataset, an export check, predict skipped files, a sweep, list-experiments
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C stop

# --- consoles and numbers ----------------------------------------------------------------------------


def stdout_console():
    """The terminal's width on a terminal; otherwise no wrapping at all, so paths and commands stay whole."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(width=100_000, soft_wrap=True, highlight=False)


def stderr_console():
    from rich.console import Console

    if sys.stderr.isatty():
        return Console(stderr=True, highlight=False)
    return Console(stderr=True, width=100_000, soft_wrap=True, highlight=False)


def fmt(value: float | None, digits: int = 4) -> str:
    """A score for a table: 4 decimals, '-' for a missing one or NaN (a class absent from the data)."""
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def counted(count: int, noun: str) -> str:
    """'1 mask', '3 masks'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 90:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def epoch_line(row: dict[str, float], max_epochs: int) -> str:
    """One epoch as a plain line (a log file, a pipe): scores, the epoch's time and what remains."""
    epoch, seconds = int(row["epoch"]), row["seconds"]
    remaining = duration(seconds * (max_epochs - epoch))
    return (
        f"epoch {epoch}/{max_epochs}: train loss {fmt(row.get('train/loss'))}, val loss {fmt(row.get('val/loss'))}, "
        f"val mIoU {fmt(row.get('val/mIoU'))}, val mDCC {fmt(row.get('val/mDCC'))}, {duration(seconds)}, "
        f"ETA {remaining}"
    )


class ProgressReport:
    """A progress bar on a terminal; elsewhere (nohup, a cluster's log file) a plain line every ~10%.

    Use as a context manager; `total(n)` once the count is known, `advance()` per item.
    """

    def __init__(self, description: str, enabled: bool = True, unit: str = "images"):
        self.description, self.unit = description, unit
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self._count, self._total, self._next_line = 0, None, 0
        self._started = time.monotonic()
        self._bar = self._task = None

    def __enter__(self) -> ProgressReport:
        if self.interactive:
            from rich.progress import Progress

            self._bar = Progress(console=stderr_console(), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=None)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc_info)

    def total(self, count: int) -> None:
        self._total = count
        if self._bar is not None:
            self._bar.update(self._task, total=count)

    def advance(self) -> None:
        self._count += 1
        if self._bar is not None:
            self._bar.advance(self._task)
        elif self.enabled and self._total and (self._count >= self._next_line or self._count == self._total):
            elapsed = time.monotonic() - self._started
            sys.stderr.write(f"{self.description}: {self._count}/{self._total} {self.unit} ({duration(elapsed)})\n")
            sys.stderr.flush()
            self._next_line = self._count + max(1, self._total // 10)


# --- shared options ------------------------------------------------------------------------------------

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", metavar="FILE", help="Experiment file (YAML), e.g. experiments/unetpp.yaml.")
]
OptionalConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="Experiment file.")]
ExperimentOpt = Annotated[
    Optional[str], typer.Option("--experiment", "-e", metavar="NAME", help="Experiment name (with --config).")
]


def complete_experiments(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion: the experiment names of the --config file given before."""
    config = ctx.params.get("config")
    if not config:
        return []
    from segcli.config.loader import load_experiment_file
    from segcli.errors import SegcliError

    try:
        names = list(load_experiment_file(Path(config)).experiments)
    except SegcliError:
        return []
    return [name for name in [*names, "all"] if name.startswith(incomplete)]


ExperimentsOpt = Annotated[
    list[str],
    typer.Option(
        "--experiment",
        "-e",
        metavar="NAME",
        help="Experiment name (repeatable; `all` runs every experiment of the file).",
        autocompletion=complete_experiments,
    ),
]

DatasetOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--dataset",
        metavar="PATH",
        help="Dataset root holding {train,val}/{images,labels}. Default: DATASET_PATH from .env.",
    ),
]
ClassesOpt = Annotated[
    Optional[str],
    typer.Option(
        "--classes", metavar="A,B,...", help="Comma-separated class names in label order. Default: CLASS_NAMES."
    ),
]
IgnoreIndexOpt = Annotated[
    Optional[int],
    typer.Option("--ignore-index", metavar="N", help="Label value that marks ignored pixels (not a class)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts instead of tables.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Keep the W&B run offline (`wandb sync` it later).")]
TrackerOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--tracker",
        metavar="NAME",
        help="Log to wandb, mlflow, tensorboard or none (repeat or comma-separate for several; overrides `tracker:`).",
    ),
]


def tracker_override(values: list[str] | None) -> list[str] | None:
    """`--tracker mlflow --tracker tensorboard` or `--tracker mlflow,tensorboard` -> the `tracker` key's value."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


BandsOpt = Annotated[
    Optional[str],
    typer.Option("--bands", metavar="R,G,B", help="Bands shown as red, green, blue (1-based), e.g. 3,2,1."),
]


def resolve_experiment_option(config: Path | None, experiment: str | None, overrides: dict | None = None):
    """`-c FILE -e NAME` -> the resolved experiment, or None when neither is given; one without the other is
    an error."""
    from segcli.errors import ConfigError

    if config is None and experiment is None:
        return None
    if config is None or experiment is None:
        raise ConfigError("--config and --experiment go together: name the experiment file and the experiment")
    from segcli.config.loader import load_experiment_file, resolve_experiment

    return resolve_experiment(load_experiment_file(config), experiment, config, overrides)


# --- after training: predict, evaluate, export-checkpoint ---------------------------------------


class Tta(str, Enum):
    flip = "flip"


MODEL_HELP = (
    "A checkpoint (ckpt_best.pth, ckpt_latest.pth, ema_model.pth, average_model.pth), a run folder (its "
    "ckpt_best.pth), an export with its sidecar, or a k-fold folder (the ensemble of its folds)"
)
ModelArg = Annotated[Path, typer.Argument(metavar="MODEL", help=MODEL_HELP + ".", show_default=False)]
ModelsArg = Annotated[
    list[Path],
    typer.Argument(
        metavar="MODEL...", help=MODEL_HELP + "; several are an ensemble (their probabilities averaged).",
        show_default=False,
    ),
]  # fmt: skip
EnsembleOpt = Annotated[
    Optional[list[Path]],
    typer.Option("--model", "-m", metavar="MODEL", help="Another model to ensemble with (repeatable): the "
                 "probabilities of all are averaged."),
]  # fmt: skip
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", min=1, metavar="N", help="Images per forward pass (tiles per pass with --tile).")
]
TileOpt = Annotated[
    Optional[int],
    typer.Option(
        "--tile",
        min=1,
        metavar="PIXELS",
        help="Sliding-window inference with tiles of this size (rounded up to the model's size multiple), "
        "blended where they overlap. Default: whole images.",
    ),
]
OverlapOpt = Annotated[
    float,
    typer.Option("--overlap", min=0.0, max=0.9, metavar="FRACTION", help="Fraction of a tile its neighbour shares."),
]
TtaOpt = Annotated[
    Optional[Tta],
    typer.Option("--tta", metavar="flip", help="Test-time augmentation: 'flip' averages with the mirrored image."),
]
ResizeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--resize",
        metavar="WxH|none",
        help="Run the model on images resized to WxH and resize the result back; `none`: at each image's own "
        "size. Default: the size the model was trained at when its val pipeline resized to one size.",
        show_default=False,
    ),
]
GpuOpt = Annotated[
    Optional[int], typer.Option("--gpu", min=0, metavar="N", help="Run on cuda:N. Default: cuda:0 if present.")
]
CpuOpt = Annotated[bool, typer.Option("--cpu", help="Run on the CPU even when a GPU is present.")]


def parse_resize(text: str | None, trained: list[int] | None = None) -> tuple[int, int] | None:
    """`--resize 128x96` (WxH, as segcli prints sizes) -> (height, width); `none` -> None (each image at its own
    size); not given -> `trained`, the (height, width) the model was trained at, if any."""
    if text is None:
        return tuple(trained) if trained else None
    if text.lower() == "none":
        return None
    from segcli.errors import ConfigError

    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        width = height = 0
    if width <= 0 or height <= 0:
        raise ConfigError(f"--resize {text}: write it as WIDTHxHEIGHT in pixels, e.g. --resize 480x360, or `none`")
    return height, width


def inference_options(batch_size: int, tile: int | None, overlap: float, tta, resize: str | None, info):
    """The options as given, `--resize` resolved against the model's `info` (its training size by default)."""
    from segcli.inference.engine import InferenceOptions

    return InferenceOptions(batch_size=batch_size, tile=tile, overlap=overlap, flip_tta=tta is Tta.flip,
                            resize=parse_resize(resize, info.resize))  # fmt: skip


def resize_note(resize: str | None, info) -> str | None:
    """A line saying that the model runs at the size it was trained at, when that was not asked for."""
    if resize is not None or not info.resize:
        return None
    height, width = info.resize
    return (f"running the model at {width}x{height}, the size it was trained at (its val_transforms resize to it); "
            "--resize none runs it at each image's own size")  # fmt: skip


def parse_duration(text: str | None, option: str) -> float | None:
    """`2h`, `90m`, `45min`, `1h30m`, `45s` or plain seconds -> seconds; a mistake names `option`."""
    if text is None:
        return None
    from segcli.errors import ConfigError

    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*",
                         text.lower())  # fmt: skip
    if not text.strip() or match is None or not any(match.groups()):
        raise ConfigError(f"{option} {text}: write a duration such as 2h, 90m, 1h30m or 600s")
    hours, minutes, secs = (float(value) if value else 0.0 for value in match.groups())
    seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ConfigError(f"{option} {text}: the duration must be positive")
    return seconds
