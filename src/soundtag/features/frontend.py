"""What a model sees of a log-mel view: where the sound is, and the recipe's normalisation, in
PyTorch. One module for every path: training from the store (a view at a time) and from the
device (a batch at a time), and inference and ONNX export, where each fold's fitted statistics
are buffers of the module, so the exported graph normalises as training did.

* :func:`sound_extents`: the ``[start, end)`` frames of each view's sound, from the first to the
  last frame that rises above the view's minimum in some mel band (zero padding sits at the
  log-mel's floor in every band); a view with no frame above its minimum is all sound;
* :class:`Normalization`: ``per_sample`` (the kernel's ``(x - mean) / (std + 1)`` over the view,
  or with ``over="sound"`` over its sound's frames only), ``per_feature`` (each mel bin by the
  training clips' mean and std), ``global`` (one mean and std) or ``none``.

The statistics themselves are fitted over the store by
:class:`~soundtag.training.data.Normalizer`, which finds each clip's sound with
:func:`~soundtag.features.views.sound_extent`, this module's NumPy twin (tested equal).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from soundtag.errors import ParameterError
from soundtag.features.views import SOUND_FLOOR_DB

__all__ = ["KINDS", "Normalization", "sound_extents", "sound_mask"]

#: ``view.normalization`` values, and ``view.normalize_over`` values.
KINDS, OVER = ("per_sample", "per_feature", "global", "none"), ("window", "sound")
#: Added to a fitted std before dividing, so a constant mel bin stays finite.
STD_EPS = 1e-6


def sound_extents(x: torch.Tensor, *, floor_db: float = SOUND_FLOOR_DB) -> torch.Tensor:
    """``(batch, 2)`` ``[start, end)`` frames of the sound of each ``(mels, frames)`` view of a
    ``(batch, mels, frames)`` tensor (:func:`~soundtag.features.views.sound_extent` on each).

    Examples
    --------
    >>> x = torch.full((2, 4, 10), -80.0)
    >>> x[0, :, 3:6] = -20.0
    >>> sound_extents(x).tolist()     # the second view is silent: all of it
    [[3, 6], [0, 10]]
    """
    width = x.shape[-1]
    active = x.amax(dim=1) > x.flatten(1).amin(dim=1)[:, None] + floor_db  # (batch, frames)
    start = active.long().argmax(dim=1)
    end = width - active.flip(1).long().argmax(dim=1)
    any_sound = active.any(dim=1)
    return torch.stack([torch.where(any_sound, start, 0), torch.where(any_sound, end, width)], dim=1)


def sound_mask(x: torch.Tensor, extents: torch.Tensor | None = None) -> torch.Tensor:
    """``(batch, 1, frames)`` boolean: True on the frames of each view's sound."""
    extents = sound_extents(x) if extents is None else extents
    t = torch.arange(x.shape[-1], device=x.device)
    return ((t >= extents[:, :1]) & (t < extents[:, 1:]))[:, None, :]


class Normalization(nn.Module):
    """The recipe's normalisation, ``forward(x (batch, mels, frames), extents=None) -> float32``.

    Parameters
    ----------
    kind : ``view.normalization``: ``per_sample``, ``per_feature``, ``global`` or ``none``
    over : ``view.normalize_over`` for ``per_sample``: statistics of the whole view (``window``)
        or of its sound's frames (``sound``)
    mean, std : the fitted statistics, ``(mels,)`` for ``per_feature`` and ``(1,)`` for
        ``global``; buffers of the module, so they travel with it to a device and into ONNX

    Examples
    --------
    >>> norm = Normalization("per_sample", over="sound")
    >>> x = torch.full((1, 2, 8), -80.0)
    >>> x[:, :, 3:5] = torch.tensor([-10.0, -30.0])   # mean -20, std 10 of the sound
    >>> norm(x)[0, 0, 3:5]
    tensor([ 0.9091, -0.9091])
    """

    def __init__(
        self,
        kind: str,
        *,
        over: str = "window",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        if kind not in KINDS or over not in OVER:
            raise ParameterError(f"normalization={kind!r} over={over!r} must be one of {KINDS} over one of {OVER}")
        self.kind, self.over = kind, over
        fitted = kind in ("per_feature", "global")
        if fitted and (mean is None or std is None):
            raise ParameterError(f"normalization={kind!r} needs the fitted mean and std of the training clips")
        # (mels, 1) or (1, 1): they broadcast over (batch, mels, frames). The divisor is std + eps
        # as training has always rounded it: per mel bin in float32, the global one in float64.
        if fitted:
            std32 = torch.as_tensor(std, dtype=torch.float32)
            divisor = std32 + STD_EPS if kind == "per_feature" else (std32.double() + STD_EPS).float()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32)[:, None] if fitted else None)
        self.register_buffer("divisor", divisor[:, None] if fitted else None)

    @classmethod
    def from_record(cls, record: dict) -> "Normalization":
        """From a checkpoint's ``normalizer`` record (:meth:`~soundtag.training.data.Normalizer.to_dict`)."""
        return cls(record["kind"], over=record.get("over", "window"), mean=record.get("mean"), std=record.get("std"))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, over={self.over!r}"

    def forward(self, x: torch.Tensor, extents: torch.Tensor | None = None) -> torch.Tensor:
        x = x.float()
        if self.kind == "per_sample":
            if self.over == "sound":
                inside = sound_mask(x, extents).expand_as(x)
                count = inside.flatten(1).sum(dim=1).clamp(min=1)
                mean = x.masked_fill(~inside, 0).flatten(1).sum(dim=1) / count
                var = ((x - mean[:, None, None]) ** 2).masked_fill(~inside, 0).flatten(1).sum(dim=1) / count
            else:
                mean, var = x.flatten(1).mean(dim=1), x.flatten(1).var(dim=1, unbiased=False)
            return (x - mean[:, None, None]) / (var.sqrt()[:, None, None] + 1.0)
        if self.kind in ("per_feature", "global"):
            return (x - self.mean) / self.divisor
        return x
