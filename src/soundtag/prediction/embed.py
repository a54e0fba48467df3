"""Pre-logit embeddings per clip (``soundtag embed``): for linear probes, nearest neighbours and
cleanlab's Datalab on embeddings.

A clip's embedding is the mean over its view's chunks (one for LH and for a pretrained model's
whole clip) of timm's ``forward_head(..., pre_logits=True)``, from one fold's model: each fold
learns an embedding space of its own, so averaging folds would mix unrelated coordinates.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from soundtag._io import atomic_path, atomic_write_text
from soundtag.errors import ParameterError, SoundtagError


@dataclass
class Embeddings:
    """``vectors[i]`` is the embedding of clip ``ids[i]`` (file ``paths[i]``)."""

    ids: list[str]
    paths: list[str]
    vectors: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


def embed_clips(
    source: str | Path,
    clips: Iterable[tuple[str, str | Path]],
    *,
    arch: str | None = None,
    fold: int = 0,
    threads: int | None = None,
) -> Embeddings:
    """Embed ``(clip_id, path)`` pairs with a run (its fold ``fold``) or a pretrained checkpoint.

    A file that cannot be decoded is listed in ``failures`` and the others are embedded.
    """
    import torch

    from soundtag.prediction.tagger import _torch_tagger, _torch_threads

    tagger = _torch_tagger(Path(source), threads, arch)
    ensemble = tagger.loaded.ensemble.eval()
    if not 0 <= fold < len(ensemble.models):
        raise ParameterError(f"fold={fold} must be between 0 and {len(ensemble.models) - 1} (the run's folds)")
    ids, paths, rows, failures = [], [], [], []
    for clip_id, path in clips:
        try:
            chunks, _ = tagger.chunks(path)
        except SoundtagError as exc:
            if isinstance(exc, ParameterError):
                raise
            failures.append((str(clip_id), str(exc)))
            continue
        with _torch_threads(threads), torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(chunks, dtype=np.float32))
            rows.append(ensemble.embeddings(x, fold).mean(dim=0).numpy())
        ids.append(str(clip_id))
        paths.append(str(path))
    width = rows[0].shape[0] if rows else 0
    return Embeddings(ids, paths, np.stack(rows) if rows else np.zeros((0, width), np.float32), failures)


def write_embeddings(embeddings: Embeddings, out: str | Path) -> tuple[Path, Path]:
    """``out`` (``.npy``, float32 ``(clips, dim)``) and beside it ``<out>.csv`` with the row order
    (``row,clip_id,path``); both written atomically."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ParameterError(f"--out {out} must end in .npy")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, embeddings.vectors.astype(np.float32))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "clip_id", "path"])
    w.writerows((i, c, p) for i, (c, p) in enumerate(zip(embeddings.ids, embeddings.paths)))
    index = out.with_suffix(".csv")
    atomic_write_text(index, buf.getvalue())
    return out, index
