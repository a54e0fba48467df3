"""A cross-validated training run: one model per fold, out-of-fold predictions for every clip.

The fold loop alone: the run directory's layout belongs to :class:`soundtag.runs.RunDir`, a
fold's data to :mod:`~soundtag.training.folds`, fitting it to :mod:`~soundtag.training.fit`, and
the devices, nodes and strategy to :class:`soundtag.hardware.Hardware`. A fold counts as finished
only once its ``done.json`` is written (atomically, last); ``resume`` skips finished folds and
continues an interrupted one from its ``last.ckpt``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from soundtag.distributed import is_primary_process, launch_rank
from soundtag.errors import ParameterError
from soundtag.features.extract import extract_features
from soundtag.hardware import Hardware
from soundtag.manifest import Manifest
from soundtag.manifest.clip_lists import apply_relabel, read_clip_list
from soundtag.planning import Pace
from soundtag.recipe import Recipe, load_recipe
from soundtag.runs import RunDir
from soundtag.training.fit import PaceKept, train_fold
from soundtag.training.folds import FoldSet, stored_features


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    folds_trained: list[int]
    folds_skipped: list[int]


def default_run_dir(recipe: Recipe, *, root: str | Path = "runs", now: dt.datetime | None = None) -> Path:
    """``runs/<recipe>-<YYYYmmdd-HHMMSS>``; processes started together (torchrun, SLURM) cannot
    agree on a time, so they must be given the run directory."""
    if launch_rank()[1] > 1:
        raise ParameterError("give the run directory (--out RUN): processes started together must agree on it")
    return Path(root) / f"{recipe.name}-{(now or dt.datetime.now()):%Y%m%d-%H%M%S}"


def train(
    manifest: Manifest,
    recipe: Recipe,
    run_dir: str | Path,
    *,
    cache_dir: str | Path,
    folds: list[int] | None = None,
    progress: bool = True,
    resume: bool = False,
    data_source: str | None = None,
    hardware: Hardware = Hardware(),
    pace: Pace | None = None,
    on_pace: Callable[[PaceKept], None] | None = None,
) -> RunResult:
    """Train one model per fold and write out-of-fold predictions and metrics.

    Parameters
    ----------
    manifest : the training clips (every clip gets an out-of-fold prediction)
    recipe : features, view and ``training`` section
    run_dir : the run directory; must not exist unless ``resume``
    cache_dir : the feature store folder (features are computed once and reused)
    folds : train only these fold numbers (default: all)
    resume : continue a run: finished folds are skipped, an interrupted one continues
    hardware : devices, nodes and strategy (see :class:`Hardware`); with several processes,
        only global rank 0 writes files
    pace : the time budget to keep (:class:`~soundtag.planning.Pace`): the first fold trained,
        when no fold is finished yet, re-plans the epochs of every fold from its real epochs; the
        run's ``recipe.yaml`` then holds the new epochs, and ``on_pace`` hears what each of its
        checks found (:class:`~soundtag.training.fit.PaceKept`)
    """
    run = RunDir(run_dir)
    run_dir = run.path
    rank = launch_rank()[0]
    if rank == 0 and run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise ParameterError(
            f"run directory {run_dir} already exists; use --resume to continue it or give another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)

    manifest, blacklist = relabelled(manifest, recipe)
    if rank == 0:
        run.start(
            recipe,
            manifest,
            {
                "recipe": recipe.name,
                "data": data_source,
                "cache_dir": str(Path(cache_dir).absolute()),
                "created": dt.datetime.now().isoformat(timespec="seconds"),
                "torch": torch.__version__,
            },
        )

    plan = fold_set(manifest, recipe, blacklist, cache_dir, progress=progress)
    manifest = plan.manifest
    if rank == 0:
        run.write_folds(manifest.ids, plan.fold_of, plan.in_training)

    n_folds = plan.n_folds
    wanted = list(range(n_folds)) if folds is None else folds

    def paced(kept: PaceKept) -> None:
        # the epochs of every fold from now on, written before the fold's next checkpoint
        nonlocal plan
        if kept.epochs != plan.recipe.training.epochs:
            plan = replace(plan, recipe=load_recipe(plan.recipe, [f"training.epochs={kept.epochs}"]))
            run.write_recipe(plan.recipe)
        if on_pace is not None:
            on_pace(kept)

    trained, skipped = [], []
    # every fold trains the same epochs, so only a run's first fold may re-plan them
    pace = pace if not run.finished_folds() else None
    for k in wanted:
        if not 0 <= k < n_folds:
            raise ParameterError(f"fold {k} does not exist: this run has folds 0..{n_folds - 1}")
        if run.is_finished(k):
            skipped.append(k)
            continue
        train_fold(plan, k, run, progress, hardware, pace=pace, on_pace=paced)
        pace = None
        trained.append(k)

    if not is_primary_process():
        return RunResult(run_dir, {}, trained, skipped)  # rank 0 evaluates
    from soundtag.training.evaluate import evaluate_run

    # A run trained in part (--fold) is scored on its finished folds' clips, which it says.
    metrics = evaluate_run(run) if run.finished_folds() else {}
    return RunResult(run_dir, metrics, trained, skipped)


def relabelled(manifest: Manifest, recipe: Recipe) -> tuple[Manifest, set[str]]:
    """``manifest`` with the recipe's relabel list applied, and the clips its blacklist names."""
    t = recipe.training
    if t.relabel:
        manifest = apply_relabel(manifest, read_clip_list(t.relabel, manifest, what="relabel"), t.relabel)
    blacklist = set(read_clip_list(t.blacklist, manifest, what="blacklist")) if t.blacklist else set()
    return manifest, blacklist


def fold_set(
    manifest: Manifest, recipe: Recipe, blacklist: set[str], cache_dir: str | Path, *, progress: bool = True
) -> FoldSet:
    """The run's clips in folds, with their features (computed once into ``cache_dir``); clips
    whose audio cannot be decoded are left out (the extraction reports them)."""
    if launch_rank()[1] > 1:
        # Processes started together (torchrun, SLURM) must not compute the same features at
        # once: they read a store made beforehand (`soundtag features`, sharded if need be).
        store, failed = stored_features(manifest, recipe, cache_dir)
    else:
        store, summary = extract_features(manifest, recipe, cache_dir=cache_dir, progress=progress, shard="all")
        failed = {f.clip_id for f in summary.failures}
    if failed:
        manifest = manifest.filter(lambda c: c.id not in failed)
    return FoldSet.build(manifest, recipe, store, blacklist)


def resume(run_dir: str | Path, *, progress: bool = True, hardware: Hardware = Hardware()) -> RunResult:
    """Continue a run from what its directory holds (recipe, manifest, feature cache)."""
    run = RunDir(run_dir).require()
    info = run.info()
    return train(
        run.manifest(),
        run.recipe(),
        run.path,
        cache_dir=info["cache_dir"],
        progress=progress,
        resume=True,
        data_source=info.get("data"),
        hardware=hardware,
    )
