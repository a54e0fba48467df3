"""A run's clips split into folds, and each fold's data: what it trains, validates and predicts
out of fold on, drawn from the feature store (streaming DataLoaders) or from the device
(:mod:`~soundtag.training.device_data`) where the fold's features fit there.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from soundtag.errors import DataError
from soundtag.features.store import FeatureStore, clip_key
from soundtag.hardware import accelerator
from soundtag.manifest import Manifest
from soundtag.recipe import Recipe
from soundtag.training.data import EpochSampler, EvalViews, Normalizer, ShardSampler, TrainViews, collate_chunks
from soundtag.training.device_data import (
    DeviceClips,
    DeviceEvalBatches,
    DeviceTrainBatches,
    features_bytes,
    wants_device_data,
)
from soundtag.training.splits import label_matrix, make_folds, validation_mask

__all__ = ["FoldLoaders", "FoldSet", "stored_features"]


@dataclass
class FoldLoaders:
    """A fold's batches: DataLoaders over the store (streaming), or
    :mod:`~soundtag.training.device_data` batches drawn on the device (``on_device``)."""

    train: Iterable
    val: Iterable
    oof: Iterable
    normalizer: Normalizer
    oof_ids: list[str]
    train_clips: int
    val_clips: int
    on_device: bool = False

    def place(self, device: torch.device) -> None:
        """Put device-resident features on ``device`` (nothing to do for streaming loaders)."""
        if self.on_device:
            for batches in (self.train, self.val, self.oof):
                batches.place(device)


@dataclass
class FoldSet:
    """The clips of a run, their folds, and which of them may be trained on."""

    manifest: Manifest
    recipe: Recipe
    store: FeatureStore
    keys: list[str]
    targets: np.ndarray
    fold_of: np.ndarray
    in_training: np.ndarray

    @classmethod
    def build(cls, manifest: Manifest, recipe: Recipe, store: FeatureStore, blacklist=frozenset()) -> "FoldSet":
        t = recipe.training
        return cls(
            manifest,
            recipe,
            store,
            [clip_key(c.path) for c in manifest],
            label_matrix(manifest),
            make_folds(manifest, t.folds, seed=t.seed, strategy=t.fold_strategy),
            np.array([c.id not in blacklist for c in manifest]),
        )

    @property
    def n_folds(self) -> int:
        return int(self.fold_of.max()) + 1

    @property
    def trusted(self) -> np.ndarray:
        """Clips whose label ``training.noise`` trusts: the manually verified ones when the manifest
        marks any clip, none otherwise (then every clip is treated as possibly noisy)."""
        flags = [c.manually_verified for c in self.manifest]
        if all(f is None for f in flags):
            return np.zeros(len(flags), bool)
        return np.array([f is True for f in flags])

    def loaders(self, k: int) -> FoldLoaders:
        """Training (balanced, augmented later on the batch), validation and out-of-fold loaders.

        Validation leaves out blacklisted clips (and unverified ones for ``verified_only``
        recipes); the out-of-fold loader covers every clip of the fold.
        """
        recipe, t = self.recipe, self.recipe.training
        train_idx = np.flatnonzero((self.fold_of != k) & self.in_training)
        verified_only = recipe.validation == "verified_only"
        val_idx = np.flatnonzero(
            validation_mask(self.manifest, self.fold_of, k, verified_only=verified_only) & self.in_training
        )
        oof_idx = np.flatnonzero(self.fold_of == k)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise DataError(
                f"fold {k}: {len(train_idx)} training and {len(val_idx)} validation clips; "
                "check the blacklist and the folds"
            )
        normalizer = Normalizer.fit(recipe, self.store, [self.keys[i] for i in train_idx])

        def subset(idx):
            return [self.keys[i] for i in idx], self.targets[idx]

        sampler = EpochSampler(self.targets[train_idx].argmax(axis=1), t.balance, seed=t.seed + k)
        # An epoch shorter than a batch is one smaller batch (not none: nothing would train).
        drop_last = len(sampler) >= t.batch_size
        needed = features_bytes(self.store, self.keys, recipe)  # every clip: training + its fold
        if wants_device_data(t.device_data, needed, accelerator()[0]):

            def clips(idx):
                return DeviceClips.load(self.store, [self.keys[i] for i in idx], recipe)

            train = DeviceTrainBatches(
                clips(train_idx),
                self.targets[train_idx],
                normalizer,
                sampler,
                batch_size=t.batch_size,
                drop_last=drop_last,
                seed=t.seed + k,
                trusted=self.trusted[train_idx],
            )
            # The validation clips are some of the fold's: one copy of the fold serves both.
            fold_clips = clips(oof_idx)
            val = DeviceEvalBatches(
                fold_clips,
                self.targets[oof_idx],
                normalizer,
                recipe,
                batch_size=t.batch_size,
                positions=np.searchsorted(oof_idx, val_idx),
                shard=True,
            )
            oof = DeviceEvalBatches(fold_clips, self.targets[oof_idx], normalizer, recipe, batch_size=t.batch_size)
            return FoldLoaders(
                train,
                val,
                oof,
                normalizer,
                [self.manifest[i].id for i in oof_idx],
                len(train_idx),
                len(val_idx),
                on_device=True,
            )
        common = {"num_workers": t.workers, "persistent_workers": t.workers > 0}
        train = torch.utils.data.DataLoader(
            TrainViews(
                self.store, *subset(train_idx), recipe, normalizer, seed=t.seed + k, trusted=self.trusted[train_idx]
            ),
            batch_size=t.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            **common,
        )
        eval_args = {"batch_size": t.batch_size, "collate_fn": collate_chunks, **common}
        val = torch.utils.data.DataLoader(
            EvalViews(self.store, *subset(val_idx), recipe, normalizer), sampler=ShardSampler(len(val_idx)), **eval_args
        )
        oof = torch.utils.data.DataLoader(EvalViews(self.store, *subset(oof_idx), recipe, normalizer), **eval_args)
        return FoldLoaders(
            train, val, oof, normalizer, [self.manifest[i].id for i in oof_idx], len(train_idx), len(val_idx)
        )


def stored_features(manifest: Manifest, recipe: Recipe, cache_dir: str | Path) -> tuple[FeatureStore, set[str]]:
    """The store of ``recipe`` holding every clip of ``manifest``, and the clips whose audio
    failed (listed in the store's failure reports); any other missing clip is an error."""
    store = FeatureStore.open(cache_dir, recipe)
    failed: set[str] = set()
    for report in store.path.glob("failures*.csv"):
        with open(report, newline="") as fh:
            failed |= {row["clip_id"] for row in csv.DictReader(fh)}
    missing = [c.id for c in manifest if c.id not in failed and clip_key(c.path) not in store]
    if missing:
        raise DataError(
            f"{len(missing)} clip(s) (e.g. {missing[:3]}) have no features in {store.path}; with "
            "several processes, compute them first: `soundtag features --data ... --recipe "
            f"{recipe.name} --cache {cache_dir}` (or in shards with --shard i/n)"
        )
    return store, failed
