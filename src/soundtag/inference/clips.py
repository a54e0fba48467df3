"""The inference core: chunks in, clip probabilities out, the same for every caller.

A clip's view is one chunk (LH) or several (X), each with ``tta`` shifted copies
(:func:`~soundtag.features.views.add_tta_copies`); every model of an ensemble gives each chunk
probabilities, which are averaged per clip (:func:`clip_probabilities` in PyTorch,
:func:`~soundtag.inference.combine.clip_means` in NumPy) and, across fold models, combined by
their geometric mean. Training's validation and out-of-fold predictions
(:func:`predict_loader`), ``soundtag predict`` and ``evaluate --tta`` (:func:`predict_store_clips`,
:func:`predict_out_of_fold`) go through here, and ``tag`` through the same NumPy step
(:func:`~soundtag.inference.combine.ensemble_clip_probabilities`) with either engine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from soundtag._heap import release_freed_memory
from soundtag.features.views import add_tta_copies, eval_chunks
from soundtag.inference.combine import ensemble_clip_probabilities
from soundtag.models.batching import pad_chunks
from soundtag.progress import progress_bar
from soundtag.runs import OutOfFold, RunDir

__all__ = ["clip_probabilities", "predict_loader", "predict_out_of_fold", "predict_store_clips"]


def clip_probabilities(logits: torch.Tensor, owner: torch.Tensor, n_clips: int, multilabel: bool) -> torch.Tensor:
    """Mean of each clip's chunk probabilities, ``(n_clips, classes)``; rows of ``logits``
    past ``len(owner)`` (padding, see ``data.collate_chunks``) are dropped."""
    logits = logits[: len(owner)]
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
    total = torch.zeros(n_clips, probs.shape[1], dtype=probs.dtype, device=probs.device)
    total.index_add_(0, owner, probs)
    counts = torch.bincount(owner, minlength=n_clips).clamp(min=1).to(probs.dtype)
    return total / counts[:, None]


def predict_loader(module, loader: torch.utils.data.DataLoader, device: torch.device, *, tta: int = 0) -> np.ndarray:
    """Clip probabilities of every clip of an evaluation loader, in its order, each the mean over
    its chunks and their ``tta`` shifted copies (:func:`~soundtag.features.views.add_tta_copies`)."""
    module = module.to(device).eval()
    out = []
    with torch.inference_mode():
        for x, owner, y in loader:
            x, owner = x.to(device), owner.to(device)
            if tta:  # the copies of row i are rows i + c, i + 2c, ...: the owners repeat
                x, owner = pad_chunks(add_tta_copies(x[: len(owner)], module.recipe, tta)), owner.repeat(tta + 1)
            out.append(clip_probabilities(module(x), owner, len(y), module.multilabel).float().cpu())
            if device.type == "cpu":
                release_freed_memory()
    return torch.cat(out).numpy()


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
    from soundtag.inference.fold_models import load_run

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
            probs[[row_of[c.id] for c in clips]] = predict_store_clips(
                load_run(checkpoint), store, clips, tta=tta, batch_clips=batch_clips, advance=advance
            )
    return dataclasses.replace(oof, probs=probs)


def predict_store_clips(loaded, store, clips, *, tta: int, batch_clips: int, advance) -> np.ndarray:
    """``(clips, labels)``: each clip's chunks (and their ``tta`` shifted copies) through every
    model of ``loaded``, chunks averaged per clip and folds combined."""
    from soundtag.features.store import clip_key

    recipe = loaded.recipe
    probs = np.empty((len(clips), len(loaded.labels)))
    for start in range(0, len(clips), batch_clips):
        batch = clips[start : start + batch_clips]
        probs[start : start + len(batch)] = ensemble_clip_probabilities(
            loaded.ensemble.probabilities,
            [eval_chunks(store.get(clip_key(c.path)), recipe) for c in batch],
            recipe,
            tta=tta,
            multilabel=loaded.multilabel,
        )
        advance(len(batch))
    return probs
