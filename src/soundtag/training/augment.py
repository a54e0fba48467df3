"""Augmentations of a training batch of spectrograms ``(batch, channels, mels, frames)``.

Each takes an explicit ``numpy.random.Generator`` (never a global one) and returns a new
tensor, leaving its input untouched. Targets are soft ``(batch, classes)`` matrices, so mixup
works the same for single- and multi-label data.
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


def random_erasing(x: torch.Tensor, *, p: float = 0.5, area=(0.02, 0.4), aspect=(0.3, 1 / 0.3),
                   rng: np.random.Generator) -> torch.Tensor:
    """Erase one random rectangle per sample with probability ``p`` (Zhong et al. 2017).

    The rectangle covers ``area`` (a fraction of mels x frames, uniform) with height/width
    ratio ``aspect`` (uniform); it is filled with one value drawn uniformly in the batch's
    value range, as the kernel's eraser did. Rectangles that do not fit are drawn again.
    """
    out = x.clone()
    lo, hi = (float(v) for v in torch.aminmax(x))
    height, width = x.shape[-2], x.shape[-1]
    for i in range(x.shape[0]):
        if rng.random() >= p:
            continue
        for _ in range(20):
            s = rng.uniform(*area) * height * width
            r = rng.uniform(*aspect)
            h, w = int(np.sqrt(s * r)), int(np.sqrt(s / r))
            if 0 < h <= height and 0 < w <= width:
                top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
                out[i, ..., top:top + h, left:left + w] = rng.uniform(lo, hi)
                break
    return out


def time_shift(x: torch.Tensor, *, max_fraction: float = 0.4, rng: np.random.Generator) -> torch.Tensor:
    """Roll each sample along time by up to ``max_fraction`` of its width, either way."""
    limit = int(max_fraction * x.shape[-1])
    if limit == 0:
        return x.clone()
    width = x.shape[-1]
    shifts = torch.as_tensor(rng.integers(-limit, limit + 1, size=x.shape[0]), device=x.device)
    # out[..., t] = x[..., (t - shift) mod width] for each sample: one gather for the batch.
    index = (torch.arange(width, device=x.device)[None, :] - shifts[:, None]) % width
    index = index.view(x.shape[0], *([1] * (x.ndim - 2)), width).expand_as(x)
    return torch.gather(x, -1, index)


def time_reverse(x: torch.Tensor, *, p: float = 0.5, rng: np.random.Generator) -> torch.Tensor:
    """Reverse each sample in time with probability ``p``."""
    flip = torch.as_tensor(rng.random(x.shape[0]) < p, device=x.device)
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


def spec_augment(x: torch.Tensor, *, time_masks: int = 2, time_width: float = 0.1, freq_masks: int = 2,
                 freq_width: float = 0.15, rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment masks (Park et al. 2019): bands of frames and of mels set to the sample's mean.

    Each mask's width is uniform in ``[0, width * size]``.
    """
    out = x.clone()
    height, width = x.shape[-2], x.shape[-1]
    for i in range(x.shape[0]):
        fill = float(x[i].mean())
        for _ in range(time_masks):
            w = int(rng.integers(0, int(time_width * width) + 1))
            t0 = int(rng.integers(0, width - w + 1))
            out[i, ..., t0:t0 + w] = fill
        for _ in range(freq_masks):
            h = int(rng.integers(0, int(freq_width * height) + 1))
            f0 = int(rng.integers(0, height - h + 1))
            out[i, ..., f0:f0 + h, :] = fill
    return out
