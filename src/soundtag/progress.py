"""Progress bars for long loops: rich's own ``Progress``, switched off with ``disable``."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def progress_bar(
    enabled: bool, total: int | None, label: str, *, completed: int = 0, transfer: bool = False
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over ``total`` steps; yields ``advance(n)``.

    Parameters
    ----------
    enabled : draw the bar; when false (or ``total`` is 0) rich's ``disable=True`` draws nothing
    total : steps to come; None when unknown
    label : what is running, shown left of the bar
    completed : steps already done (the bytes of a resumed download)
    transfer : the steps are bytes: show sizes and speed instead of ``done/total``

    Examples
    --------
    >>> with progress_bar(False, 3, "decoding") as advance:
    ...     for _ in range(3):
    ...         advance(1)
    """
    # Imported here: decoding workers import the modules that use this without drawing a bar.
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    counts = (DownloadColumn(), TransferSpeedColumn()) if transfer else (MofNCompleteColumn(),)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), *counts, TimeRemainingColumn(), disable=not enabled or total == 0
    ) as bar:
        task = bar.add_task(label, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)
