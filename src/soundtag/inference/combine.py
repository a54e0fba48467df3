"""How an ensemble's outputs become one prediction: chunks into clips, fold models into one.

* Chunks of one clip (X view, test-time shifts): the arithmetic mean of their probabilities,
  as training's validation and out-of-fold predictions do, so test and OOF numbers agree.
* Fold models (and blended runs, :mod:`soundtag.prediction.combine`): a weighted geometric mean,
  the mean of log-probabilities, renormalised to sum to one for single-label data. The original
  kernel multiplied the folds' probabilities without taking the root, which sharpens the result
  with every model added and, in a blend, silently weights the run with more folds more.

NumPy only: the ONNX engine tags through these without importing PyTorch.
"""

from __future__ import annotations

import numpy as np

from soundtag.errors import ParameterError

__all__ = ["EPS", "clip_means", "combine_folds", "ensemble_clip_probabilities", "geometric_mean"]

#: Probabilities are clipped to ``[EPS, 1]`` before the logarithm: one model's zero must not
#: veto a class outright.
EPS = 1e-7


def geometric_mean(
    probs: np.ndarray, *, weights: np.ndarray | None = None, axis: int = 0, multilabel: bool = False
) -> np.ndarray:
    """Weighted geometric mean of probability arrays along ``axis``.

    Parameters
    ----------
    probs : e.g. ``(models, clips, classes)`` probabilities
    weights : one non-negative weight per entry along ``axis`` (default: equal), summing to one
    multilabel : keep each class's value as is; otherwise renormalise every row to sum to one

    Examples
    --------
    >>> p = np.array([[0.8, 0.2], [0.2, 0.8]])
    >>> geometric_mean(p[:, None])                  # two models that disagree: undecided
    array([[0.5, 0.5]])
    >>> geometric_mean(np.array([[[0.9, 0.1]], [[0.9, 0.1]]]))   # agreeing models: unchanged
    array([[0.9, 0.1]])
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[axis]
    if weights is None:
        weights = np.full(n, 1.0 / n)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n,) or (weights < 0).any() or not np.isclose(weights.sum(), 1.0):
        raise ParameterError(f"weights={weights.tolist()} must be {n} non-negative numbers summing to 1")
    logs = np.log(np.clip(probs, EPS, 1.0))
    shape = [1] * probs.ndim
    shape[axis] = n
    mean = np.exp((logs * weights.reshape(shape)).sum(axis=axis))
    if multilabel:
        return mean
    return mean / mean.sum(axis=-1, keepdims=True)


def clip_means(chunk_probs: np.ndarray, owner: np.ndarray, n_clips: int) -> np.ndarray:
    """Mean of each clip's chunk probabilities along the second-to-last axis.

    ``chunk_probs`` is ``(..., chunks, classes)`` and ``owner[j]`` the clip of chunk ``j``;
    returns ``(..., n_clips, classes)``.
    """
    chunk_probs = np.asarray(chunk_probs, dtype=np.float64)
    owner = np.asarray(owner)
    counts = np.bincount(owner, minlength=n_clips)
    if (counts == 0).any():
        raise ParameterError(f"clip(s) {np.flatnonzero(counts == 0).tolist()[:5]} have no chunk")
    moved = np.moveaxis(chunk_probs, -2, 0)
    total = np.zeros((n_clips,) + moved.shape[1:])
    np.add.at(total, owner, moved)
    return np.moveaxis(total / counts.reshape((-1,) + (1,) * (moved.ndim - 1)), 0, -2)


def combine_folds(
    fold_chunk_probs: np.ndarray, owner: np.ndarray, n_clips: int, *, multilabel: bool = False
) -> np.ndarray:
    """Clip probabilities from each fold model's chunk probabilities.

    ``fold_chunk_probs`` is ``(folds, chunks, classes)``; chunks are averaged per clip within
    each fold, then the folds are combined by their geometric mean. Returns
    ``(n_clips, classes)``.
    """
    return geometric_mean(clip_means(fold_chunk_probs, owner, n_clips), axis=0, multilabel=multilabel)


def ensemble_clip_probabilities(fold_probs, clips_chunks, recipe, *, tta: int, multilabel: bool) -> np.ndarray:
    """``(clips, classes)``: the clips' chunks, each with ``tta`` shifted copies
    (:func:`~soundtag.features.views.add_tta_copies`), through an ensemble at once, then
    :func:`combine_folds`. What ``predict`` does for a batch of clips and ``tag`` for one file.

    Parameters
    ----------
    fold_probs : ``(chunks, mels, frames) -> (folds, chunks, classes)``, the ensemble in any
        engine (PyTorch or ONNX Runtime)
    clips_chunks : each clip's ``(n_chunks, mels, frames)`` view
    recipe : the run's recipe (the shifts are sized to its training shift)
    """
    from soundtag.features.views import add_tta_copies

    per_clip = [add_tta_copies(chunks, recipe, tta) for chunks in clips_chunks]
    owner = np.concatenate([np.full(len(chunks), i) for i, chunks in enumerate(per_clip)])
    return combine_folds(fold_probs(np.concatenate(per_clip)), owner, len(per_clip), multilabel=multilabel)
