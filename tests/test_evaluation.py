"""Metrics: known answers worked by hand (ties included), the FSDKaggle2019 definitions of
lwlrap, scikit-learn, and the per-clip loop lwlrap was before, on random data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from soundtag import evaluation as ev
from soundtag.errors import ParameterError


def _loop_lwlrap(targets: np.ndarray, probs: np.ndarray) -> float:
    """lwlrap as soundtag computed it before: a Python loop over clips, ties broken by class order."""
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


def _fsdkaggle2019_per_class(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class lwlrap and class weights as the FSDKaggle2019 baseline's notebook computes them
    (Dan Ellis, ``calculate_per_class_lwlrap``), here with ties counted against as in scikit-learn."""
    n, c = scores.shape
    precisions = np.zeros((n, c))
    for i in range(n):
        for j in np.flatnonzero(truth[i] > 0):
            at_or_above = scores[i] >= scores[i, j]
            precisions[i, j] = (truth[i] > 0)[at_or_above].sum() / at_or_above.sum()
    labels_per_class = (truth > 0).sum(axis=0)
    return precisions.sum(axis=0) / np.maximum(1, labels_per_class), labels_per_class / labels_per_class.sum()


def _random(rng, n: int, c: int, *, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    targets = (rng.random((n, c)) < 0.15).astype(np.int64)
    targets[rng.random(n) < 0.1] = 0  # some clips without a label
    probs = rng.random((n, c))
    return targets, (np.round(probs, decimals) if decimals is not None else probs)


# --- lwlrap --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets, probs, expected",
    [
        ([[1, 0, 1]], [[0.9, 0.8, 0.1]], (1 + 2 / 3) / 2),  # ranks 1 and 3
        ([[1, 0, 1]], [[0.2, 0.9, 0.1]], (1 / 2 + 2 / 3) / 2),  # ranks 2 and 3
        # Ties count against: label 0 tied with a wrong label has rank 2, whatever the class order.
        ([[1, 0, 1]], [[0.5, 0.5, 0.1]], (1 / 2 + 2 / 3) / 2),
        ([[0, 1, 1]], [[0.5, 0.5, 0.1]], (1 / 2 + 2 / 3) / 2),
        # Two true labels tied at the top: both rank 2 with 2 hits.
        ([[1, 1, 0]], [[0.7, 0.7, 0.1]], 1.0),
        # All four tied: each true label has rank 4 with 2 hits above or level.
        ([[1, 0, 0, 1]], [[0.25, 0.25, 0.25, 0.25]], 0.5),
        # A true label tied with a wrong one below two true ones: ranks 1, 2 and then 4 with 3 hits.
        ([[1, 1, 1, 0]], [[0.9, 0.8, 0.3, 0.3]], (1 + 1 + 3 / 4) / 3),
        # Label-weighted, not clip-weighted (that would be (1 + (1/2 + 2/3) / 2) / 2): the 3 true
        # labels count once each, and the clip without a label is left out.
        (
            [[1, 0, 0], [0, 1, 1], [0, 0, 0]],
            [[0.9, 0.1, 0.0], [0.9, 0.5, 0.1], [0.3, 0.3, 0.3]],
            (1 + 1 / 2 + 2 / 3) / 3,
        ),
        ([[0, 1, 0], [1, 0, 1]], [[0.9, 0.1, 0.0], [0.1, 0.5, 0.9]], (1 / 2 + 1 + 2 / 3) / 3),
    ],
)
def test_lwlrap_known_answers(targets, probs, expected):
    assert ev.lwlrap(np.array(targets), np.array(probs)) == pytest.approx(expected, abs=1e-12)


def test_lwlrap_of_no_labels_is_zero_and_shapes_are_checked():
    assert ev.lwlrap(np.zeros((3, 4)), np.ones((3, 4))) == 0.0
    with pytest.raises(ParameterError, match=r"must both be \(clips, classes\)"):
        ev.lwlrap(np.zeros((3, 4)), np.ones((3, 5)))


@pytest.mark.parametrize("seed", range(5))
def test_lwlrap_equals_the_old_loop_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    targets, probs = _random(rng, 5000 + 97 * seed, 41)  # over one block of clips; no ties
    assert ev.lwlrap(targets, probs) == pytest.approx(_loop_lwlrap(targets, probs), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_lwlrap_is_the_fsdkaggle2019_class_weighted_lwlrap_and_sklearns_lrap(seed):
    rng = np.random.default_rng(100 + seed)
    targets, probs = _random(rng, 300, 12, decimals=1)  # scores to 0.1: many ties
    got = ev.lwlrap(targets, probs)
    per_class, weight = _fsdkaggle2019_per_class(targets, probs)
    assert got == pytest.approx(float((per_class * weight).sum()), abs=1e-12)
    labelled = targets.sum(axis=1) > 0
    assert got == pytest.approx(
        label_ranking_average_precision_score(
            targets[labelled], probs[labelled], sample_weight=targets[labelled].sum(axis=1)
        ),
        abs=1e-12,
    )
    # Not the order of the classes: the same data with the columns reversed scores the same.
    assert ev.lwlrap(targets[:, ::-1], probs[:, ::-1]) == pytest.approx(got, abs=1e-12)


# --- per-class precision and recall, map@k --------------------------------------------------


def test_per_class_precision_and_recall_by_hand():
    t = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]])
    # top-1 predictions: 0, 1, 1, 2. Class 2 has no clip (recall NaN) and one false prediction.
    np.testing.assert_array_equal(ev.per_class_recall(t, p), [0.5, 0.5, np.nan])
    np.testing.assert_array_equal(ev.per_class_precision(t, p), [1.0, 0.5, 0.0])
    # Class 2 never predicted: its precision is NaN, not 0.
    np.testing.assert_array_equal(ev.per_class_precision(t[:3], p[:3]), [1.0, 0.5, np.nan])
    # Multi-label: a top-1 hit for any of the clip's labels.
    ml = np.array([[1, 1, 0], [0, 1, 1]])
    np.testing.assert_array_equal(
        ev.per_class_recall(ml, np.array([[0.1, 0.9, 0.0], [0.1, 0.2, 0.7]])), [0.0, 0.5, 1.0]
    )
    assert np.isnan(ev.per_class_recall(np.zeros((0, 3)), np.zeros((0, 3)))).all()


def _loop_per_class(targets, probs):
    """Per-class recall and precision as soundtag computed them before (a loop over classes)."""
    pred = probs.argmax(axis=1)
    recall, precision = np.full(targets.shape[1], np.nan), np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        mine, chosen = targets[:, c] > 0, pred == c
        if mine.any():
            recall[c] = (pred[mine] == c).mean()
        if chosen.any():
            precision[c] = (targets[chosen, c] > 0).mean()
    return recall, precision


@pytest.mark.parametrize("multilabel", [False, True])
def test_per_class_precision_and_recall_equal_the_old_loops(multilabel):
    rng = np.random.default_rng(7)
    n, c = 400, 30  # the last classes are never true (recall NaN)
    if multilabel:
        targets, probs = _random(rng, n, c)
        targets[:, -3:] = 0
    else:
        targets = np.eye(c, dtype=int)[rng.integers(0, c - 3, n)]
        probs = rng.random((n, c)) ** 4
    probs[:, -2:] = 0.0  # never predicted: precision NaN
    recall, precision = _loop_per_class(targets, probs)
    np.testing.assert_allclose(ev.per_class_recall(targets, probs), recall, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ev.per_class_precision(targets, probs), precision, rtol=0, atol=1e-15)
    assert np.isnan(recall).any() and np.isnan(precision).any()  # the NaN cases are exercised


def test_map_at_k_is_kept():
    t = np.array([[1, 0, 0], [0, 1, 0]])
    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    assert ev.map_at_k(t, p, k=3) == 0.75 and ev.map_at_k(t, p, k=1) == 0.5
