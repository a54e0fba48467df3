"""Log-mel spectrograms in batches with PyTorch, equal to librosa's to within 0.01 dB.

``LogMel`` reproduces ``librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr,
n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax))`` (centred frames,
zero padding, periodic Hann window, power 2, Slaney mel filterbank, ``top_db=80`` against each
clip's own maximum) but for a whole batch at once, on the CPU or a GPU. librosa is per clip
and NumPy-only, which is what made the original kernel's feature step slow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from soundtag.errors import ParameterError
from soundtag.features.numpy_melspec import frontend_frames, hann_window, mel_filterbank, mel_params

if TYPE_CHECKING:
    from soundtag.recipe import Recipe


class LogMel(torch.nn.Module):
    """Batched log-mel spectrogram matching librosa (and, by its recipe fields, the inputs of
    PANNs and EfficientAT).

    Parameters
    ----------
    sample_rate, n_fft, hop_length, n_mels, fmin, fmax : as in ``librosa.feature.melspectrogram``
    top_db : floor each clip at its own maximum minus ``top_db`` (``librosa.power_to_db``)
    amin : smallest power before the logarithm, so silence gives ``10*log10(amin)``, never -inf
    window_length, periodic_window, pad_mode, preemphasis, mel_scale, log, log_offset, offset,
    scale : the recipe's ``features`` fields of the same names (defaults: librosa's log-mel)

    Shapes
    ------
    input ``(batch, samples)`` float32 with optional ``lengths`` ``(batch,)`` of valid samples
    (the rest is zero padding); output ``(batch, n_mels, frames)`` with
    ``frames = self.n_frames(samples)``. Frames past a clip's own length are filled with that
    clip's floor, so ``out[i, :, :self.n_frames(lengths[i])]`` is exactly the clip alone.
    """

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
                 fmin: float = 0.0, fmax: float | None = None, top_db: float | None = 80.0,
                 amin: float = 1e-10, window_length: int | None = None, periodic_window: bool = True,
                 pad_mode: str = "constant", preemphasis: float = 0.0, mel_scale: str = "slaney",
                 log: str = "db", log_offset: float = 1e-5, offset: float = 0.0, scale: float = 1.0):
        super().__init__()
        for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft),
                            ("hop_length", hop_length), ("n_mels", n_mels)):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ParameterError(f"{name}={value!r} must be a positive integer")
        fmax = sample_rate / 2 if fmax is None else fmax
        if not 0 <= fmin < fmax <= sample_rate / 2:
            raise ParameterError(f"fmin={fmin}, fmax={fmax} must satisfy 0 <= fmin < fmax <= "
                                 f"sample_rate/2 = {sample_rate / 2}")
        if pad_mode not in ("constant", "reflect") or log not in ("db", "ln"):
            raise ParameterError(f"pad_mode={pad_mode!r} must be 'constant' or 'reflect' and log={log!r} "
                                 "'db' or 'ln'")
        self.n_fft, self.hop_length, self.top_db, self.amin = n_fft, hop_length, top_db, amin
        self.pad_mode, self.preemphasis, self.log, self.log_offset = pad_mode, preemphasis, log, log_offset
        self.offset, self.scale = offset, scale
        basis = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                               mel_scale=mel_scale)
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)
        window = hann_window(n_fft, window_length, periodic_window)
        self.register_buffer("window", torch.from_numpy(window.astype(np.float32)), persistent=False)

    @classmethod
    def from_recipe(cls, recipe: "Recipe") -> "LogMel":
        """The log-mel a recipe fixes (rate, STFT, mel bands, ``top_db``): the one training,
        extraction and tagging all use.

        Examples
        --------
        >>> from soundtag.recipe import load_recipe
        >>> logmel = LogMel.from_recipe(load_recipe("fsd2018-lh"))
        >>> tuple(logmel(torch.zeros(2, 44100)).shape)
        (2, 128, 51)
        """
        return cls(**mel_params(recipe))

    def n_frames(self, n_samples: int) -> int:
        """Frames of the output for a clip of ``n_samples``."""
        return frontend_frames(n_samples, self.hop_length, self.preemphasis)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if waveforms.ndim != 2:
            raise ParameterError(f"waveforms must have shape (batch, samples), got {tuple(waveforms.shape)}")
        if self.preemphasis and waveforms.shape[1] > 1:
            # EfficientAT's conv1d with kernel [-c, 1]: one sample shorter.
            waveforms = waveforms[:, 1:] - self.preemphasis * waveforms[:, :-1]
            lengths = None if lengths is None else (lengths - 1).clamp(min=0)
        if (self.pad_mode == "reflect" and lengths is not None
                and bool((lengths.to(waveforms.device) != waveforms.shape[1]).any())):
            # Reflection mirrors a clip's own end, which zero padding of the batch would hide:
            # each clip alone, then padded with its floor.
            return self._one_by_one(waveforms, lengths)
        spec = torch.stft(waveforms, self.n_fft, self.hop_length, window=self.window, center=True,
                          pad_mode=self.pad_mode, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_basis, power)
        if lengths is None:
            valid = torch.ones(mel.shape[0], mel.shape[-1], dtype=torch.bool, device=mel.device)
        else:
            frames = 1 + lengths.to(mel.device) // self.hop_length
            valid = torch.arange(mel.shape[-1], device=mel.device)[None, :] < frames[:, None]
        if self.log == "ln":
            out = torch.log(mel + self.log_offset)
            out = torch.where(valid[:, None, :], out, float(np.log(self.log_offset)))
        else:
            out = 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
            if self.top_db is not None:
                peak = out.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
                floor = peak - self.top_db
                out = torch.maximum(out, floor)
                out = torch.where(valid[:, None, :], out, floor)
            else:
                out = torch.where(valid[:, None, :], out, float(10.0 * np.log10(self.amin)))
        if self.offset or self.scale != 1.0:
            out = (out + self.offset) / self.scale
        return out

    def _one_by_one(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` of each clip alone (after pre-emphasis), padded with its floor."""
        saved, self.preemphasis = self.preemphasis, 0.0
        try:
            width = 1 + waveforms.shape[1] // self.hop_length
            outs = []
            for row, n in enumerate(lengths.tolist()):
                one = self(waveforms[row: row + 1, : int(n)])[0]
                outs.append(torch.nn.functional.pad(one, (0, width - one.shape[1]), value=float(one.min())))
            return torch.stack(outs)
        finally:
            self.preemphasis = saved


def log_mel(samples: np.ndarray, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
            fmin: float = 0.0, fmax: float | None = None, top_db: float | None = 80.0, **frontend) -> np.ndarray:
    """Log-mel spectrogram of one mono signal, shape ``(n_mels, n_frames(len, hop))``, in dB.

    A convenience over :class:`LogMel` for a single clip; with no ``frontend`` keywords (see
    :class:`LogMel`) equal to ``librosa.power_to_db(librosa.feature.melspectrogram(y=samples, ...))``.
    """
    module = LogMel(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                    fmin=fmin, fmax=fmax, top_db=top_db, **frontend)
    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None])
    return out[0].numpy()


def recipe_log_mel(samples: np.ndarray, recipe: "Recipe") -> np.ndarray:
    """Log-mel of one mono signal with a recipe's parameters, ``(n_mels, n_frames(len, hop))`` dB.

    ``samples`` must already be at ``recipe.audio.sample_rate`` (e.g. from
    :func:`~soundtag.features.views.decode_for_recipe` or :func:`soundtag.audio.load`).

    Examples
    --------
    >>> from soundtag.recipe import load_recipe
    >>> recipe_log_mel(np.zeros(44100, np.float32), load_recipe("fsd2018-lh")).shape
    (128, 51)
    """
    return log_mel(samples, **mel_params(recipe))
