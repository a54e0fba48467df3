"""Augmentations of a training batch of spectrograms ``(batch, channels, mels, frames)``.

Each takes an explicit ``torch.Generator`` on the batch's device (never the global one) and
returns a new tensor, leaving its input untouched. Every random draw is made for the whole
batch at once on that device and every sample's change is a mask or an index computed by
broadcasting: no per-sample Python loop and no value read back to the host, so a batch on a
GPU is augmented without waiting for it. Targets are soft ``(batch, classes)`` matrices, so
mixup works the same for single- and multi-label data.

Sizes and places are measured on the whole view (the kernel's way), or, given ``extents``
(``(batch, 2)`` ``[start, end)`` frames of each sample's sound, see
:func:`~soundtag.features.views.sound_extent`), on the sound itself: an erased rectangle or a
time mask covers a share of the sound and lies within it, and a shift moves the sound within
its padding without pushing any of it out of the view. A 0.4 s event centred in a 5 s window
is then never wiped out, nor painted over with a louder fake one beside it.
"""

from __future__ import annotations

import torch

from soundtag.errors import ParameterError


def _rand(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def randint(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Integers uniform in ``[low, high]`` (both included), elementwise over broadcast tensors.

    Where ``high < low`` the result is ``low``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> draws = randint(torch.tensor([0, 5]), torch.tensor([2, 5]), g)
    >>> bool(0 <= draws[0] <= 2), int(draws[1])
    (True, 5)
    """
    low, high = torch.broadcast_tensors(torch.as_tensor(low), torch.as_tensor(high))
    span = (high - low + 1).clamp(min=1)
    draw = (_rand(low.shape, generator, low.device) * span).long()
    return low + torch.minimum(draw, span - 1)  # rand < 1, but float rounding could give span


def gamma(shape: torch.Tensor, generator: torch.Generator, *, tries: int = 16) -> torch.Tensor:
    """Samples of Gamma(``shape``, 1), one per element of ``shape``, on its device.

    ``torch.distributions`` draws from the global generator only; this is Marsaglia and Tsang's
    method (2000) with ``tries`` candidates per sample drawn at once, the first accepted one
    kept (each is accepted with probability > 0.95 for shape >= 1, so all 16 fail with
    probability < 1e-20; the last candidate is kept then). A shape below 1 is boosted:
    ``Gamma(a) = Gamma(a + 1) * U ** (1 / a)``.
    """
    shape = torch.as_tensor(shape, dtype=torch.float64)
    if (shape <= 0).any():
        raise ParameterError("gamma shape must be positive")
    boost = shape < 1
    a = torch.where(boost, shape + 1, shape)
    d = (a - 1 / 3)[..., None]
    c = 1 / torch.sqrt(9 * d)
    z = torch.randn((*shape.shape, tries), generator=generator, device=shape.device, dtype=torch.float64)
    u = _rand((*shape.shape, tries), generator, shape.device).double()
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp(min=1e-300)))
    ok[..., -1] = True
    first = ok.double().argmax(dim=-1, keepdim=True)
    out = (d * v).gather(-1, first)[..., 0]
    b = _rand(shape.shape, generator, shape.device).double()
    return torch.where(boost, out * b ** (1 / shape), out)


def beta(alpha: float, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """``n`` float64 samples of Beta(``alpha``, ``alpha``) as ``X / (X + Y)`` of two :func:`gamma`
    draws (in float32, a small ``alpha`` puts a visible share of them at exactly 0 or 1)."""
    g = gamma(torch.full((2, n), float(alpha), dtype=torch.float64, device=device), generator)
    return g[0] / (g[0] + g[1])


def mixup(x: torch.Tensor, y: torch.Tensor, *, alpha: float, generator: torch.Generator, return_perm: bool = False):
    """Mix each sample with a random partner of the batch (Zhang et al. 2018).

    ``lam ~ Beta(alpha, alpha)`` per sample; ``x' = lam x + (1-lam) x[perm]`` and the same for
    ``y``, as the kernel's mixup generator did. ``return_perm``: also return ``perm`` (what a
    per-sample property such as trust in the label needs to follow the mix).
    """
    if alpha <= 0:
        raise ParameterError(f"mixup alpha={alpha} must be positive")
    lam = beta(alpha, x.shape[0], generator, x.device).to(x.dtype)
    perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
    lx = lam.view(-1, *([1] * (x.ndim - 1)))
    ly = lam.to(y.dtype).view(-1, 1)
    # lerp(a, b, w) = a + w (b - a): one fused pass instead of four over the batch.
    mixed = torch.lerp(x[perm], x, lx), torch.lerp(y[perm], y, ly)
    return (*mixed, perm) if return_perm else mixed


def sound_bounds(extents: torch.Tensor | None, n: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start, end)`` long tensors of ``n`` samples: the extents, or the whole view where
    there are none or one is not a valid ``0 <= start < end <= width``."""
    whole = (torch.zeros(n, dtype=torch.long, device=device), torch.full((n,), width, dtype=torch.long, device=device))
    if extents is None:
        return whole
    extents = extents.to(device=device, dtype=torch.long)
    start, end = extents[:, 0], extents[:, 1]
    valid = (start >= 0) & (start < end) & (end <= width)
    return torch.where(valid, start, whole[0]), torch.where(valid, end, whole[1])


def _frames_in(start: torch.Tensor, end: torch.Tensor, width: int) -> torch.Tensor:
    """``(n, width)`` booleans: frame ``t`` of sample ``i`` lies in ``[start[i], end[i])``."""
    t = torch.arange(width, device=start.device)
    return (t >= start[:, None]) & (t < end[:, None])


def random_erasing(
    x: torch.Tensor,
    *,
    p: float = 0.5,
    area=(0.02, 0.4),
    aspect=(0.3, 1 / 0.3),
    generator: torch.Generator,
    extents: torch.Tensor | None = None,
    tries: int = 20,
) -> torch.Tensor:
    """Erase one random rectangle per sample with probability ``p`` (Zhong et al. 2017).

    The rectangle covers ``area`` (a fraction of mels x frames, uniform) with height/width
    ratio ``aspect`` (uniform); it is filled with one value drawn uniformly in the batch's
    value range, as the kernel's eraser did. Of ``tries`` candidate shapes per sample, the first
    that fits is used (none fits: the sample is left as it is). With ``extents``, the frames are
    those of each sample's sound and the fill is drawn in that sound's own range.
    """
    n, height, width, dev = x.shape[0], x.shape[-2], x.shape[-1], x.device
    start, end = sound_bounds(extents, n, width, dev)
    length = end - start
    apply = _rand(n, generator, dev) < p
    s = (area[0] + (area[1] - area[0]) * _rand((n, tries), generator, dev).double()) * height * length[:, None]
    r = aspect[0] + (aspect[1] - aspect[0]) * _rand((n, tries), generator, dev).double()
    h, w = torch.sqrt(s * r).long(), torch.sqrt(s / r).long()
    fits = (h > 0) & (h <= height) & (w > 0) & (w <= length[:, None])
    first = fits.long().argmax(dim=1, keepdim=True)  # the first candidate that fits
    erase = apply & fits.any(dim=1)
    h = torch.where(erase, h.gather(1, first)[:, 0], 0)
    w = torch.where(erase, w.gather(1, first)[:, 0], 0)
    top = randint(torch.zeros_like(h), height - h, generator)
    left = start + randint(torch.zeros_like(w), length - w, generator)
    rows = _frames_in(top, top + h, height)
    cols = _frames_in(left, left + w, width)
    rect = rows[:, :, None] & cols[:, None, :]  # (n, mels, frames)
    if extents is None:
        lo, hi = torch.aminmax(x)
        lo, hi = lo.expand(n), hi.expand(n)
    else:
        inside = _frames_in(start, end, width).view(n, *([1] * (x.ndim - 2)), width)
        lo = x.masked_fill(~inside, float("inf")).flatten(1).amin(dim=1)
        hi = x.masked_fill(~inside, float("-inf")).flatten(1).amax(dim=1)
    fill = (lo + (hi - lo) * _rand(n, generator, dev)).to(x.dtype)
    rect = rect.view(n, *([1] * (x.ndim - 3)), height, width)
    return torch.where(rect, fill.view(n, *([1] * (x.ndim - 1))), x)


def shift_amounts(
    n: int,
    width: int,
    *,
    max_fraction: float,
    generator: torch.Generator,
    extents: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """Frames each of ``n`` samples is rolled by, uniform in ``[-limit, limit]`` with
    ``limit = max_fraction * width``.

    With ``extents``, a sample whose sound leaves room in the view moves only within that room
    (so no part of it wraps around the edge); one whose sound fills the view is rolled as
    without ``extents``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> shifts = shift_amounts(1000, 100, max_fraction=0.4, generator=g, extents=torch.tensor([[45, 55]] * 1000))
    >>> int(shifts.min()), int(shifts.max())   # the sound (frames 45..54) stays within 0..99
    (-40, 40)
    >>> shifts = shift_amounts(1000, 100, max_fraction=0.4, generator=g, extents=torch.tensor([[90, 100]] * 1000))
    >>> int(shifts.min()), int(shifts.max())   # at the right edge: only leftwards
    (-40, 0)
    """
    limit = int(max_fraction * width)
    device = extents.device if extents is not None else device
    if extents is None:
        full = torch.full((n,), limit, dtype=torch.long, device=device)
        return randint(-full, full, generator)
    start, end = extents[:, 0].long(), extents[:, 1].long()
    fills = (start <= 0) & (end >= width)
    low = torch.where(fills, -limit, -torch.clamp(start, max=limit))
    high = torch.where(fills, limit, torch.clamp(width - end, max=limit))
    return randint(low, high, generator)


def roll_time(x: torch.Tensor, shifts) -> torch.Tensor:
    """Roll each sample along time by its own number of frames (positive: later)."""
    width = x.shape[-1]
    shifts = torch.as_tensor(shifts, device=x.device)
    # out[..., t] = x[..., (t - shift) mod width] for each sample: one gather for the batch.
    index = (torch.arange(width, device=x.device)[None, :] - shifts[:, None]) % width
    index = index.view(x.shape[0], *([1] * (x.ndim - 2)), width).expand_as(x)
    return torch.gather(x, -1, index)


def time_shift(
    x: torch.Tensor, *, max_fraction: float = 0.4, generator: torch.Generator, extents: torch.Tensor | None = None
) -> torch.Tensor:
    """Roll each sample along time by up to ``max_fraction`` of its width, either way
    (:func:`shift_amounts`; with ``extents``, never pushing a sound out of its view)."""
    if int(max_fraction * x.shape[-1]) == 0:
        return x.clone()
    shifts = shift_amounts(
        x.shape[0],
        x.shape[-1],
        max_fraction=max_fraction,
        generator=generator,
        extents=None if extents is None else extents.to(x.device),
        device=x.device,
    )
    return roll_time(x, shifts)


def time_reverse(x: torch.Tensor, *, p: float = 0.5, generator: torch.Generator) -> torch.Tensor:
    """Reverse each sample in time with probability ``p``."""
    flip = _rand(x.shape[0], generator, x.device) < p
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


def spec_augment(
    x: torch.Tensor,
    *,
    time_masks: int = 2,
    time_width: float = 0.1,
    freq_masks: int = 2,
    freq_width: float = 0.15,
    generator: torch.Generator,
    extents: torch.Tensor | None = None,
) -> torch.Tensor:
    """SpecAugment masks (Park et al. 2019): bands of frames and of mels set to the sample's mean.

    Each mask's width is uniform in ``[0, width * size]`` (whole frames or mels). With
    ``extents``, time masks are sized by and placed within each sample's sound, and the fill is
    the sound's mean.
    """
    n, height, width, dev = x.shape[0], x.shape[-2], x.shape[-1], x.device
    start, end = sound_bounds(extents, n, width, dev)
    length = end - start
    inside = _frames_in(start, end, width).view(n, *([1] * (x.ndim - 2)), width)
    counted = inside.expand_as(x).flatten(1).sum(dim=1).clamp(min=1)
    fill = (x.masked_fill(~inside, 0).flatten(1).sum(dim=1) / counted).to(x.dtype)
    masked = torch.zeros(n, height, width, dtype=torch.bool, device=dev)
    if time_masks:
        # Widths as Python's int(time_width * length): float64, so 0.16 * 251 stays 40.
        w = randint(
            torch.zeros(n, time_masks, dtype=torch.long, device=dev),
            (time_width * length.double()).long()[:, None],
            generator,
        )
        t0 = start[:, None] + randint(torch.zeros_like(w), length[:, None] - w, generator)
        t = torch.arange(width, device=dev)
        band = ((t >= t0[..., None]) & (t < (t0 + w)[..., None])).any(dim=1)  # (n, frames)
        masked |= band[:, None, :]
    if freq_masks:
        top = int(freq_width * height)
        h = randint(torch.zeros(n, freq_masks, dtype=torch.long, device=dev), torch.tensor(top, device=dev), generator)
        f0 = randint(torch.zeros_like(h), height - h, generator)
        f = torch.arange(height, device=dev)
        band = ((f >= f0[..., None]) & (f < (f0 + h)[..., None])).any(dim=1)  # (n, mels)
        masked |= band[:, :, None]
    masked = masked.view(n, *([1] * (x.ndim - 3)), height, width)
    return torch.where(masked, fill.view(n, *([1] * (x.ndim - 1))), x)


def freq_shift(x: torch.Tensor, *, max_bins: int, generator: torch.Generator) -> torch.Tensor:
    """Move each sample up or down the mel axis by up to ``max_bins`` bins (uniform, either
    way); the bins it leaves are filled with the sample's minimum (the log-mel floor), not
    wrapped around, since a low rumble rolled to the top would be a new sound."""
    n, height = x.shape[0], x.shape[-2]
    limit = torch.full((n,), max_bins, dtype=torch.long, device=x.device)
    shifts = randint(-limit, limit, generator)
    index = torch.arange(height, device=x.device)[None, :] - shifts[:, None]  # out[f] = x[f - shift]
    valid = ((index >= 0) & (index < height)).view(n, *([1] * (x.ndim - 3)), height, 1)
    index = index.clamp(0, height - 1).view(n, *([1] * (x.ndim - 3)), height, 1).expand_as(x)
    floor = x.flatten(1).amin(dim=1).view(n, *([1] * (x.ndim - 1)))
    return torch.where(valid, torch.gather(x, -2, index), floor)
