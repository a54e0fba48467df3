"""Metrics and plots over out-of-fold predictions.

Every function takes ``targets`` as a ``(clips, classes)`` 0/1 matrix (one 1 per row for
single-label data) and ``probs`` as ``(clips, classes)`` scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from soundtag.errors import ParameterError


def _check(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    targets, probs = np.asarray(targets), np.asarray(probs, dtype=np.float64)
    if targets.shape != probs.shape or targets.ndim != 2:
        raise ParameterError(f"targets {targets.shape} and probs {probs.shape} must both be (clips, classes)")
    return targets, probs


def map_at_k(targets: np.ndarray, probs: np.ndarray, k: int = 3) -> float:
    """Mean average precision at ``k`` (the FSDKaggle2018 metric).

    For single-label data a clip scores ``1/rank`` when its label is among the top ``k``
    predictions and 0 otherwise. With several true labels, precision at each hit is averaged
    over ``min(#labels, k)``.

    Examples
    --------
    >>> t = np.array([[1, 0, 0], [0, 1, 0]])
    >>> p = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    >>> map_at_k(t, p, k=3)    # ranks 1 and 2
    0.75
    """
    targets, probs = _check(targets, probs)
    k = min(k, probs.shape[1])  # fewer labels than k: every label is ranked
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(targets, order, axis=1) > 0
    precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    n_true = np.minimum(targets.sum(axis=1), k)
    scores = np.where(n_true > 0, (precision * hits).sum(axis=1) / np.maximum(n_true, 1), 0.0)
    return float(scores.mean())


def top1_accuracy(targets: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of clips whose highest-scoring class is one of their labels."""
    targets, probs = _check(targets, probs)
    return float((targets[np.arange(len(probs)), probs.argmax(axis=1)] > 0).mean())


def log_loss(targets: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Cross-entropy of the true labels (single-label: softmax probabilities)."""
    targets, probs = _check(targets, probs)
    probs = np.clip(probs, eps, 1.0)
    return float(-(targets * np.log(probs)).sum(axis=1).mean())


def binary_log_loss(targets: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy over every clip and class (multi-label: sigmoid probabilities)."""
    targets, probs = _check(targets, probs)
    p = np.clip(probs, eps, 1 - eps)
    return float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())


def per_class_recall(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """For each class, the fraction of its clips whose top prediction is that class (NaN: no clip).

    Examples
    --------
    >>> t = np.array([[1, 0], [1, 0], [0, 1]])
    >>> per_class_recall(t, np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]))
    array([0.5, 1. ])
    """
    return _top1_precision_recall(targets, probs)[1]


def per_class_precision(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """For each class, the fraction of clips predicted as that class that carry it (NaN: none predicted).

    Examples
    --------
    >>> t = np.array([[1, 0], [1, 0], [0, 1]])
    >>> per_class_precision(t, np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]))
    array([1. , 0.5])
    """
    return _top1_precision_recall(targets, probs)[0]


def _top1_precision_recall(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall of the top-1 prediction, by scikit-learn.

    The top prediction is compared with the label indicator matrix, so a multi-label clip
    counts as a hit for a class when its top prediction is any of its labels.
    """
    from sklearn.metrics import precision_recall_fscore_support

    targets, probs = _check(targets, probs)
    if len(probs) == 0:
        empty = np.full(targets.shape[1], np.nan)
        return empty, empty.copy()
    top1 = np.zeros(probs.shape, dtype=bool)
    top1[np.arange(len(probs)), probs.argmax(axis=1)] = True
    precision, recall, _, _ = precision_recall_fscore_support(targets > 0, top1, average=None, zero_division=np.nan)
    return precision.astype(np.float64), recall.astype(np.float64)


def lwlrap(targets: np.ndarray, probs: np.ndarray) -> float:
    """Label-weighted label-ranking average precision (the FSDKaggle2019 metric).

    For each true label of each clip, the precision of the clip's ranking at that label (the
    fraction of the labels ranked at or above it that are true), averaged over every true
    label, so each label counts once. This is FSDKaggle2019's per-class lwlrap weighted by each
    class's share of the true labels, and scikit-learn's
    ``label_ranking_average_precision_score`` with every clip weighted by its number of
    labels (the tests check both). It is computed here with array operations, in blocks of
    clips, rather than through scikit-learn's function, which ranks each clip with scipy and
    is much slower at FSD50K's size.

    Ties count against the prediction, as in scikit-learn: a label's rank is the number of
    labels scored at least as high, so a label tied with others is ranked below them all and
    the score never depends on the order of the classes. Clips without a label are left out;
    the result is 0.0 when no clip has one.

    Examples
    --------
    >>> lwlrap(np.array([[1, 0, 1]]), np.array([[0.9, 0.8, 0.1]]))   # ranks 1 and 3: (1 + 2/3) / 2
    0.8333333333333333
    >>> lwlrap(np.array([[1, 0, 1]]), np.array([[0.5, 0.5, 0.1]]))   # a tie: ranks 2 and 3: (1/2 + 2/3) / 2
    0.5833333333333333
    """
    targets, probs = _check(targets, probs)
    truth = targets > 0
    count = int(truth.sum())
    if count == 0:
        return 0.0
    total = sum(
        float(_label_precisions(truth[i : i + _BLOCK], probs[i : i + _BLOCK]).sum())
        for i in range(0, len(probs), _BLOCK)
    )
    return total / count


_BLOCK = 4096  # clips per block in _label_precisions: a few (block, classes) arrays at once


def _label_precisions(truth: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(clips, classes)``: at each true label, its clip's ranking precision there; 0 elsewhere.

    A label's rank is the number of labels scored at least as high as it (ties count against),
    and its precision the number of true labels among those divided by the rank.
    """
    n_classes = probs.shape[1]
    order = np.argsort(-probs, axis=1, kind="stable")
    scores = np.take_along_axis(probs, order, axis=1)
    hits = np.take_along_axis(truth, order, axis=1)
    # In each row sorted by score, a label's rank is 1 + the last position holding its score.
    run_end = np.ones(scores.shape, dtype=bool)
    run_end[:, :-1] = scores[:, :-1] != scores[:, 1:]
    last = np.where(run_end, np.arange(n_classes), n_classes)
    last = np.minimum.accumulate(last[:, ::-1], axis=1)[:, ::-1]
    precision = np.where(hits, np.take_along_axis(np.cumsum(hits, axis=1), last, axis=1) / (last + 1), 0.0)
    out = np.zeros(probs.shape)
    np.put_along_axis(out, order, precision, axis=1)
    return out


def confusion(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Counts ``[true class, predicted class]`` for single-label data."""
    targets, probs = _check(targets, probs)
    n = targets.shape[1]
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (targets.argmax(axis=1), probs.argmax(axis=1)), 1)
    return m


def summarize(targets: np.ndarray, probs: np.ndarray, *, multilabel: bool = False) -> dict:
    """The headline metrics of a set of predictions, as a plain dict."""
    if len(targets) == 0:
        return {"clips": 0}
    out = {"clips": int(len(targets)), "map@3": map_at_k(targets, probs, 3), "top1": top1_accuracy(targets, probs)}
    if multilabel:
        out["lwlrap"] = lwlrap(targets, probs)
        out["log_loss"] = binary_log_loss(targets, probs)
    else:
        out["log_loss"] = log_loss(targets, probs)
    return out


def plot_confusion(
    targets: np.ndarray, probs: np.ndarray, labels: Sequence[str], out: str | Path, title: str = ""
) -> Path:
    """Write a confusion-matrix PNG, rows normalised to recall."""
    from soundtag.plots import save_png, subplots

    m = confusion(targets, probs).astype(float)
    m /= np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.28 * len(labels) + 2)
    fig, ax = subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion (row-normalised)")
    if len(labels) <= 15:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if m[i, j] > 0:
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if m[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_png(fig, out)


def plot_learning_curves(histories: dict[str, "object"], out: str | Path) -> Path:
    """Write a PNG of training and validation loss per epoch, one line per fold.

    ``histories`` maps a fold name to a pandas DataFrame with ``epoch`` and any of
    ``train_loss``, ``val_loss``, ``val_map3`` columns (Lightning's CSV log, one row per epoch).
    """
    from soundtag.plots import save_png, subplots

    fig, (ax_loss, ax_map) = subplots(1, 2, figsize=(11, 4))
    for fold, df in histories.items():
        for col, style in (("train_loss", "--"), ("val_loss", "-")):
            if col in df:
                d = df.dropna(subset=[col])
                ax_loss.plot(d["epoch"], d[col], style, label=f"{fold} {col.split('_')[0]}")
        if "val_map3" in df:
            d = df.dropna(subset=["val_map3"])
            ax_map.plot(d["epoch"], d["val_map3"], label=fold)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_map.set(xlabel="epoch", ylabel="MAP@3", title="validation MAP@3")
    ax_loss.legend(fontsize=7)
    ax_map.legend(fontsize=7)
    return save_png(fig, out)
