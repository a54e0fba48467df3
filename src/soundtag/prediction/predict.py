"""Predict every clip of a dataset with every fold model of a run.

Features come from the run's feature store (computed once, like training's), so predicting a
test set costs one pass of the models. Each clip's chunks (one for LH, all of them for X, plus
shifted copies with test-time augmentation) go through every fold model; chunks are averaged
per clip and the folds combined by their geometric mean
(:func:`~soundtag.prediction.combine.combine_folds`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from soundtag.errors import DataError
from soundtag.features.views import add_tta_copies, eval_chunks
from soundtag.manifest import Manifest
from soundtag.prediction.combine import combine_folds
from soundtag.prediction.predictions import Predictions
from soundtag.progress import progress_bar
from soundtag.runs import OutOfFold, RunDir


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
    from soundtag.prediction.fold_models import load_run

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
        probs = _clip_probabilities(loaded, store, clips, tta=tta, batch_clips=batch_clips, advance=advance)
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


def predict_out_of_fold(
    run: str | Path | RunDir, *, tta: int | None = None, batch_clips: int = 64, progress: bool = True
) -> OutOfFold:
    """A run's out-of-fold predictions made again from its kept fold models, with ``tta``
    shifted copies of every chunk (default: the recipe's ``training.tta``): every clip by the
    model of the fold it was held out in, as training predicted it.

    This scores test-time augmentation on a run without training it again
    (``soundtag evaluate RUN --tta N``); the run's own predictions are left as they are.
    """
    from soundtag.features.extract import extract_features
    from soundtag.prediction.fold_models import load_run

    run = (run if isinstance(run, RunDir) else RunDir(run)).require()
    oof = run.out_of_fold(partial=True)
    recipe = run.recipe()
    tta = recipe.training.tta if tta is None else tta
    # The features are in the run's store already (one look-up for every fold); any that are
    # gone are made again.
    store, _ = extract_features(oof.manifest, recipe, cache_dir=run.cache_dir(), progress=False, shard="all")
    row_of = {c.id: i for i, c in enumerate(oof.manifest)}
    probs = np.full_like(oof.probs, np.nan)
    with progress_bar(progress, len(oof.manifest), f"out-of-fold, tta {tta}") as advance:
        for k, checkpoint in zip(oof.finished, run.best_checkpoints()):
            held_out = set(run.fold_record(k)["clips"])
            clips = [c for c in oof.manifest if c.id in held_out]
            probs[[row_of[c.id] for c in clips]] = _clip_probabilities(
                load_run(checkpoint), store, clips, tta=tta, batch_clips=batch_clips, advance=advance
            )
    return dataclasses.replace(oof, probs=probs)


def _clip_probabilities(loaded, store, clips, *, tta: int, batch_clips: int, advance) -> np.ndarray:
    """``(clips, labels)``: each clip's chunks (and their ``tta`` shifted copies) through every
    model of ``loaded``, chunks averaged per clip and folds combined."""
    from soundtag.features.store import clip_key

    recipe = loaded.recipe
    probs = np.empty((len(clips), len(loaded.labels)))
    for start in range(0, len(clips), batch_clips):
        batch = clips[start : start + batch_clips]
        per_clip = [add_tta_copies(eval_chunks(store.get(clip_key(c.path)), recipe), recipe, tta) for c in batch]
        owner = np.concatenate([np.full(len(ch), i) for i, ch in enumerate(per_clip)])
        fold_probs = loaded.ensemble.probabilities(np.concatenate(per_clip))
        probs[start : start + len(batch)] = combine_folds(fold_probs, owner, len(batch), multilabel=loaded.multilabel)
        advance(len(batch))
    return probs
