"""Prediction files: one row per clip, one probability column per label.

``clip_id,labels,<label 1>,<label 2>,...`` where ``labels`` holds the clip's given labels
(comma-separated, empty for unlabelled test clips). A run's ``oof.csv`` has the same shape
with a few more bookkeeping columns, and is read by the same function.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundtag._io import atomic_write_text
from soundtag.errors import DataError

#: Columns of prediction and out-of-fold files that are not labels.
BOOKKEEPING = ("clip_id", "fold", "labels", "manually_verified", "blacklisted")


@dataclass
class Predictions:
    ids: list[str]
    labels: list[str]
    probs: np.ndarray  # (clips, labels)
    given: list[tuple[str, ...]]  # each clip's given labels; () when unknown
    multilabel: bool = False

    def __post_init__(self):
        self.probs = np.asarray(self.probs, dtype=np.float64)
        if self.probs.shape != (len(self.ids), len(self.labels)):
            raise DataError(
                f"predictions of shape {self.probs.shape} do not fit {len(self.ids)} clips "
                f"and {len(self.labels)} labels"
            )

    @property
    def labelled(self) -> bool:
        """Whether every clip has given labels, so the predictions can be scored."""
        return bool(self.ids) and all(self.given)

    def targets(self) -> np.ndarray:
        """``(clips, labels)`` 0/1 matrix of the given labels."""
        col = {lab: i for i, lab in enumerate(self.labels)}
        out = np.zeros(self.probs.shape, dtype=np.float32)
        for row, labs in enumerate(self.given):
            for lab in labs:
                if lab not in col:
                    raise DataError(f"clip {self.ids[row]}: label {lab!r} is not one of the model's labels")
                out[row, col[lab]] = 1.0
        return out

    def reorder(self, labels: list[str]) -> "Predictions":
        """The same predictions with columns in the order of ``labels`` (the same set)."""
        if sorted(labels) != sorted(self.labels):
            raise DataError(f"label sets differ: {sorted(set(labels) ^ set(self.labels))[:10]}")
        idx = [self.labels.index(lab) for lab in labels]
        return Predictions(self.ids, list(labels), self.probs[:, idx], self.given, self.multilabel)

    def write_csv(self, path: str | Path) -> Path:
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(["clip_id", "labels", *self.labels])
        for clip_id, given, row in zip(self.ids, self.given, self.probs):
            out.writerow([clip_id, ",".join(given), *(f"{p:.7g}" for p in row)])
        atomic_write_text(path, buf.getvalue())
        return Path(path)


def read_predictions(path: str | Path, *, multilabel: bool | None = None) -> Predictions:
    """Read a predictions file (``soundtag predict``, ``ensemble``) or a run's ``oof.csv``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist; make one with `soundtag predict RUN --data ...`")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        rows = list(reader)
    if not header or "clip_id" not in header:
        raise DataError(f"{path}: not a predictions file (its first row must name clip_id and the labels)")
    label_cols = [i for i, h in enumerate(header) if h not in BOOKKEEPING]
    id_col = header.index("clip_id")
    given_col = header.index("labels") if "labels" in header else None
    probs = np.empty((len(rows), len(label_cols)))
    for r, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: row {r} has {len(row)} fields, the header {len(header)}")
        try:
            probs[r - 2] = [float(row[i]) for i in label_cols]
        except ValueError as exc:
            raise DataError(f"{path}: row {r}: {exc}") from exc
    given = [tuple(x for x in row[given_col].split(",") if x) if given_col is not None else () for row in rows]
    if multilabel is None:
        multilabel = any(len(g) > 1 for g in given) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    return Predictions([row[id_col] for row in rows], [header[i] for i in label_cols], probs, given, multilabel)
