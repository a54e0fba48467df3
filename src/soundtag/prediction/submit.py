"""Competition submission files from predictions.

* ``kaggle`` (FSDKaggle2018, single-label): ``fname,label`` with the three most probable
  labels separated by spaces, best first, scored by MAP@3.
* ``kaggle-multilabel`` (FSDKaggle2019 style): ``fname`` and one probability column per label.

Rows follow ``sample_submission.csv`` when one is given (Kaggle scores by file name but
checks the row count); a test clip it lists without a prediction is an error, never a
silently missing row.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from soundtag._io import atomic_write_text
from soundtag.errors import DataError, ParameterError
from soundtag.prediction.predictions import Predictions
from soundtag.prediction.tagger import top_k

FORMATS = ("kaggle", "kaggle-multilabel")


def sample_order(sample_submission: str | Path) -> list[str]:
    """The ``fname`` column of a sample submission, in its order."""
    path = Path(sample_submission)
    if not path.is_file():
        raise DataError(f"sample submission {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if "fname" not in (reader.fieldnames or []):
            raise DataError(f"{path}: no fname column (found {reader.fieldnames})")
        return [row["fname"] for row in reader]


def submission_format(predictions: Predictions, fmt: str | None = None) -> str:
    """``fmt`` checked, or the default for ``predictions``: ``kaggle-multilabel`` for multi-label
    predictions, else ``kaggle``."""
    fmt = fmt or ("kaggle-multilabel" if predictions.multilabel else "kaggle")
    if fmt not in FORMATS:
        raise ParameterError(f"format={fmt!r} must be one of {', '.join(FORMATS)}")
    return fmt


def write_submission(
    predictions: Predictions, out: str | Path, *, fmt: str | None = None, sample_submission: str | Path | None = None
) -> Path:
    """Write ``predictions`` as a submission file.

    Parameters
    ----------
    fmt : ``kaggle`` or ``kaggle-multilabel``; default from the predictions (multi-label or not)
    sample_submission : the competition's ``sample_submission.csv``; rows follow its order and
        every clip it lists must be predicted. Without it, the predictions' own order is kept.
    """
    fmt = submission_format(predictions, fmt)
    row_of = {c: i for i, c in enumerate(predictions.ids)}
    order = sample_order(sample_submission) if sample_submission else list(predictions.ids)
    missing = [c for c in order if c not in row_of]
    if missing:
        raise DataError(
            f"{len(missing)} test clip(s) of {sample_submission} have no prediction, e.g. "
            f"{', '.join(missing[:5])}; predict the whole test set before submitting"
        )
    buf = io.StringIO()
    out_csv = csv.writer(buf)
    if fmt == "kaggle":
        # Labels are space-separated in this format, so a label must not contain a space.
        names = [lab.replace(" ", "_") for lab in predictions.labels]
        out_csv.writerow(["fname", "label"])
        for c in order:
            out_csv.writerow([c, " ".join(lab for lab, _ in top_k(predictions.probs[row_of[c]], names, 3))])
    else:
        out_csv.writerow(["fname", *predictions.labels])
        for c in order:
            out_csv.writerow([c, *(f"{p:.6f}" for p in predictions.probs[row_of[c]])])
    atomic_write_text(out, buf.getvalue())
    return Path(out)
