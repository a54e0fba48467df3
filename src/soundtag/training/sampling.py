"""Class balance per epoch: oversampling to the largest class, or a class-balanced sampler."""

from __future__ import annotations

from typing import Literal

import numpy as np

from soundtag.errors import ParameterError

Balance = Literal["oversample", "balanced", "none"]


def oversample_indices(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices that bring every class up to the largest class's count, as imbalanced-learn's
    ``RandomOverSampler``: all original clips once, plus random repeats of the smaller classes.

    Examples
    --------
    >>> idx = oversample_indices(np.array([0, 0, 0, 1]), np.random.default_rng(0))
    >>> np.bincount(np.array([0, 0, 0, 1])[idx]).tolist()
    [3, 3]
    """
    classes = np.asarray(classes)
    counts = np.bincount(classes)
    target = counts.max()
    out = [np.arange(len(classes))]
    for c, n in enumerate(counts):
        if 0 < n < target:
            out.append(rng.choice(np.flatnonzero(classes == c), size=target - n, replace=True))
    return rng.permutation(np.concatenate(out))


def epoch_indices(classes: np.ndarray, balance: Balance, rng: np.random.Generator) -> np.ndarray:
    """The clip indices of one training epoch under ``balance``.

    ``oversample``: :func:`oversample_indices`; ``balanced``: as many draws as clips, each class
    equally likely; ``none``: every clip once, shuffled. ``classes`` is each clip's (first) class.
    """
    classes = np.asarray(classes)
    if balance == "oversample":
        return oversample_indices(classes, rng)
    if balance == "balanced":
        counts = np.bincount(classes)
        weights = 1.0 / counts[classes]
        return rng.choice(len(classes), size=len(classes), replace=True, p=weights / weights.sum())
    if balance == "none":
        return rng.permutation(len(classes))
    raise ParameterError(f"balance={balance!r} must be 'oversample', 'balanced' or 'none'")
