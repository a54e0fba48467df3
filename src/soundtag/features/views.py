"""The two views of a clip's log-mel spectrogram, and the statistics their normalisations fit.

* **LH**: the head of the sound at the finest resolution. The store already holds exactly the
  head crop (``recipe.view.duration`` seconds, centre-padded when shorter), so the view is the
  stored array itself.
* **X**: the whole sound at a coarser resolution, cut into chunks of ``chunk`` frames that
  start every ``step`` frames (10% overlap by default). A tail left after the last full chunk
  is kept as one more chunk aligned to the clip's end when it is at least ``min_tail`` of a
  chunk, and dropped otherwise. A clip shorter than a chunk is padded (the audio stage already
  centre-pads short clips to one chunk, so this is only a safety net for hand-made inputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundtag import audio
from soundtag.errors import ParameterError

if TYPE_CHECKING:
    from soundtag.recipe import Recipe


def decode_for_recipe(path: str | Path, recipe: "Recipe") -> audio.Waveform:
    """Decode a clip and crop or pad it as the recipe's view stores it.

    LH keeps the head (``view.duration`` seconds); X keeps the whole clip, at least one chunk
    long. A shorter clip is centre-padded with zeros, or repeated to fill the view with
    ``view.padding: repeat``.
    """
    wav = audio.load(
        path, sample_rate=recipe.audio.sample_rate, trim_db=recipe.audio.trim_db, max_duration=recipe.audio.max_duration
    )
    n, padding = recipe.view_samples, recipe.view.padding
    if recipe.view.kind == "lh":
        wav.samples = audio.head(wav.samples, n, padding=padding)
    else:
        wav.samples = (audio.pad_center if padding == "center" else audio.pad_repeat)(wav.samples, n)
    return wav


#: dB above a view's minimum that a frame must rise (in some mel band) to count as sound.
SOUND_FLOOR_DB = 1e-3


def sound_extent(spec: np.ndarray, *, floor_db: float = SOUND_FLOOR_DB) -> tuple[int, int]:
    """``(start, end)`` frames of the sound in a view: from the first to the last frame that
    rises above the view's minimum in some mel band.

    Zero padding has the log-mel's floor in every band (``top_db`` under the maximum, or the
    ``amin`` floor), so a short clip centred in a long window is found between its pads. A
    view with no frame above its minimum (silence) is all "sound": ``(0, frames)``.

    Parameters
    ----------
    spec : np.ndarray [shape=(n_mels, frames)], a log-mel in dB
    floor_db : how far above the minimum a frame must rise

    Examples
    --------
    >>> spec = np.full((4, 10), -80.0)
    >>> spec[:, 3:6] = -20.0              # a sound in frames 3..5, padding around it
    >>> sound_extent(spec)
    (3, 6)
    >>> sound_extent(np.full((4, 10), -80.0))
    (0, 10)
    """
    spec = np.asarray(spec)
    if spec.ndim != 2:
        raise ParameterError(f"spec has shape {spec.shape}; expected (n_mels, frames)")
    active = np.flatnonzero(spec.max(axis=0) > spec.min() + floor_db) if spec.size else np.zeros(0, int)
    if active.size == 0:
        return 0, spec.shape[1]
    return int(active[0]), int(active[-1]) + 1


def sound_frames(spec: np.ndarray) -> np.ndarray:
    """The frames of ``spec`` within its :func:`sound_extent`, ``(n_mels, end - start)``."""
    start, end = sound_extent(spec)
    return np.asarray(spec)[:, start:end]


def chunk_starts(n_frames: int, *, chunk: int, step: int, min_tail: float = 0.2) -> list[int]:
    """Start frames of the X chunks of a spectrogram ``n_frames`` long.

    Examples
    --------
    >>> chunk_starts(251, chunk=100, step=90)
    [0, 90, 151]
    >>> chunk_starts(200, chunk=100, step=90)    # tail of 10 frames < 20 frames: dropped
    [0, 90]
    >>> chunk_starts(40, chunk=100, step=90)     # shorter than a chunk: one padded chunk
    [0]
    """
    if chunk <= 0 or step <= 0:
        raise ParameterError(f"chunk={chunk} and step={step} must be positive integers")
    if n_frames <= chunk:
        return [0]
    starts = list(range(0, n_frames - chunk + 1, step))
    tail = n_frames - (starts[-1] + chunk)
    if tail > 0 and tail >= min_tail * chunk:
        starts.append(n_frames - chunk)
    return starts


def x_chunks(spec: np.ndarray, *, chunk: int, step: int, min_tail: float = 0.2) -> np.ndarray:
    """Cut a ``(n_mels, frames)`` spectrogram into X chunks, shape ``(n_chunks, n_mels, chunk)``.

    A spectrogram shorter than ``chunk`` is centre-padded with its own minimum (the dB floor).
    """
    n_mels, frames = spec.shape
    if frames < chunk:
        left = (chunk - frames) // 2
        floor = spec.min() if spec.size else 0.0
        spec = np.pad(spec, ((0, 0), (left, chunk - frames - left)), constant_values=floor)
        frames = chunk
    starts = chunk_starts(frames, chunk=chunk, step=step, min_tail=min_tail)
    return np.stack([spec[:, s : s + chunk] for s in starts])


def eval_chunks(spec: np.ndarray, recipe: "Recipe") -> np.ndarray:
    """What a model sees of one stored clip at evaluation, before normalisation.

    Returns ``(n_chunks, n_mels, frames)``: the LH crop itself (one chunk), or every X chunk
    (:func:`x_chunks` with the recipe's chunk size, step and ``min_tail``).
    """
    spec = np.asarray(spec, dtype=np.float32)
    if recipe.view.kind == "x":
        return x_chunks(spec, chunk=recipe.chunk_frames, step=recipe.chunk_step, min_tail=recipe.view.min_tail)
    return spec[None]


def tta_shifts(width: int, n: int, max_fraction: float = 0.2) -> list[int]:
    """Frame shifts of ``n`` extra test-time copies of a ``width``-frame view.

    Alternating directions with growing size up to ``max_fraction`` of the width; the copies
    are rolled in time as training's shift augmentation rolls its inputs.

    Examples
    --------
    >>> tta_shifts(100, 4)
    [10, -10, 20, -20]
    >>> tta_shifts(100, 3, max_fraction=0.1)
    [5, -5, 10]
    """
    if n < 0:
        raise ParameterError(f"tta={n} must be 0 or more")
    pairs = -(-n // 2)
    step = max_fraction * width / max(pairs, 1)
    return [int(round(step * (1 + i // 2))) * (1 if i % 2 == 0 else -1) for i in range(n)]


def add_tta_copies(chunks, recipe: "Recipe", n: int):
    """``chunks`` ``(c, ..., frames)`` followed by ``n`` copies of them rolled in time, as
    ``(c * (1 + n), ..., frames)``: copy ``j`` of chunk ``i`` is row ``j * c + i``.

    The shifts (:func:`tta_shifts`) reach half the recipe's training shift, so each copy is a
    view the model was trained on. A NumPy array or a torch tensor (rolled where it lives).

    Examples
    --------
    >>> from soundtag.recipe import load_recipe
    >>> add_tta_copies(np.arange(8.0).reshape(1, 1, 8), load_recipe("esc50-cpu-lh"), 2)[:, 0]
    array([[0., 1., 2., 3., 4., 5., 6., 7.],
           [6., 7., 0., 1., 2., 3., 4., 5.],
           [2., 3., 4., 5., 6., 7., 0., 1.]])
    """
    if not n:
        return chunks
    shifts = tta_shifts(chunks.shape[-1], n, 0.5 * recipe.training.augment.shift.max_fraction)
    if isinstance(chunks, np.ndarray):
        return np.concatenate([chunks] + [np.roll(chunks, s, axis=-1) for s in shifts])
    import torch

    return torch.cat([chunks] + [chunks.roll(s, -1) for s in shifts])


def feature_stats(specs) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-bin mean and standard deviation over an iterable of ``(n_mels, frames)`` arrays.

    Accumulated in float64 one array at a time, so a memory-mapped store never has to fit in
    memory.
    """
    total = sq = None
    count = 0
    for spec in specs:
        spec = np.asarray(spec, dtype=np.float64)
        s, q = spec.sum(axis=1), np.square(spec).sum(axis=1)
        total, sq = (s, q) if total is None else (total + s, sq + q)
        count += spec.shape[1]
    if not count:
        raise ParameterError("feature_stats needs at least one non-empty spectrogram")
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def global_stats(specs) -> tuple[float, float]:
    """One mean and standard deviation over every value of an iterable of ``(n_mels, frames)``
    arrays (what ``view.normalization: global`` divides by); float64 accumulation.

    Examples
    --------
    >>> global_stats([np.array([[0.0, 2.0]]), np.array([[4.0, 6.0]])])
    (3.0, 2.23606797749979)
    """
    total = sq = 0.0
    count = 0
    for spec in specs:
        spec = np.asarray(spec, dtype=np.float64)
        total, sq, count = total + spec.sum(), sq + np.square(spec).sum(), count + spec.size
    if not count:
        raise ParameterError("global_stats needs at least one non-empty spectrogram")
    mean = total / count
    return float(mean), float(np.sqrt(max(sq / count - mean**2, 0.0)))
