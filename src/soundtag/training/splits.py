"""Cross-validation folds that never leak: one source group never spans two folds.

Rules, in order:
1. the dataset's own folds when every clip has one (ESC-50, ESC-10) and ``strategy="auto"``;
2. single-label data: scikit-learn's ``StratifiedGroupKFold`` when clips have source groups,
   else ``StratifiedKFold``;
3. multi-label data: iterative stratification (``iterstrat``'s ``MultilabelStratifiedKFold``)
   over source groups (a group carries the union of its clips' labels).
A fixed seed gives the same folds every time.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from soundtag.errors import ParameterError
from soundtag.manifest import Manifest

Strategy = Literal["auto", "given", "stratified"]


def label_matrix(manifest: Manifest) -> np.ndarray:
    """``(clips, classes)`` float32 0/1 matrix in the manifest's label order."""
    index = {lab: i for i, lab in enumerate(manifest.labels)}
    y = np.zeros((len(manifest), len(manifest.labels)), dtype=np.float32)
    for row, clip in enumerate(manifest):
        for lab in clip.labels:
            y[row, index[lab]] = 1.0
    return y


def make_folds(manifest: Manifest, n_folds: int = 5, *, seed: int = 0, strategy: Strategy = "auto") -> np.ndarray:
    """Assign each clip a fold number ``0 .. n_folds-1``.

    Parameters
    ----------
    manifest : the training clips
    n_folds : number of folds (ignored with the dataset's own folds, which set their own count)
    seed : shuffling seed of the stratified splitters
    strategy : ``auto`` (the dataset's folds when it has them), ``given`` (require them),
        ``stratified`` (always compute)

    Returns
    -------
    np.ndarray [shape=(clips,), dtype=int]
    """
    if strategy not in ("auto", "given", "stratified"):
        raise ParameterError(f"strategy={strategy!r} must be 'auto', 'given' or 'stratified'")
    given = [c.fold for c in manifest]
    if strategy in ("auto", "given") and all(f is not None for f in given):
        values = sorted(set(given))
        return np.array([values.index(f) for f in given])
    if strategy == "given":
        raise ParameterError(f"{manifest.name}: not every clip has a fold; use strategy='stratified'")
    if n_folds < 2:
        raise ParameterError(f"n_folds={n_folds} must be at least 2")
    y = label_matrix(manifest)
    groups = np.array([c.group if c.group is not None else f"__clip_{i}" for i, c in enumerate(manifest)])
    folds = np.full(len(manifest), -1)
    if not manifest.multilabel:
        from sklearn.model_selection import StratifiedGroupKFold

        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y.argmax(axis=1), groups)
        for k, (_, val) in enumerate(splits):
            folds[val] = k
        return folds
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    unique, inverse = np.unique(groups, return_inverse=True)
    group_y = np.zeros((len(unique), y.shape[1]), dtype=np.float32)
    np.maximum.at(group_y, inverse, y)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(unique)), group_y)):
        folds[np.isin(inverse, val)] = k
    return folds


def validation_mask(manifest: Manifest, folds: np.ndarray, fold: int, *, verified_only: bool = False) -> np.ndarray:
    """Clips that validate fold ``fold``: its clips, only the manually verified ones if asked.

    Clips of the fold left out of validation are not trained on either (they would leak).
    """
    mask = folds == fold
    if verified_only:
        verified = np.array([c.manually_verified is not False for c in manifest])
        mask &= verified
    return mask
