"""PyTorch datasets over the feature store: view crops, normalisation and class balance.

* LH: the stored head crop, normalised per sample.
* X: in training a random chunk-sized crop of the whole clip each time it is drawn; in
  evaluation every chunk of the clip (:func:`~soundtag.features.views.x_chunks`), so a clip's
  prediction is the mean over its chunks. Normalised per feature with training-set statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from soundtag.distributed import group_rank
from soundtag.errors import ParameterError
from soundtag.features.frontend import Normalization
from soundtag.features.store import FeatureStore
from soundtag.features.views import (
    eval_chunks,
    feature_stats,
    global_stats,
    sound_extent,
    sound_frames,
    x_chunks,
)
from soundtag.models.batching import cat_padded
from soundtag.recipe import Recipe
from soundtag.training.sampling import Balance, epoch_indices


@dataclass(frozen=True)
class Normalizer:
    """The recipe's normalisation: ``mean``/``std`` are per mel bin for ``per_feature``, one
    number each (as 1-element arrays) for ``global``; ``over`` is ``window`` or ``sound``
    (statistics from the sound's frames only, see :func:`~soundtag.features.views.sound_extent`)."""

    kind: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    over: str = "window"

    @classmethod
    def fit(cls, recipe: Recipe, store: FeatureStore, keys: list[str]) -> "Normalizer":
        kind, over = recipe.view.normalization, recipe.view.normalize_over
        if kind not in ("per_feature", "global"):
            return cls(kind, over=over)
        specs = (store.get(k) for k in keys)
        if over == "sound":
            specs = (sound_frames(s) for s in specs)
        if kind == "global":
            mean, std = global_stats(specs)
            return cls(kind, np.array([mean], np.float32), np.array([std], np.float32), over)
        mean, std = feature_stats(specs)
        return cls(kind, mean, std, over)

    def module(self) -> Normalization:
        """The normalisation as the torch front-end applies it, these statistics as its buffers."""
        return Normalization(self.kind, over=self.over, mean=self.mean, std=self.std)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
            "over": self.over,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        def array(v):
            return None if v is None else np.asarray(v, dtype=np.float32)

        return cls(d["kind"], array(d["mean"]), array(d["std"]), d.get("over", "window"))  # older checkpoints: window


class TrainViews(torch.utils.data.Dataset):
    """Training samples ``(x (1, mels, frames), target (classes,), extent (2,), trusted ())``:
    ``extent`` is the sound's ``[start, end)`` frames within the view
    (:func:`~soundtag.features.views.sound_extent`, found before normalisation), which
    augmentations sized to the sound keep to; ``trusted`` whether the label was verified
    (``training.noise`` spares those; default: none is)."""

    def __init__(
        self,
        store: FeatureStore,
        keys: list[str],
        targets: np.ndarray,
        recipe: Recipe,
        normalizer: Normalizer,
        seed: int = 0,
        trusted: np.ndarray | None = None,
    ):
        self.store, self.keys, self.targets = store, keys, targets
        self.trusted = np.zeros(len(keys), bool) if trusted is None else np.asarray(trusted, bool)
        self.recipe, self.normalization = recipe, normalizer.module()
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.keys)

    def _generator(self) -> np.random.Generator:
        # Each DataLoader worker gets its own stream; a copied generator would repeat the crops.
        info = torch.utils.data.get_worker_info()
        if info is not None and getattr(self, "_worker", None) != info.id:
            self._worker, self._rng = info.id, np.random.default_rng([self.seed, info.seed % (2**32)])
        return self._rng

    def __getitem__(self, i: int):
        spec = self.store.get(self.keys[i])
        if self.recipe.view.kind == "x":
            chunk = self.recipe.chunk_frames
            if spec.shape[1] > chunk:
                start = int(self._generator().integers(0, spec.shape[1] - chunk + 1))
                spec = spec[:, start : start + chunk]
            else:
                spec = x_chunks(np.asarray(spec), chunk=chunk, step=chunk)[0]
        spec = np.asarray(spec)
        extent = torch.tensor(sound_extent(spec), dtype=torch.long)
        with torch.no_grad():  # the sound found again in float32, as on the device path
            x = self.normalization(torch.from_numpy(spec.astype(np.float32))[None])  # a copy: the store is read-only
        return (
            x,
            torch.from_numpy(self.targets[i]),
            extent,
            torch.tensor(bool(self.trusted[i])),
        )


class EvalViews(torch.utils.data.Dataset):
    """Evaluation samples ``(chunks (n, 1, mels, frames), target)``: one chunk for LH."""

    def __init__(
        self, store: FeatureStore, keys: list[str], targets: np.ndarray, recipe: Recipe, normalizer: Normalizer
    ):
        self.store, self.keys, self.targets = store, keys, targets
        self.recipe, self.normalization = recipe, normalizer.module()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        chunks = eval_chunks(self.store.get(self.keys[i]), self.recipe)
        with torch.no_grad():
            x = self.normalization(torch.from_numpy(chunks))
        return x[:, None], torch.from_numpy(self.targets[i])


def collate_chunks(batch):
    """Stack clips of varying chunk counts: ``(chunks, owner, targets)`` with ``owner[j]`` the
    clip (row of ``targets``) that chunk ``j`` belongs to. ``chunks`` is padded with zero rows
    to a bucket size (:func:`cat_padded`); rows past ``len(owner)`` belong to no clip."""
    xs, ys = zip(*batch)
    owner = torch.cat([torch.full((x.shape[0],), i, dtype=torch.long) for i, x in enumerate(xs)])
    return cat_padded(list(xs)), owner, torch.stack(ys)


def _check_rank(rank: int | None, world_size: int | None) -> None:
    if (
        (world_size is not None and world_size < 1)
        or (rank is not None and rank < 0)
        or (rank is not None and world_size is not None and rank >= world_size)
    ):
        raise ParameterError(f"rank={rank} and world_size={world_size} need 0 <= rank < world_size")


def _rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given ``rank``/``world_size``, each that is None asked of :func:`~soundtag.distributed.group_rank`."""
    if rank is None or world_size is None:
        r, n = group_rank()
        rank = r if rank is None else rank
        world_size = n if world_size is None else world_size
    _check_rank(rank, world_size)
    return rank, world_size


class EpochSampler(torch.utils.data.Sampler):
    """Draws a new balanced epoch (oversampling etc.) each time it is iterated, seeded.

    Under ``torch.distributed`` every rank draws the same epoch (same seed and epoch number)
    and keeps every ``world_size``-th index from its rank on, cut to an equal count per rank,
    so the ranks see disjoint parts of one balanced epoch and step the same number of batches.
    ``rank`` and ``world_size`` default to None: read from ``torch.distributed`` when
    iterating, because Lightning starts the process group after the loaders are built.

    Examples
    --------
    >>> classes = np.array([0, 0, 0, 0, 1, 1])
    >>> full = list(EpochSampler(classes, "none", seed=0, rank=0, world_size=1))
    >>> halves = [list(EpochSampler(classes, "none", seed=0, rank=r, world_size=2)) for r in (0, 1)]
    >>> halves == [full[0::2], full[1::2]]
    True
    """

    def __init__(
        self,
        classes: np.ndarray,
        balance: Balance,
        seed: int = 0,
        *,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.classes, self.balance, self.seed, self.epoch = np.asarray(classes), balance, seed, 0
        self.rank, self.world_size = rank, world_size
        _check_rank(rank, world_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        rank, size = _rank_and_size(self.rank, self.world_size)
        indices = epoch_indices(self.classes, self.balance, rng)
        return iter(indices[rank::size][: len(indices) // size].tolist())

    def _epoch_size(self) -> int:
        if self.balance == "oversample":
            counts = np.bincount(self.classes)
            return int(counts.max() * (counts > 0).sum())
        return len(self.classes)

    def __len__(self) -> int:
        return self._epoch_size() // _rank_and_size(self.rank, self.world_size)[1]


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation order over ``n`` clips: every clip once, rank ``r`` taking ``r, r + world_size, ...``.

    Unlike ``DistributedSampler`` it never pads the last shard with repeated clips, so
    gathered predictions hold each clip exactly once (the shards may differ by one clip).
    ``rank``/``world_size`` of None are read from ``torch.distributed`` when iterating.

    Examples
    --------
    >>> [list(ShardSampler(5, rank=r, world_size=2)) for r in (0, 1)]
    [[0, 2, 4], [1, 3]]
    """

    def __init__(self, n: int, *, rank: int | None = None, world_size: int | None = None):
        self.n, self.rank, self.world_size = n, rank, world_size
        _check_rank(rank, world_size)

    def __iter__(self):
        rank, size = _rank_and_size(self.rank, self.world_size)
        return iter(range(rank, self.n, size))

    def __len__(self) -> int:
        rank, size = _rank_and_size(self.rank, self.world_size)
        return len(range(rank, self.n, size))
