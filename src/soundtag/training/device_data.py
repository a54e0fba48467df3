"""A fold's features held on the training device, and every batch drawn there.

The streaming path (:mod:`soundtag.training.data`) reads one clip at a time from the
memory-mapped store, crops and normalises it and collates batches in DataLoader workers; on a
GPU that caps training far below the model's own speed. When a fold's features
fit (``training.device_data``), they are loaded once onto the device instead:

* LH: one ``(clips, mels, frames)`` tensor, normalised there once (the view is fixed), with
  each clip's sound extent;
* X: the clips end to end as ``(mels, total frames)`` plus offsets and lengths; a training
  crop is a gather at a random start inside its clip, normalised per batch.

Balanced epochs and oversampling are the same :class:`~soundtag.training.data.EpochSampler`
indices, sent to the device once per epoch; augmentations (:mod:`soundtag.training.augment`)
already work on whole batches. Evaluation batches gather every chunk of a batch of clips at
once, in :func:`~soundtag.training.data.collate_chunks`'s ``(chunks, owner, targets)`` form,
so validation and out-of-fold prediction run unchanged. Values match the streaming path's:
the stored float16 values, cast to float32, normalised by the same
:class:`~soundtag.features.frontend.Normalization`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from soundtag.errors import ParameterError
from soundtag.features.frontend import sound_extents
from soundtag.features.store import FeatureStore
from soundtag.features.views import chunk_starts
from soundtag.models.batching import pad_chunks
from soundtag.recipe import Recipe
from soundtag.training.data import ShardSampler

#: ``device_data: auto`` on a CPU: the features are loaded into memory below this size.
CPU_BUDGET_BYTES = 2 << 30
#: ``device_data: auto`` on a GPU: below this share of the device's free memory.
GPU_SHARE = 0.5


def features_bytes(store: FeatureStore, keys: list[str], recipe: Recipe) -> int:
    """Device memory a fold's features take: the stored float16 values, plus the normalised
    float32 copy for LH."""
    frames = sum(
        store.entries[k].frames if recipe.view.kind == "lh" else max(store.entries[k].frames, recipe.chunk_frames)
        for k in keys
    )
    return frames * recipe.features.n_mels * (2 + (4 if recipe.view.kind == "lh" else 0))


def wants_device_data(setting: str, nbytes: int, accelerator: str) -> bool:
    """Whether features of ``nbytes`` go onto the device: ``on``/``off`` as said; ``auto`` when
    they take under half of the GPU's free memory, or under :data:`CPU_BUDGET_BYTES` on a CPU."""
    if setting not in ("auto", "on", "off"):
        raise ParameterError(f"training.device_data={setting!r} must be auto, on or off")
    if setting != "auto":
        return setting == "on"
    if accelerator == "gpu" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", 0)))
        return nbytes < GPU_SHARE * free
    return nbytes < CPU_BUDGET_BYTES


@dataclass
class DeviceClips:
    """The stored log-mels of some clips, end to end along time: ``data`` is
    ``(mels, total frames)`` float16; clip ``i`` is ``data[:, offsets[i]:offsets[i] + lengths[i]]``.

    X clips shorter than a chunk are centre-padded with their own minimum to one chunk, as
    :func:`~soundtag.features.views.x_chunks` pads them.
    """

    data: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    kind: str
    frames: int  # LH: the view's frames; X: frames of a chunk
    # Copies on other devices and chunk tables, made once: validation and out-of-fold
    # prediction share one set of a fold's clips.
    _made: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, store: FeatureStore, keys: list[str], recipe: Recipe) -> "DeviceClips":
        chunk = recipe.chunk_frames
        specs = []
        for k in keys:
            spec = np.asarray(store.get(k))
            if recipe.view.kind == "x" and spec.shape[1] < chunk:
                left = (chunk - spec.shape[1]) // 2
                spec = np.pad(
                    spec, ((0, 0), (left, chunk - spec.shape[1] - left)), constant_values=spec.min() if spec.size else 0
                )
            specs.append(spec)
        lengths = np.array([s.shape[1] for s in specs], dtype=np.int64)
        if recipe.view.kind == "lh" and len(set(lengths.tolist())) > 1:
            raise ParameterError(
                f"LH views of different lengths in the store ({sorted(set(lengths.tolist()))[:5]}); "
                "expected every clip cut to the view"
            )
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        data = torch.from_numpy(np.concatenate(specs, axis=1).astype(np.float16, copy=False))
        frames = int(lengths[0]) if recipe.view.kind == "lh" else chunk
        return cls(data, torch.from_numpy(offsets), torch.from_numpy(lengths), recipe.view.kind, frames)

    def __len__(self) -> int:
        return len(self.offsets)

    def to(self, device: torch.device) -> "DeviceClips":
        device = torch.device(device)
        if self.data.device == device:
            return self
        if str(device) not in self._made:
            self._made[str(device)] = DeviceClips(
                self.data.to(device), self.offsets.to(device), self.lengths.to(device), self.kind, self.frames
            )
        return self._made[str(device)]

    def windows(self, starts: torch.Tensor) -> torch.Tensor:
        """Float32 ``(n, mels, frames)`` windows of ``frames`` frames at absolute ``starts``."""
        index = starts[:, None] + torch.arange(self.frames, device=starts.device)  # (n, frames)
        return self.data[:, index].permute(1, 0, 2).float().contiguous()

    def random_starts(self, clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Absolute start frames of one random crop inside each of ``clips`` (whole clip for LH)."""
        room = self.lengths[clips] - self.frames + 1
        draw = (torch.rand(len(clips), generator=generator, device=clips.device) * room).long()
        return self.offsets[clips] + torch.minimum(draw, room - 1)

    def eval_starts(self, step: int, min_tail: float) -> tuple[np.ndarray, np.ndarray]:
        """Every evaluation chunk of every clip: ``(owner clip, absolute start)`` arrays."""
        if ("starts", step, min_tail) in self._made:
            return self._made["starts", step, min_tail]
        owners, starts = [], []
        for i, (offset, length) in enumerate(zip(self.offsets.tolist(), self.lengths.tolist())):
            local = [0] if self.kind == "lh" else chunk_starts(length, chunk=self.frames, step=step, min_tail=min_tail)
            owners += [i] * len(local)
            starts += [offset + s for s in local]
        table = np.asarray(owners, dtype=np.int64), np.asarray(starts, dtype=np.int64)
        self._made["starts", step, min_tail] = table
        return table


class DeviceTrainBatches:
    """Training batches ``(x (batch, 1, mels, frames), targets, extents, trusted)`` drawn on the device,
    one balanced epoch (``sampler``) each time it is iterated; the same form as the streaming
    loader's, so :class:`~soundtag.training.module.TaggerModule` trains on either.

    Crops are seeded by ``(seed, epoch)`` on the device's own generator: the same run draws the
    same crops again.
    """

    def __init__(
        self,
        clips: DeviceClips,
        targets: np.ndarray,
        normalizer,
        sampler,
        *,
        batch_size: int,
        drop_last: bool,
        seed: int = 0,
        trusted: np.ndarray | None = None,
    ):
        self.host, self.targets_host = clips, torch.as_tensor(targets, dtype=torch.float32)
        self.normalizer, self.normalization = normalizer, normalizer.module()
        self.trusted_host = torch.as_tensor(
            np.zeros(len(targets), bool) if trusted is None else trusted, dtype=torch.bool
        )
        self.sampler, self.batch_size, self.drop_last, self.seed = sampler, batch_size, drop_last, seed
        self.device, self.epoch = torch.device("cpu"), 0
        self._placed = None

    def place(self, device: torch.device | str) -> "DeviceTrainBatches":
        """Load the features onto ``device`` (done at the first epoch otherwise)."""
        self.device = torch.device(device)
        self.normalization = self.normalization.to(self.device)
        clips = self.host.to(self.device)
        placed = {
            "clips": clips,
            "targets": self.targets_host.to(self.device),
            "trusted": self.trusted_host.to(self.device),
        }
        if clips.kind == "lh":
            # The LH view is fixed: normalised once, with each clip's extent found before that
            # (a thousand clips at a time, so the float32 temporaries stay small).
            views, extents = [], []
            for part in torch.split(clips.offsets, 1024):
                raw = clips.windows(part)
                extents.append(sound_extents(raw))
                views.append(self.normalization(raw, extents[-1]))
            placed |= {"views": torch.cat(views), "extents": torch.cat(extents)}
        self._placed = placed
        return self

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def draw(self, clips: torch.Tensor, generator: torch.Generator):
        """The batch of the given clip indices (into this fold's training clips)."""
        p = self._placed
        if "views" in p:
            x, extents = p["views"][clips], p["extents"][clips]
        else:
            raw = p["clips"].windows(p["clips"].random_starts(clips, generator))
            extents = sound_extents(raw)
            x = self.normalization(raw, extents)
        return x[:, None], p["targets"][clips], extents, p["trusted"][clips]

    def __iter__(self):
        if self._placed is None or self._placed["clips"].data.device != self.device:
            self.place(self.device)
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        self.epoch += 1
        for b in range(len(self)):
            yield self.draw(order[b * self.batch_size : (b + 1) * self.batch_size], generator)


class DeviceEvalBatches:
    """Evaluation batches ``(chunks, owner, targets)`` of ``batch_size`` clips each, every chunk
    of those clips gathered at once: the clips at ``positions`` of ``clips`` (default all), in
    that order, and with ``shard`` only this rank's share of them
    (:class:`~soundtag.training.data.ShardSampler`)."""

    def __init__(
        self,
        clips: DeviceClips,
        targets: np.ndarray,
        normalizer,
        recipe: Recipe,
        *,
        batch_size: int,
        positions=None,
        shard: bool = False,
    ):
        self.host, self.targets_host = clips, torch.as_tensor(targets, dtype=torch.float32)
        self.normalizer, self.normalization = normalizer, normalizer.module()
        self.batch_size, self.shard = batch_size, shard
        self.positions = list(range(len(clips))) if positions is None else [int(i) for i in positions]
        self.step, self.min_tail = recipe.chunk_step, recipe.view.min_tail
        self.device = torch.device("cpu")
        self._placed = None

    def place(self, device: torch.device | str) -> "DeviceEvalBatches":
        self.device = torch.device(device)
        self.normalization = self.normalization.to(self.device)
        owners, starts = self.host.eval_starts(self.step, self.min_tail)
        self._placed = {
            "clips": self.host.to(self.device),
            "targets": self.targets_host.to(self.device),
            "owners": owners,
            "starts": starts,
        }
        return self

    def _clip_order(self) -> list[int]:
        if not self.shard:
            return self.positions
        return [self.positions[i] for i in ShardSampler(len(self.positions))]

    def __len__(self) -> int:
        return math.ceil(len(self._clip_order()) / self.batch_size)

    def _batches(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Index tensors of every batch, on the device: made once per clip order (a rank's
        shard is known only once the processes have started)."""
        order = self._clip_order()
        key = tuple(order)
        if self._placed.get("order") != key:
            owners, starts = self._placed["owners"], self._placed["starts"]
            first = np.searchsorted(owners, np.arange(len(self.host) + 1))  # clip i: chunks first[i]:first[i+1]
            batches = []
            for b in range(0, len(order), self.batch_size):
                clips = order[b : b + self.batch_size]
                chunk_ids = np.concatenate([np.arange(first[c], first[c + 1]) for c in clips])
                owner = np.repeat(np.arange(len(clips)), [first[c + 1] - first[c] for c in clips])
                batches.append(
                    tuple(
                        torch.as_tensor(a, dtype=torch.long).to(self.device) for a in (starts[chunk_ids], owner, clips)
                    )
                )
            self._placed |= {"order": key, "batches": batches}
        return self._placed["batches"]

    def __iter__(self):
        if self._placed is None or self._placed["clips"].data.device != self.device:
            self.place(self.device)
        p = self._placed
        for starts, owner, clips in self._batches():
            x = self.normalization(p["clips"].windows(starts))
            yield pad_chunks(x[:, None]), owner, p["targets"][clips]
