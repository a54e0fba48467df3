"""What the command modules share: the console, the options every stage takes, recipes by name.

Each module of :mod:`soundtag.commands` is the thin command line of one stage
(:mod:`~soundtag.commands.data`, :mod:`~soundtag.commands.prediction`,
:mod:`~soundtag.commands.cleaning`); :mod:`soundtag.cli` gathers them into one app.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Callable, List

import typer
from rich.console import Console
from rich.markup import escape  # messages name files, and file names may hold [brackets]

__all__ = [
    "DEFAULT_CACHE",
    "DataOpt",
    "LayoutOpt",
    "OverrideOpt",
    "console",
    "err_console",
    "escape",
    "load_recipes",
    "rerun_note",
]

console = Console()
err_console = Console(stderr=True)

DEFAULT_CACHE = Path(".cache/soundtag/features")
DataOpt = typer.Option(
    ..., "--data", "-d", help="dataset folder, CSV, manifest .jsonl, or a registered name (esc50, esc10, fsdkaggle2018)"
)
LayoutOpt = typer.Option(None, "--layout", help="dataset layout; detected when omitted")
OverrideOpt = typer.Option(
    [], "--set", "-o", help="override a recipe field: section.key=value (e.g. features.hop_length=441); repeatable"
)


def load_recipes(names: List[str], overrides: List[str], *, manifest=None):
    """Each named recipe (built-in, YAML file, or ``auto`` chosen from ``manifest``) with the same
    ``-o`` overrides applied."""
    from soundtag.resolve import resolve_recipe

    return [resolve_recipe(name, overrides, manifest=manifest).recipe for name in names]


def rerun_note(kept: Callable[[], str]) -> Callable[[], str]:
    """A stop's note (:func:`soundtag.stopping.on_stop`) for a command that goes on where it
    stopped when run again: what was ``kept``, then the command line itself."""
    return lambda: f"{kept()}; run the same command again to go on: {shlex.join(['soundtag', *sys.argv[1:]])}"
