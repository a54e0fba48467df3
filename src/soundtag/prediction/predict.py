"""Predict every clip of a dataset with every fold model of a run.

Features come from the run's feature store (computed once, like training's), so predicting a
test set costs one pass of the models. Each clip's chunks (one for LH, all of them for X, plus
shifted copies with test-time augmentation) go through every fold model; chunks are averaged
per clip and the folds combined by their geometric mean
(:func:`~soundtag.inference.combine.combine_folds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from soundtag.errors import DataError
from soundtag.inference.clips import predict_store_clips
from soundtag.inference.combine import geometric_mean
from soundtag.manifest import Manifest
from soundtag.prediction.predictions import Predictions
from soundtag.progress import progress_bar
from soundtag.runs import EnsembleDir, RunDir


@dataclass
class PredictResult:
    predictions: Predictions
    path: Path
    failures: list = field(default_factory=list)  # clips whose audio could not be decoded
    metrics: dict | None = None  # when the dataset is labelled


def predict_dataset(
    run: str | Path,
    manifest: Manifest,
    *,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    tta: int | None = None,
    batch_clips: int = 64,
    progress: bool = True,
) -> PredictResult:
    """Predict ``manifest``'s clips with ``run``'s fold ensemble and write the predictions.

    Parameters
    ----------
    run : a finished run directory
    manifest : the clips (labelled or not; labels must be among the run's)
    out : predictions CSV (default ``<run>/predictions/<dataset name>.csv``)
    cache_dir : feature store folder (default: the run's own)
    tta : shifted copies of every chunk added at test time (default: the recipe's ``training.tta``)
    batch_clips : clips per forward pass
    """
    from soundtag import evaluation
    from soundtag.features.extract import extract_features
    from soundtag.inference.fold_models import load_run

    if EnsembleDir(run).is_ensemble():
        return _predict_blend(EnsembleDir(run), manifest, out, cache_dir, tta, batch_clips, progress)
    run = RunDir(run).require()
    loaded = load_run(run.path)
    recipe = loaded.recipe
    tta = recipe.training.tta if tta is None else tta
    unknown = sorted(set(manifest.labels) - set(loaded.labels))
    if unknown:
        raise DataError(f"{manifest.name}: label(s) {unknown[:10]} are not among the run's {len(loaded.labels)} labels")
    cache_dir = cache_dir or run.cache_dir()
    # shard="all": this process predicts every clip, even when a launcher started several.
    store, summary = extract_features(manifest, recipe, cache_dir=cache_dir, progress=progress, shard="all")
    failed = {f.clip_id for f in summary.failures}
    clips = [c for c in manifest if c.id not in failed]
    with progress_bar(progress, len(clips), f"predict {manifest.name}") as advance:
        probs = predict_store_clips(loaded, store, clips, tta=tta, batch_clips=batch_clips, advance=advance)
    predictions = Predictions(
        [c.id for c in clips], loaded.labels, probs, [tuple(c.labels) for c in clips], loaded.multilabel
    )
    path = Path(out) if out else run.predictions_file(manifest.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    predictions.write_csv(path)
    metrics = (
        evaluation.summarize(predictions.targets(), probs, multilabel=loaded.multilabel)
        if predictions.labelled
        else None
    )
    return PredictResult(predictions, path, summary.failures, metrics)


def _predict_blend(blend: EnsembleDir, manifest: Manifest, out, cache_dir, tta, batch_clips, progress) -> PredictResult:
    """Every run of the blend predicts (into its own ``predictions/``), then their weighted
    geometric mean, as its out-of-fold predictions were blended."""
    from soundtag import evaluation

    parts = [
        (predict_dataset(run, manifest, cache_dir=cache_dir, tta=tta, batch_clips=batch_clips, progress=progress), w)
        for run, w in blend.members()
    ]
    first = parts[0][0].predictions
    # a clip some run could not decode has no blended prediction
    ids = [c for c in first.ids if all(c in set(p.predictions.ids) for p, _ in parts[1:])]
    stack = []
    for p, _ in parts:
        row = {c: i for i, c in enumerate(p.predictions.ids)}
        stack.append(p.predictions.reorder(first.labels).probs[[row[c] for c in ids]])
    weights = np.array([w for _, w in parts], dtype=float)
    probs = geometric_mean(np.stack(stack), weights=weights, multilabel=first.multilabel)
    given = {c: g for c, g in zip(first.ids, first.given)}
    predictions = Predictions(ids, first.labels, probs, [given[c] for c in ids], first.multilabel)
    path = Path(out) if out else blend.predictions_file(manifest.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    predictions.write_csv(path)
    failures = list({f.clip_id: f for p, _ in parts for f in p.failures}.values())  # one per clip
    metrics = (
        evaluation.summarize(predictions.targets(), probs, multilabel=first.multilabel)
        if predictions.labelled
        else None
    )
    return PredictResult(predictions, path, failures, metrics)
