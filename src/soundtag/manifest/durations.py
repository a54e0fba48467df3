"""The distribution of a dataset's clip durations, as ``soundtag data check --probe`` prints it
and the ``auto`` recipe reads it."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from soundtag.errors import ParameterError

__all__ = ["DURATION_BINS", "as_durations", "duration_histogram", "duration_summary", "window_mismatch"]

#: The ranges of the printed histogram, seconds.
DURATION_BINS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, math.inf)


def as_durations(durations: Sequence[float]) -> np.ndarray:
    """``durations`` as a float array; an empty one is an error (no clip has a known duration)."""
    d = np.asarray(durations, dtype=float)
    if d.size == 0:
        raise ParameterError("durations=[] is empty: no clip has a known duration")
    return d


def duration_summary(durations: Sequence[float]) -> dict[str, float]:
    """``min``, ``p10``, ``p50``, ``p90`` and ``max`` of clip durations, seconds.

    Examples
    --------
    >>> duration_summary([1.0, 2.0, 3.0])["p50"]
    2.0
    """
    d = as_durations(durations)
    p10, p50, p90 = (float(v) for v in np.percentile(d, [10, 50, 90]))
    return {"min": float(d.min()), "p10": p10, "p50": p50, "p90": p90, "max": float(d.max())}


def duration_histogram(durations: Sequence[float], edges: Sequence[float] = DURATION_BINS) -> list[tuple[str, int]]:
    """Clip counts per duration range ``[edges[i], edges[i+1])``, as ``(label, count)`` rows.

    Examples
    --------
    >>> duration_histogram([0.2, 0.7, 0.8, 12.0], edges=(0, 0.5, 1, 10, float("inf")))
    [('0-0.5 s', 1), ('0.5-1 s', 2), ('1-10 s', 0), ('>= 10 s', 1)]
    """
    d = as_durations(durations)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        label = f">= {lo:g} s" if math.isinf(hi) else f"{lo:g}-{hi:g} s"
        rows.append((label, int(np.sum((d >= lo) & (d < hi)))))
    return rows


def window_mismatch(durations: Sequence[float], window: float, *, kind: str = "lh") -> str | None:
    """A warning when most clips are much shorter (under half) or, for an LH head, much longer
    (over twice) than the recipe's ``window``; None when they fit.

    An X recipe covers a long clip with chunks, so only clips much shorter than a chunk count.

    Examples
    --------
    >>> window_mismatch([0.5] * 10, 5.0)
    '100% of clips are shorter than half the 5 s window (median 0.50 s): the view is mostly padding'
    >>> window_mismatch([5.0] * 10, 5.0) is None
    True
    """
    d = as_durations(durations)
    if window <= 0:
        raise ParameterError(f"window={window} must be positive")
    what = "window" if kind == "lh" else "chunk"
    median = float(np.median(d))
    shorter = float(np.mean(d < window / 2))
    longer = float(np.mean(d > 2 * window))
    if shorter > 0.5:
        return (
            f"{shorter:.0%} of clips are shorter than half the {window:g} s {what} (median {median:.2f} s): "
            f"the view is mostly padding"
        )
    if kind == "lh" and longer > 0.5:
        return (
            f"{longer:.0%} of clips are longer than twice the {window:g} s window (median {median:.2f} s): "
            f"the LH view sees only their first {window:g} s"
        )
    return None
