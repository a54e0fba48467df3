"""Blend runs (LH with X, and more) with weights fitted on out-of-fold predictions.

The weights are non-negative and sum to one; they minimise the log loss of the weighted
geometric blend on the runs' out-of-fold predictions of the training clips (blacklisted clips
left out). Test predictions are only blended with those weights, never used to choose them.

An ensemble directory holds ``ensemble.json`` (runs, weights, each run's and the blend's
out-of-fold metrics), the blended ``oof.csv`` and ``predictions/<name>.csv`` for every
prediction file that all the runs have. ``soundtag tag`` and ``soundtag submit`` take it like
a run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundtag import evaluation
from soundtag.errors import DataError, ParameterError
from soundtag.inference.combine import geometric_mean
from soundtag.prediction.combine import fit_blend_weights
from soundtag.prediction.predictions import Predictions, read_predictions
from soundtag.runs import EnsembleDir, RunDir


@dataclass
class EnsembleResult:
    out_dir: Path
    runs: list[Path]
    weights: np.ndarray
    run_metrics: list[dict]
    blend_metrics: dict
    fitted_on: int
    predictions: list[Path]
    #: The equal-weight blend's out-of-fold metrics: nothing fitted on the clips it is scored on,
    #: unlike ``blend_metrics``, whose weights were.
    equal_weight_metrics: dict | None = None
    #: ``fitted`` or ``equal``
    weighting: str = "fitted"


def load_oof_predictions(run: str | Path, *, partial: bool = False) -> tuple[Predictions, np.ndarray]:
    """A finished run's out-of-fold predictions and which clips were trained on (not blacklisted).

    With ``partial``, only the clips of its finished folds (a run trained with ``--fold``)."""
    run = RunDir(run)
    oof = run.out_of_fold(partial=True) if partial else run.require_complete().out_of_fold()
    m = oof.manifest
    return Predictions(m.ids, list(m.labels), oof.probs, [tuple(c.labels) for c in m], m.multilabel), oof.in_training


def align(base: Predictions, other: Predictions, what: str) -> Predictions:
    """``other`` with ``base``'s clip order and label order; the clip sets must be equal."""
    missing = sorted(set(base.ids) - set(other.ids))
    extra = sorted(set(other.ids) - set(base.ids))
    if missing or extra:
        raise DataError(
            f"{what}: the clips differ ({len(missing)} missing, e.g. {missing[:3]}; {len(extra)} "
            f"extra, e.g. {extra[:3]}); blend runs of the same dataset"
        )
    other = other.reorder(base.labels)
    row = {c: i for i, c in enumerate(other.ids)}
    idx = [row[c] for c in base.ids]
    return Predictions(base.ids, base.labels, other.probs[idx], base.given, base.multilabel)


def ensemble_runs(
    runs: list[str | Path], out_dir: str | Path, *, partial: bool = False, weights: str = "fitted"
) -> EnsembleResult:
    """Fit blend weights on the runs' out-of-fold predictions and write the ensemble directory.

    With ``weights="equal"`` nothing is fitted: every run weighs the same, so the blend's
    out-of-fold score is not chosen on the clips it is computed on (``soundtag train``'s blend of
    two views).

    With ``partial``, runs trained on some folds only (``soundtag train --fold``) are blended on
    the clips of their finished folds, which must be the same in every run. The fitted weights
    are then chosen on the very clips they are scored on, as always; the equal-weight blend's
    metrics (``equal_weight_metrics``) have nothing fitted on them.
    """
    runs = [Path(r) for r in runs]
    if weights not in ("fitted", "equal"):
        raise ParameterError(f"weights={weights!r} must be 'fitted' or 'equal'")
    if len(runs) < 2:
        raise ParameterError(f"an ensemble needs at least two runs, got {len(runs)}")
    finished = [RunDir(r).require().finished_folds() for r in runs]
    if not partial:
        for r in runs:
            if missing := RunDir(r).unfinished_folds():
                raise DataError(
                    f"{r}: fold(s) {missing} are not finished; finish them with "
                    f"`soundtag train --resume {r}`, or blend the folds every run has finished "
                    "with `soundtag ensemble --partial`"
                )
    elif any(f != finished[0] for f in finished):
        raise DataError(
            "--partial blends runs that have finished the same folds; finished: "
            + ", ".join(f"{r}: {f}" for r, f in zip(runs, finished))
        )
    oofs, masks = zip(*(load_oof_predictions(r, partial=partial) for r in runs))
    base = oofs[0]
    aligned = [base] + [align(base, o, f"{r} against {runs[0]}") for r, o in zip(runs[1:], oofs[1:])]
    # Fit on the clips every run trained on: a clip blacklisted in any run is left out.
    fit_mask = np.ones(len(base.ids), dtype=bool)
    for o, m in zip(oofs, masks):
        keep = {c for c, t in zip(o.ids, m) if t}
        fit_mask &= np.array([c in keep for c in base.ids])
    targets = base.targets()
    stack = np.stack([p.probs for p in aligned])
    how = weights
    if how == "equal":
        weights = np.full(len(runs), 1 / len(runs))
    else:
        weights = fit_blend_weights(targets[fit_mask], stack[:, fit_mask], multilabel=base.multilabel)
    blended = geometric_mean(stack, weights=weights, multilabel=base.multilabel)
    run_metrics = [evaluation.summarize(targets, p.probs, multilabel=base.multilabel) for p in aligned]
    blend_metrics = evaluation.summarize(targets, blended, multilabel=base.multilabel)
    equal_weight_metrics = evaluation.summarize(
        targets, geometric_mean(stack, multilabel=base.multilabel), multilabel=base.multilabel
    )

    out = EnsembleDir(out_dir)
    out.predictions_dir.mkdir(parents=True, exist_ok=True)
    Predictions(base.ids, base.labels, blended, base.given, base.multilabel).write_csv(out.oof_csv)
    written = []
    for name in (p.stem for p in RunDir(runs[0]).prediction_files()):
        files = [RunDir(r).predictions_file(name) for r in runs]
        if not all(f.is_file() for f in files):
            continue
        tests = [read_predictions(f, multilabel=base.multilabel) for f in files]
        tests = [tests[0].reorder(base.labels)] + [
            align(tests[0].reorder(base.labels), t, str(f)) for t, f in zip(tests[1:], files[1:])
        ]
        probs = geometric_mean(np.stack([t.probs for t in tests]), weights=weights, multilabel=base.multilabel)
        written.append(
            Predictions(tests[0].ids, base.labels, probs, tests[0].given, base.multilabel).write_csv(
                out.predictions_file(name)
            )
        )
    out.write_info(
        {
            "runs": [
                {"path": out.member_path(r), "weight": float(w), "oof": m}
                for r, w, m in zip(runs, weights, run_metrics)
            ],
            "blend": {
                "oof": blend_metrics,
                "equal_weights_oof": equal_weight_metrics,
                "combination": "weighted geometric mean",
                "weights": how,
                "fitted_on": (
                    "out-of-fold predictions of the training clips, blacklisted clips left out"
                    if how == "fitted"
                    else None
                ),
                "fitted_clips": int(fit_mask.sum()),
                "partial": partial,
                "clips": len(base.ids),
            },
            "predictions": [p.name for p in written],
            "created": dt.datetime.now().isoformat(timespec="seconds"),
        }
    )
    return EnsembleResult(
        out.path, runs, weights, run_metrics, blend_metrics, int(fit_mask.sum()), written, equal_weight_metrics, how
    )
