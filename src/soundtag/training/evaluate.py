"""Evaluate a run from its out-of-fold predictions: every clip scored by a model that never
trained on it, with subsets (manually verified, not blacklisted, blacklisted) reported apart.

A run trained in part (``soundtag train --fold 0``) is scored on the clips of its finished
folds; the metrics say which folds those are (``folds``) and that the run is not ``complete``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from soundtag import evaluation
from soundtag._io import atomic_write_json, atomic_write_text
from soundtag.errors import ParameterError
from soundtag.inference.blended import BlendedRun, open_run
from soundtag.manifest import Manifest
from soundtag.runs import RunDir
from soundtag.training.splits import label_matrix


def evaluate_run(run_dir: str | Path | RunDir | BlendedRun, *, plots: bool = True, tta: int | None = None) -> dict:
    """Compute and write ``metrics.json`` and the plots of a run (and ``oof.csv`` once every fold
    is finished); a run with unfinished folds is scored on its finished folds' clips. A blended
    run (LH + X, an ensemble directory) is scored on its blended out-of-fold predictions.

    With ``tta``, the out-of-fold predictions are made again from the kept fold models with
    that many shifted copies of every chunk
    (:func:`~soundtag.inference.clips.predict_out_of_fold`) and the metrics go to
    ``metrics-tta<N>.json``; the run's own predictions, metrics and plots are left as they are.

    Returns
    -------
    The metrics: ``all``, ``not_blacklisted``, ``blacklisted`` (and ``verified`` when the
    manifest says), each with ``clips``, ``map@3``, ``top1`` and ``log_loss`` or ``lwlrap``;
    ``per_fold``, ``per_class``; ``folds`` (the finished folds scored), ``complete`` and ``tta``
    (the shifted copies the predictions were made with).
    """
    run = open_run(run_dir)
    blended = isinstance(run, BlendedRun)
    if blended and tta is not None:
        raise ParameterError(
            f"--tta predicts again with one run's fold models: evaluate each view of {run.path} "
            f"({', '.join(str(r.path) for r in run.runs())}) with it"
        )
    if tta is None:
        oof = run.require().out_of_fold(partial=True)
    else:
        from soundtag.inference.clips import predict_out_of_fold

        oof = predict_out_of_fold(run, tta=tta, progress=False)
    manifest, probs, folds, in_training = oof.manifest, oof.probs, oof.folds, oof.in_training
    targets = label_matrix(manifest)
    verified = np.array([c.manually_verified is not False for c in manifest])
    ml = manifest.multilabel
    subsets = {"all": np.ones(len(manifest), bool), "not_blacklisted": in_training, "blacklisted": ~in_training}
    if any(c.manually_verified is not None for c in manifest):
        subsets["verified"] = verified
    metrics = {name: evaluation.summarize(targets[m], probs[m], multilabel=ml) for name, m in subsets.items()}
    metrics["per_fold"] = {
        int(k): evaluation.summarize(targets[folds == k], probs[folds == k], multilabel=ml) for k in np.unique(folds)
    }
    recall = evaluation.per_class_recall(targets, probs)
    precision = evaluation.per_class_precision(targets, probs)
    metrics["per_class"] = {
        lab: {"recall": _num(r), "precision": _num(p), "clips": int(targets[:, i].sum())}
        for i, (lab, r, p) in enumerate(zip(manifest.labels, recall, precision))
    }
    metrics["folds"], metrics["complete"] = oof.finished, oof.complete
    recipes = run.recipes() if blended else [run.recipe()]
    metrics["tta"] = recipes[0].training.tta if tta is None else tta
    # keep: best picks each fold's epoch by its validation clips, which are the clips it scores
    metrics["selected_on_scored_clips"] = any(r.training.keep == "best" for r in recipes)
    if tta is not None:
        atomic_write_json(run.path / f"metrics-tta{tta}.json", metrics)
        return metrics
    atomic_write_json(run.metrics_file, metrics)
    if oof.complete:
        _write_oof_csv(run.oof_csv, manifest, probs, folds, in_training)
    if plots:
        scope = "out-of-fold" if oof.complete else f"fold(s) {oof.finished} only"
        if not ml:
            evaluation.plot_confusion(
                targets,
                probs,
                manifest.labels,
                run.confusion_png,
                title=f"{run.path.name}: {scope}, top-1 {metrics['all']['top1']:.3f}",
            )
        histories = _histories(run)
        if histories:
            evaluation.plot_learning_curves(histories, run.learning_curves_png)
    return metrics


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _write_oof_csv(
    path: Path, manifest: Manifest, probs: np.ndarray, folds: np.ndarray, in_training: np.ndarray
) -> None:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["clip_id", "fold", "labels", "manually_verified", "blacklisted", *manifest.labels])
    for c, p, f, t in zip(manifest, probs, folds, in_training):
        out.writerow(
            [
                c.id,
                int(f),
                ",".join(c.labels),
                "" if c.manually_verified is None else int(c.manually_verified),
                int(not t),
                *(f"{v:.6f}" for v in p),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def _histories(run: str | Path | RunDir | BlendedRun) -> dict:
    import pandas as pd

    run = open_run(run)
    out = {}
    for fold, files in run.fold_metric_logs().items():
        frames = [df for df in map(pd.read_csv, files) if "epoch" in df]
        if frames:
            df = pd.concat(frames, ignore_index=True)
            out[fold] = df.groupby("epoch").mean(numeric_only=True).reset_index()
    return out
