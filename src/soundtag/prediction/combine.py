"""Blending runs: a weighted geometric mean of their probabilities, with weights fitted on
out-of-fold predictions (:func:`fit_blend_weights`). How chunks and fold models are combined
within a run is :mod:`soundtag.inference.combine`, whose geometric mean this uses.
"""

from __future__ import annotations

import numpy as np

from soundtag.errors import ParameterError
from soundtag.inference.combine import geometric_mean

__all__ = ["blend_loss", "fit_blend_weights"]


def blend_loss(targets: np.ndarray, probs: np.ndarray, weights: np.ndarray, *, multilabel: bool) -> float:
    """Log loss of the weighted geometric blend of ``probs`` ``(runs, clips, classes)``."""
    from soundtag import evaluation

    blended = geometric_mean(probs, weights=weights, multilabel=multilabel)
    return (evaluation.binary_log_loss if multilabel else evaluation.log_loss)(targets, blended)


def fit_blend_weights(targets: np.ndarray, probs: np.ndarray, *, multilabel: bool = False) -> np.ndarray:
    """Non-negative weights summing to one that minimise the blend's log loss.

    Parameters
    ----------
    targets : ``(clips, classes)`` 0/1 labels of the clips the weights are fitted on; these
        must be out-of-fold predictions, never the test set
    probs : ``(runs, clips, classes)`` each run's out-of-fold probabilities

    Returns
    -------
    ``(runs,)`` weights. The search is SLSQP on the simplex from equal weights; the log loss
    of a geometric blend is convex in the weights, so its minimum is the global one.
    """
    from scipy.optimize import minimize

    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    if n == 1:
        return np.ones(1)
    if probs.shape[1:] != np.shape(targets):
        raise ParameterError(f"probs {probs.shape} and targets {np.shape(targets)} do not match")
    result = minimize(
        lambda w: blend_loss(targets, probs, _simplex(w), multilabel=multilabel),
        np.full(n, 1.0 / n),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
    )
    return _simplex(result.x)


def _simplex(w: np.ndarray) -> np.ndarray:
    """Project the optimiser's iterate onto the simplex (it may step a hair outside)."""
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
