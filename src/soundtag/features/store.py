"""The feature store: log-mel arrays computed once, cached on disk, memory-mapped to read.

Layout of one store (one per feature config, i.e. per :meth:`Recipe.feature_hash`)::

    <cache>/<view>-<rate>hz-<mels>mels-<hash>/
        store.json              the feature config that made every array here
        parts/part-<id>.npy     float16, shape (frames, n_mels): many clips end to end
        parts/part-<id>.json    the part's index: clip key, id, frame offset and count, notes

A clip's key is its identity on disk (absolute path, size, modification time), so an edited
file is computed again and an unchanged one never is. Each part's ``.npy`` is written and
renamed first and its ``.json`` index last, both atomically: a part without an index (a run
killed mid-write) is never read, and is swept away by a later open once it is ten minutes old
(younger, it may be another shard's part being written). New clips go to new parts,
so a run adds to the store without rewriting it, and a dataset larger than memory is read
through memory maps only.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from soundtag._io import atomic_path, atomic_write_json, load_array
from soundtag.errors import DataError
from soundtag.recipe import Recipe


def clip_key(path: str | Path) -> str:
    """Identity of an audio file on disk: hash of its absolute path, size and mtime (ns)."""
    p = Path(path).absolute()
    st = p.stat()
    return hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


#: A part file without an index, or a temp file, younger than this may belong to a writer
#: still at work (another shard, another job): it is left alone. Writing one part takes
#: well under a second.
ABANDONED_AFTER_SECONDS = 600


def _abandoned(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > ABANDONED_AFTER_SECONDS
    except FileNotFoundError:  # its writer finished or removed it meanwhile
        return False


@dataclass(frozen=True)
class Entry:
    """Where one clip's array lives, and what happened when it was computed."""

    key: str
    clip_id: str
    part: str
    offset: int
    frames: int
    duration: float
    notes: tuple[str, ...] = ()


@dataclass
class FeatureStore:
    """A directory of cached features for one feature config. Open with :meth:`open`."""

    path: Path
    n_mels: int
    entries: dict[str, Entry] = field(default_factory=dict)
    _maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, cache_dir: str | Path, recipe: Recipe) -> "FeatureStore":
        """Open (or create) the store of ``recipe``'s feature config under ``cache_dir``."""
        key = recipe.feature_key()
        # Named by what decides the features, not by the recipe, so recipes that differ only in
        # training settings share one store.
        path = Path(cache_dir) / (
            f"{recipe.view.kind}-{recipe.audio.sample_rate}hz-{recipe.features.n_mels}mels-{recipe.feature_hash()}"
        )
        (path / "parts").mkdir(parents=True, exist_ok=True)
        config_file = path / "store.json"
        if config_file.is_file():
            stored = json.loads(config_file.read_text())
            if stored.get("feature_key") != key:
                raise DataError(
                    f"{path}: the store was made by another feature config; delete the folder or use another --cache"
                )
        else:
            atomic_write_json(config_file, {"feature_key": key, "recipe": recipe.name})
        store = cls(path, recipe.features.n_mels)
        store._load_index()
        return store

    def _load_index(self) -> None:
        parts = self.path / "parts"
        for leftover in parts.glob(".*.tmp"):  # from a writer killed mid-rename
            if _abandoned(leftover):
                leftover.unlink(missing_ok=True)
        indexed = set()
        for index_file in sorted(parts.glob("part-*.json")):
            index = json.loads(index_file.read_text())
            part = index_file.stem
            indexed.add(part)
            for e in index["clips"]:
                self.entries[e["key"]] = Entry(
                    e["key"], e["clip_id"], part, e["offset"], e["frames"], e["duration"], tuple(e.get("notes", ()))
                )
        for data_file in parts.glob("part-*.npy"):
            if data_file.stem not in indexed and _abandoned(data_file):  # data written, index never
                data_file.unlink(missing_ok=True)

    # --- reading ---------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> np.ndarray:
        """The stored log-mel of one clip, shape ``(n_mels, frames)``, float16, memory-mapped."""
        e = self.entries[key]
        if e.part not in self._maps:
            self._maps[e.part] = load_array(self.path / "parts" / f"{e.part}.npy", mmap_mode="r")
        return self._maps[e.part][e.offset : e.offset + e.frames].T

    def get_clip(self, path: str | Path) -> np.ndarray:
        """The stored log-mel of the audio file at ``path`` (keyed by its identity on disk)."""
        key = clip_key(path)
        if key not in self.entries:
            raise KeyError(f"{path}: not in the feature store {self.path}; run `soundtag features` first")
        return self.get(key)

    # --- writing ---------------------------------------------------------------------------
    def writer(self, max_part_bytes: int = 64 << 20) -> "PartWriter":
        return PartWriter(self, max_part_bytes)


def all_finite(a: np.ndarray) -> bool:
    """Whether ``a`` holds no NaN or infinity.

    float16 is checked on its bits (all five exponent bits set): NumPy's ``isfinite`` on
    float16 costs ten times as much, and extraction checks every clip it stores.

    Examples
    --------
    >>> all_finite(np.array([1.0, 65504.0], dtype=np.float16)), all_finite(np.array([np.nan], dtype=np.float16))
    (True, False)
    >>> all_finite(np.array([-np.inf], dtype=np.float16)), all_finite(np.array([np.inf]))
    (False, False)
    """
    a = np.asarray(a)
    if a.dtype == np.float16:
        return not ((a.view(np.uint16) & 0x7C00) == 0x7C00).any()
    return bool(np.isfinite(a).all())


class PartWriter:
    """Buffers computed clips and writes them out as parts of at most ``max_part_bytes``.

    Use as a context manager: on leaving, even through an exception or Ctrl-C, the clips
    already computed are written, so a rerun does not compute them again.
    """

    def __init__(self, store: FeatureStore, max_part_bytes: int):
        self.store = store
        self.max_part_bytes = max_part_bytes
        self._arrays: list[np.ndarray] = []
        self._index: list[dict] = []
        self._frames = 0

    def add(self, key: str, clip_id: str, spec: np.ndarray, *, duration: float, notes=()) -> None:
        """Queue ``spec`` (``(n_mels, frames)``) as the features of the clip ``key``."""
        if spec.shape[0] != self.store.n_mels or not all_finite(spec):
            raise DataError(
                f"{clip_id}: refusing to store features of shape {spec.shape} with "
                f"non-finite values or n_mels != {self.store.n_mels}"
            )
        self._index.append(
            {
                "key": key,
                "clip_id": clip_id,
                "offset": self._frames,
                "frames": int(spec.shape[1]),
                "duration": float(duration),
                "notes": list(notes),
            }
        )
        self._arrays.append(np.ascontiguousarray(spec.T, dtype=np.float16))
        self._frames += spec.shape[1]
        if self._frames * self.store.n_mels * 2 >= self.max_part_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._arrays:
            return
        part = f"part-{uuid.uuid4().hex[:16]}"
        parts = self.store.path / "parts"
        with atomic_path(parts / f"{part}.npy") as tmp:
            with open(tmp, "wb") as fh:
                # The header of the whole (frames, n_mels) array, then each clip's rows: the file
                # np.save of their concatenation writes, without first building that copy (up to
                # max_part_bytes, and the last part is written after every worker has finished).
                np.lib.format.write_array_header_1_0(
                    fh,
                    {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                        "fortran_order": False,
                        "shape": (self._frames, self.store.n_mels),
                    },
                )
                for rows in self._arrays:
                    fh.write(rows.data)
        atomic_write_json(parts / f"{part}.json", {"clips": self._index})
        for e in self._index:
            self.store.entries[e["key"]] = Entry(
                e["key"], e["clip_id"], part, e["offset"], e["frames"], e["duration"], tuple(e["notes"])
            )
        self._arrays, self._index, self._frames = [], [], 0

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
