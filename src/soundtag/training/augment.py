"""Augmentations of a training batch of spectrograms ``(batch, channels, mels, frames)``.

Each takes an explicit ``numpy.random.Generator`` (never a global one) and returns a new
tensor, leaving its input untouched. Targets are soft ``(batch, classes)`` matrices, so mixup
works the same for single- and multi-label data.

Sizes and places are measured on the whole view (the kernel's way), or, given ``extents``
(``(batch, 2)`` ``[start, end)`` frames of each sample's sound, see
:func:`~soundtag.features.views.sound_extent`), on the sound itself: an erased rectangle or a
time mask covers a share of the sound and lies within it, and a shift moves the sound within
its padding without pushing any of it out of the view. A 0.4 s event centred in a 5 s window
is then never wiped out, nor painted over with a louder fake one beside it.
"""

from __future__ import annotations

import numpy as np
import torch

from soundtag.errors import ParameterError


def mixup(x: torch.Tensor, y: torch.Tensor, *, alpha: float, rng: np.random.Generator):
    """Mix each sample with a random partner of the batch (Zhang et al. 2018).

    ``lam ~ Beta(alpha, alpha)`` per sample; ``x' = lam x + (1-lam) x[perm]`` and the same for
    ``y``, as the kernel's mixup generator did.
    """
    if alpha <= 0:
        raise ParameterError(f"mixup alpha={alpha} must be positive")
    lam = torch.as_tensor(rng.beta(alpha, alpha, size=x.shape[0]), dtype=x.dtype, device=x.device)
    perm = torch.as_tensor(rng.permutation(x.shape[0]), device=x.device)
    lx = lam.view(-1, *([1] * (x.ndim - 1)))
    ly = lam.to(y.dtype).view(-1, 1)
    # lerp(a, b, w) = a + w (b - a): one fused pass instead of four over the batch.
    return torch.lerp(x[perm], x, lx), torch.lerp(y[perm], y, ly)


def _sound_bounds(extents, i: int, width: int) -> tuple[int, int]:
    if extents is None:
        return 0, width
    start, end = (int(v) for v in extents[i])
    return (start, end) if 0 <= start < end <= width else (0, width)


def random_erasing(x: torch.Tensor, *, p: float = 0.5, area=(0.02, 0.4), aspect=(0.3, 1 / 0.3),
                   rng: np.random.Generator, extents: torch.Tensor | None = None) -> torch.Tensor:
    """Erase one random rectangle per sample with probability ``p`` (Zhong et al. 2017).

    The rectangle covers ``area`` (a fraction of mels x frames, uniform) with height/width
    ratio ``aspect`` (uniform); it is filled with one value drawn uniformly in the batch's
    value range, as the kernel's eraser did. Rectangles that do not fit are drawn again.
    With ``extents``, the frames are those of each sample's sound and the fill is drawn in
    that sound's own range.
    """
    out = x.clone()
    lo, hi = (float(v) for v in torch.aminmax(x))
    height, width = x.shape[-2], x.shape[-1]
    for i in range(x.shape[0]):
        if rng.random() >= p:
            continue
        start, end = _sound_bounds(extents, i, width)
        if extents is not None:
            lo, hi = (float(v) for v in torch.aminmax(x[i, ..., start:end]))
        for _ in range(20):
            s = rng.uniform(*area) * height * (end - start)
            r = rng.uniform(*aspect)
            h, w = int(np.sqrt(s * r)), int(np.sqrt(s / r))
            if 0 < h <= height and 0 < w <= end - start:
                top, left = rng.integers(0, height - h + 1), start + rng.integers(0, end - start - w + 1)
                out[i, ..., top:top + h, left:left + w] = rng.uniform(lo, hi)
                break
    return out


def shift_amounts(n: int, width: int, *, max_fraction: float, rng: np.random.Generator,
                  extents: torch.Tensor | None = None) -> np.ndarray:
    """Frames each of ``n`` samples is rolled by, uniform in ``[-limit, limit]`` with
    ``limit = max_fraction * width``.

    With ``extents``, a sample whose sound leaves room in the view moves only within that room
    (so no part of it wraps around the edge); one whose sound fills the view is rolled as
    without ``extents``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> shifts = shift_amounts(1000, 100, max_fraction=0.4, rng=rng, extents=torch.tensor([[45, 55]] * 1000))
    >>> int(shifts.min()), int(shifts.max())   # the sound (frames 45..54) stays within 0..99
    (-40, 40)
    >>> shifts = shift_amounts(1000, 100, max_fraction=0.4, rng=rng, extents=torch.tensor([[90, 100]] * 1000))
    >>> int(shifts.min()), int(shifts.max())   # at the right edge: only leftwards
    (-40, 0)
    """
    limit = int(max_fraction * width)
    if extents is None:
        return rng.integers(-limit, limit + 1, size=n)
    start, end = (np.asarray(extents[:, j].cpu(), dtype=np.int64) for j in (0, 1))
    fills = (start <= 0) & (end >= width)
    low = np.where(fills, -limit, -np.minimum(start, limit))
    high = np.where(fills, limit, np.minimum(width - end, limit))
    return rng.integers(low, high + 1)


def roll_time(x: torch.Tensor, shifts) -> torch.Tensor:
    """Roll each sample along time by its own number of frames (positive: later)."""
    width = x.shape[-1]
    shifts = torch.as_tensor(np.asarray(shifts), device=x.device)
    # out[..., t] = x[..., (t - shift) mod width] for each sample: one gather for the batch.
    index = (torch.arange(width, device=x.device)[None, :] - shifts[:, None]) % width
    index = index.view(x.shape[0], *([1] * (x.ndim - 2)), width).expand_as(x)
    return torch.gather(x, -1, index)


def time_shift(x: torch.Tensor, *, max_fraction: float = 0.4, rng: np.random.Generator,
               extents: torch.Tensor | None = None) -> torch.Tensor:
    """Roll each sample along time by up to ``max_fraction`` of its width, either way
    (:func:`shift_amounts`; with ``extents``, never pushing a sound out of its view)."""
    if int(max_fraction * x.shape[-1]) == 0:
        return x.clone()
    return roll_time(x, shift_amounts(x.shape[0], x.shape[-1], max_fraction=max_fraction, rng=rng, extents=extents))


def time_reverse(x: torch.Tensor, *, p: float = 0.5, rng: np.random.Generator) -> torch.Tensor:
    """Reverse each sample in time with probability ``p``."""
    flip = torch.as_tensor(rng.random(x.shape[0]) < p, device=x.device)
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


def spec_augment(x: torch.Tensor, *, time_masks: int = 2, time_width: float = 0.1, freq_masks: int = 2,
                 freq_width: float = 0.15, rng: np.random.Generator,
                 extents: torch.Tensor | None = None) -> torch.Tensor:
    """SpecAugment masks (Park et al. 2019): bands of frames and of mels set to the sample's mean.

    Each mask's width is uniform in ``[0, width * size]``. With ``extents``, time masks are
    sized by and placed within each sample's sound, and the fill is the sound's mean.
    """
    out = x.clone()
    height, width = x.shape[-2], x.shape[-1]
    for i in range(x.shape[0]):
        start, end = _sound_bounds(extents, i, width)
        fill = float(x[i, ..., start:end].mean())
        for _ in range(time_masks):
            w = int(rng.integers(0, int(time_width * (end - start)) + 1))
            t0 = start + int(rng.integers(0, end - start - w + 1))
            out[i, ..., t0:t0 + w] = fill
        for _ in range(freq_masks):
            h = int(rng.integers(0, int(freq_width * height) + 1))
            f0 = int(rng.integers(0, height - h + 1))
            out[i, ..., f0:f0 + h, :] = fill
    return out
