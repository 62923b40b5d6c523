"""Consoles for tables: the terminal's width, or a wide fixed width when piped so rows stay whole."""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 160


def stdout_console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
