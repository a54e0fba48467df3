"""Evaluate a run from its out-of-fold predictions: every clip scored by a model that never
trained on it, with subsets (manually verified, not blacklisted, blacklisted) reported apart."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from soundtag import evaluation
from soundtag._io import atomic_write_json, atomic_write_text
from soundtag.errors import DataError
from soundtag.manifest import Manifest
from soundtag.training.splits import label_matrix


def load_oof(run_dir: str | Path) -> tuple[Manifest, np.ndarray, np.ndarray, np.ndarray]:
    """The run's clips, their out-of-fold probabilities, folds and training flags, in manifest order."""
    run_dir = Path(run_dir)
    manifest = Manifest.from_jsonl(run_dir / "manifest.jsonl")
    with open(run_dir / "folds.csv", newline="") as fh:
        rows = {r["clip_id"]: r for r in csv.DictReader(fh)}
    manifest = manifest.filter(lambda c: c.id in rows)  # clips whose audio failed have no row
    row_of = {c.id: i for i, c in enumerate(manifest)}
    probs = np.full((len(manifest), len(manifest.labels)), np.nan, dtype=np.float32)
    for done in sorted(run_dir.glob("fold-*/done.json")):
        info = json.loads(done.read_text())
        fold_probs = np.load(done.parent / "oof.npy")
        probs[[row_of[c] for c in info["clips"]]] = fold_probs
    missing = int(np.isnan(probs[:, 0]).sum())
    if missing:
        raise DataError(f"{run_dir}: {missing} clip(s) have no out-of-fold prediction yet; "
                        "finish the run with `soundtag train --resume`")
    folds = np.array([int(rows[c.id]["fold"]) for c in manifest])
    in_training = np.array([rows[c.id]["in_training"] == "True" for c in manifest])
    return manifest, probs, folds, in_training


def evaluate_run(run_dir: str | Path, *, plots: bool = True) -> dict:
    """Compute and write ``metrics.json``, ``oof.csv`` and the plots of a finished run."""
    run_dir = Path(run_dir)
    manifest, probs, folds, in_training = load_oof(run_dir)
    targets = label_matrix(manifest)
    verified = np.array([c.manually_verified is not False for c in manifest])
    ml = manifest.multilabel
    subsets = {"all": np.ones(len(manifest), bool), "not_blacklisted": in_training, "blacklisted": ~in_training}
    if any(c.manually_verified is not None for c in manifest):
        subsets["verified"] = verified
    metrics = {name: evaluation.summarize(targets[m], probs[m], multilabel=ml) for name, m in subsets.items()}
    metrics["per_fold"] = {int(k): evaluation.summarize(targets[folds == k], probs[folds == k], multilabel=ml)
                           for k in np.unique(folds)}
    recall = evaluation.per_class_recall(targets, probs)
    precision = evaluation.per_class_precision(targets, probs)
    metrics["per_class"] = {lab: {"recall": _num(r), "precision": _num(p), "clips": int(targets[:, i].sum())}
                            for i, (lab, r, p) in enumerate(zip(manifest.labels, recall, precision))}
    atomic_write_json(run_dir / "metrics.json", metrics)
    _write_oof_csv(run_dir / "oof.csv", manifest, probs, folds, in_training)
    if plots:
        if not ml:
            evaluation.plot_confusion(targets, probs, manifest.labels, run_dir / "confusion.png",
                                      title=f"{run_dir.name}: out-of-fold, top-1 {metrics['all']['top1']:.3f}")
        histories = _histories(run_dir)
        if histories:
            evaluation.plot_learning_curves(histories, run_dir / "learning_curves.png")
    return metrics


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _write_oof_csv(path: Path, manifest: Manifest, probs: np.ndarray, folds: np.ndarray, in_training: np.ndarray) -> None:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["clip_id", "fold", "labels", "manually_verified", "blacklisted", *manifest.labels])
    for c, p, f, t in zip(manifest, probs, folds, in_training):
        out.writerow([c.id, int(f), ",".join(c.labels), "" if c.manually_verified is None else int(c.manually_verified),
                      int(not t), *(f"{v:.6f}" for v in p)])
    atomic_write_text(path, buf.getvalue())


def _histories(run_dir: Path) -> dict:
    import pandas as pd

    out = {}
    for logs in sorted(run_dir.glob("fold-*/logs")):
        # metrics.csv, and metrics-until-epoch-N.csv for the epochs before each resume
        frames = [pd.read_csv(f) for f in sorted(logs.glob("metrics*.csv"))]
        frames = [df for df in frames if "epoch" in df]
        if frames:
            df = pd.concat(frames, ignore_index=True)
            out[logs.parent.name] = df.groupby("epoch").mean(numeric_only=True).reset_index()
    return out
