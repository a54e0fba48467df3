"""Self-verification (CP-JKU, 2nd place in FSDKaggle2018): which unverified labels to believe.

One round's decision, from a run's out-of-fold posteriors: an unverified clip is *accepted*
when the posterior of its own label reaches ``threshold`` (at most ``per_class`` a class, the
most confident first), *relabelled* when the model is at least ``relabel_threshold`` sure of
another label (the same cap, counted for the new label), and *dropped* otherwise. Verified clips
are always kept as they are. The rounds themselves (retrain on verified + accepted, repeat) are
ordinary training runs; the command that chains them is still to be built (issue 14).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soundtag.errors import ParameterError

__all__ = ["Verdicts", "verify_labels"]


@dataclass(frozen=True)
class Verdicts:
    """One round's decision over a run's clips (indices into its manifest).

    Attributes
    ----------
    accepted : unverified clips whose label the model confirms
    relabelled : unverified clips given another label, with ``new_labels`` (class indices)
    dropped : unverified clips left out of the next round
    new_labels : the label each of ``relabelled`` gets
    """

    accepted: np.ndarray
    relabelled: np.ndarray
    dropped: np.ndarray
    new_labels: np.ndarray


def _capped(candidates: np.ndarray, classes: np.ndarray, confidence: np.ndarray, per_class: int | None,
            used: np.ndarray) -> np.ndarray:
    """``candidates`` kept under the per-class cap, most confident first (ties: earlier clip);
    ``used`` counts what each class already took and is updated."""
    keep = []
    for i in candidates[np.argsort(-confidence[candidates], kind="stable")]:
        c = classes[i]
        if per_class is None or used[c] < per_class:
            used[c] += 1
            keep.append(i)
    return np.array(sorted(keep), dtype=int)


def verify_labels(probs: np.ndarray, targets: np.ndarray, verified: np.ndarray, *, threshold: float = 0.95,
                  per_class: int | None = None, relabel_threshold: float | None = None) -> Verdicts:
    """Decide one round of self-verification for single-label data.

    Parameters
    ----------
    probs : ``(clips, classes)`` out-of-fold posteriors
    targets : ``(clips, classes)`` one-hot given labels
    verified : ``(clips,)`` True where a person checked the label
    threshold : the posterior of the given label an unverified clip needs to be accepted
    per_class : at most this many accepted (and, apart, relabelled) clips a class; None: no cap
    relabel_threshold : the posterior another label needs for a relabel; None: never relabel

    Examples
    --------
    >>> probs = np.array([[0.97, 0.03], [0.60, 0.40], [0.02, 0.98], [0.99, 0.01]])
    >>> targets = np.eye(2)[[0, 0, 0, 1]]
    >>> v = verify_labels(probs, targets, np.zeros(4, bool), threshold=0.95, relabel_threshold=0.95)
    >>> v.accepted.tolist(), v.relabelled.tolist(), v.new_labels.tolist(), v.dropped.tolist()
    ([0], [2, 3], [1, 0], [1])
    """
    probs, targets, verified = np.asarray(probs, float), np.asarray(targets), np.asarray(verified, bool)
    if probs.shape != targets.shape or probs.ndim != 2 or len(verified) != len(probs):
        raise ParameterError(f"probs {probs.shape}, targets {targets.shape} and verified ({len(verified)},) "
                             "must describe the same clips and classes")
    if (targets.sum(axis=1) != 1).any():
        raise ParameterError("self-verification takes single-label data: every clip needs exactly one label")
    for name, value in (("threshold", threshold), ("relabel_threshold", relabel_threshold)):
        if value is not None and not 0 < value <= 1:
            raise ParameterError(f"{name}={value} must be in (0, 1]")
    if per_class is not None and per_class < 0:
        raise ParameterError(f"per_class={per_class} must be at least 0")
    given = targets.argmax(axis=1)
    own = probs[np.arange(len(probs)), given]
    unverified = np.flatnonzero(~verified)
    accepted = _capped(unverified[own[unverified] >= threshold], given, own, per_class,
                       np.zeros(probs.shape[1], int))
    rest = np.setdiff1d(unverified, accepted)
    others = probs.copy()
    others[np.arange(len(probs)), given] = -np.inf
    best_other, best_conf = others.argmax(axis=1), others.max(axis=1)
    relabelled = np.array([], dtype=int)
    if relabel_threshold is not None:
        sure = rest[best_conf[rest] >= relabel_threshold]
        relabelled = _capped(sure, best_other, best_conf, per_class, np.zeros(probs.shape[1], int))
    dropped = np.setdiff1d(rest, relabelled)
    return Verdicts(accepted, relabelled, dropped, best_other[relabelled])
