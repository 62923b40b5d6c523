"""User mistakes. Each becomes one `error: ...` line and its exit code; anything else is a bug."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SegcliError(Exception):
    """A mistake the user can fix. The message names the file/field and the fix."""

    exit_code = 2


class ConfigError(SegcliError):
    """An experiment file, an option or the .env file is wrong."""


class DatasetError(SegcliError):
    """The dataset is missing, has the wrong layout or fails the dataset check."""


class CheckpointError(SegcliError):
    """A checkpoint cannot be read or is not a segcli checkpoint."""


class MissingPackageError(ConfigError):
    """A package this needs is not installed (an install without dependencies, a hand-made environment)."""

    def __init__(self, package: str, purpose: str, extra: str):
        super().__init__(f"{purpose} needs the `{package}` package, which is not installed: pip install "
                         f"'segcli[{extra}]'")  # fmt: skip


class StorageError(SegcliError):
    """A file could not be written (disk full, no permission); what was there before is intact."""


class TrainingDivergedError(SegcliError):
    """The loss became NaN or infinite; no checkpoint was written from the broken weights."""

    exit_code = 3


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """A hint listing the options closest to `name`, or all of them when none is close."""
    options = sorted(options)
    by_lower = {option.lower(): option for option in options}
    close = [by_lower[match] for match in difflib.get_close_matches(name.lower(), by_lower, n=3, cutoff=0.6)]
    if close:
        return "did you mean " + ", ".join(f"'{c}'" for c in close) + "?"
    shown = ", ".join(options[:40]) + (", ..." if len(options) > 40 else "")  # every experiment key fits
    return f"valid options: {shown}"
