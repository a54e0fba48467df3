"""``soundtag clean --auto``: apply cleanlab's findings without a person, for those who trust it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from soundtag.cleaning.decisions import Decision, DecisionBook
from soundtag.cleaning.suspects import check_run, label_scores
from soundtag.errors import ParameterError
from soundtag.inference.blended import open_run


def auto_clean(
    run_dir: str | Path,
    lists_dir: str | Path,
    *,
    max_fraction: float = 0.05,
    relabel_above: float | None = None,
    method: str = "self_confidence",
) -> list[Decision]:
    """Blacklist (or relabel) the clips cleanlab flags, worst label quality first.

    Parameters
    ----------
    run_dir : a finished run
    lists_dir : the lists folder the decisions go to (``blacklist.csv``, ``relabel.csv``...)
    max_fraction : at most this share of the run's clips is decided by this call; cleanlab may
        flag fewer
    relabel_above : relabel to the top prediction instead of blacklisting when that prediction's
        probability is at least this (single-label runs only); None blacklists every flagged clip
    method : cleanlab's label-quality method (see :func:`soundtag.cleaning.suspects.label_scores`)

    Returns
    -------
    the decisions taken, in the order written. Clips that already have a decision (a person's
    review, or an earlier call) are left as they are.
    """
    if not 0 < max_fraction <= 1:
        raise ParameterError(f"max_fraction={max_fraction} must be in (0, 1], e.g. 0.05 for 5% of the clips")
    if relabel_above is not None and not 0 < relabel_above <= 1:
        raise ParameterError(f"relabel_above={relabel_above} must be in (0, 1], e.g. 0.9")
    run_dir = check_run(run_dir)
    oof = open_run(run_dir).out_of_fold()
    manifest, probs = oof.manifest, oof.probs
    given = [c.labels for c in manifest]
    quality, issues = label_scores(given, manifest.labels, probs, multilabel=manifest.multilabel, method=method)
    book = DecisionBook(lists_dir, clip_ids=manifest.ids, labels=manifest.labels)
    round_no = book.start_round(run_dir)
    decided = book.latest()
    limit = math.floor(max_fraction * len(manifest))
    flagged = [i for i in np.argsort(quality, kind="stable") if issues[i] and manifest[i].id not in decided]
    entries = []
    for i in flagged[:limit]:
        top = int(np.argmax(probs[i]))
        pred, p = manifest.labels[top], float(probs[i, top])
        reason = f"cleanlab --auto: label quality {quality[i]:.3f}, predicted {pred} ({p:.2f})"
        if relabel_above is not None and not manifest.multilabel and p >= relabel_above and pred not in given[i]:
            entries.append(Decision(manifest[i].id, "relabel", pred, reason, round_no))
        else:
            entries.append(Decision(manifest[i].id, "blacklist", "", reason, round_no))
    return book.decide_many(entries) if entries else []
