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
    """For each class, the fraction of its clips whose top prediction is that class."""
    targets, probs = _check(targets, probs)
    pred = probs.argmax(axis=1)
    out = np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        mine = targets[:, c] > 0
        if mine.any():
            out[c] = float((pred[mine] == c).mean())
    return out


def per_class_precision(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """For each class, the fraction of clips predicted as that class that carry it."""
    targets, probs = _check(targets, probs)
    pred = probs.argmax(axis=1)
    out = np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        chosen = pred == c
        if chosen.any():
            out[c] = float((targets[chosen, c] > 0).mean())
    return out


def lwlrap(targets: np.ndarray, probs: np.ndarray) -> float:
    """Label-weighted label-ranking average precision (the FSDKaggle2019 metric).

    For each true label of each clip, precision of the ranking at that label's rank; averaged
    over all true labels, so every label counts once.

    Examples
    --------
    >>> lwlrap(np.array([[1, 0, 1]]), np.array([[0.9, 0.8, 0.1]]))   # ranks 1 and 3: (1 + 2/3) / 2
    0.8333333333333333
    """
    targets, probs = _check(targets, probs)
    total, count = 0.0, 0
    for t, p in zip(targets > 0, probs):
        if not t.any():
            continue
        order = np.argsort(-p, kind="stable")
        hits = t[order]
        ranks = np.flatnonzero(hits) + 1
        precision = np.cumsum(hits)[ranks - 1] / ranks
        total += precision.sum()
        count += len(ranks)
    return float(total / count) if count else 0.0


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
    out = {"clips": int(len(targets)), "map@3": map_at_k(targets, probs, 3),
           "top1": top1_accuracy(targets, probs)}
    if multilabel:
        out["lwlrap"] = lwlrap(targets, probs)
        out["log_loss"] = binary_log_loss(targets, probs)
    else:
        out["log_loss"] = log_loss(targets, probs)
    return out


def plot_confusion(targets: np.ndarray, probs: np.ndarray, labels: Sequence[str], out: str | Path,
                   title: str = "") -> Path:
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
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > 0.5 else "black")
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
