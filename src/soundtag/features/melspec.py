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
from soundtag.features.numpy_melspec import mel_filterbank, mel_params

if TYPE_CHECKING:
    from soundtag.recipe import Recipe


class LogMel(torch.nn.Module):
    """Batched log-mel spectrogram (dB) matching librosa.

    Parameters
    ----------
    sample_rate, n_fft, hop_length, n_mels, fmin, fmax : as in ``librosa.feature.melspectrogram``
    top_db : floor each clip at its own maximum minus ``top_db`` (``librosa.power_to_db``)
    amin : smallest power before the logarithm, so silence gives ``10*log10(amin)``, never -inf

    Shapes
    ------
    input ``(batch, samples)`` float32 with optional ``lengths`` ``(batch,)`` of valid samples
    (the rest is zero padding); output ``(batch, n_mels, frames)`` with
    ``frames = n_frames(samples, hop_length)``. Frames past a clip's own length are filled with
    that clip's floor, so ``out[i, :, :n_frames(lengths[i], hop)]`` is exactly the clip alone.
    """

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
                 fmin: float = 0.0, fmax: float | None = None, top_db: float | None = 80.0,
                 amin: float = 1e-10):
        super().__init__()
        for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft),
                            ("hop_length", hop_length), ("n_mels", n_mels)):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ParameterError(f"{name}={value!r} must be a positive integer")
        fmax = sample_rate / 2 if fmax is None else fmax
        if not 0 <= fmin < fmax <= sample_rate / 2:
            raise ParameterError(f"fmin={fmin}, fmax={fmax} must satisfy 0 <= fmin < fmax <= "
                                 f"sample_rate/2 = {sample_rate / 2}")
        self.n_fft, self.hop_length, self.top_db, self.amin = n_fft, hop_length, top_db, amin
        basis = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

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

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if waveforms.ndim != 2:
            raise ParameterError(f"waveforms must have shape (batch, samples), got {tuple(waveforms.shape)}")
        spec = torch.stft(waveforms, self.n_fft, self.hop_length, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_basis, power)
        db = 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
        if lengths is None:
            valid = torch.ones(db.shape[0], db.shape[-1], dtype=torch.bool, device=db.device)
        else:
            frames = 1 + lengths.to(db.device) // self.hop_length
            valid = torch.arange(db.shape[-1], device=db.device)[None, :] < frames[:, None]
        if self.top_db is not None:
            peak = db.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
            floor = peak - self.top_db
            db = torch.maximum(db, floor)
            db = torch.where(valid[:, None, :], db, floor)
        return db


def log_mel(samples: np.ndarray, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
            fmin: float = 0.0, fmax: float | None = None, top_db: float | None = 80.0) -> np.ndarray:
    """Log-mel spectrogram of one mono signal, shape ``(n_mels, n_frames(len, hop))``, in dB.

    A convenience over :class:`LogMel` for a single clip; equal to
    ``librosa.power_to_db(librosa.feature.melspectrogram(y=samples, ...))``.
    """
    module = LogMel(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                    fmin=fmin, fmax=fmax, top_db=top_db)
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
