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

    def __init__(
        self,
        *,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        fmin: float = 0.0,
        fmax: float | None = None,
        top_db: float | None = 80.0,
        amin: float = 1e-10,
        window_length: int | None = None,
        periodic_window: bool = True,
        pad_mode: str = "constant",
        preemphasis: float = 0.0,
        mel_scale: str = "slaney",
        log: str = "db",
        log_offset: float = 1e-5,
        offset: float = 0.0,
        scale: float = 1.0,
    ):
        super().__init__()
        for name, value in (
            ("sample_rate", sample_rate),
            ("n_fft", n_fft),
            ("hop_length", hop_length),
            ("n_mels", n_mels),
        ):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ParameterError(f"{name}={value!r} must be a positive integer")
        fmax = sample_rate / 2 if fmax is None else fmax
        if not 0 <= fmin < fmax <= sample_rate / 2:
            raise ParameterError(
                f"fmin={fmin}, fmax={fmax} must satisfy 0 <= fmin < fmax <= sample_rate/2 = {sample_rate / 2}"
            )
        if pad_mode not in ("constant", "reflect") or log not in ("db", "ln"):
            raise ParameterError(f"pad_mode={pad_mode!r} must be 'constant' or 'reflect' and log={log!r} 'db' or 'ln'")
        self.n_fft, self.hop_length, self.top_db, self.amin = n_fft, hop_length, top_db, amin
        self.pad_mode, self.preemphasis, self.log, self.log_offset = pad_mode, preemphasis, log, log_offset
        self.offset, self.scale = offset, scale
        basis = mel_filterbank(
            sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, mel_scale=mel_scale
        )
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)
        self._bands = mel_bands(basis)
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
        if (
            self.pad_mode == "reflect"
            and lengths is not None
            and bool((lengths.to(waveforms.device) != waveforms.shape[1]).any())
        ):
            # Reflection mirrors a clip's own end, which zero padding of the batch would hide:
            # each clip alone, then padded with its floor.
            return self._one_by_one(waveforms, lengths)
        spec = torch.stft(
            waveforms,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            pad_mode=self.pad_mode,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = self._project(power)
        valid = None  # (batch, frames) of frames inside each clip; None: every frame
        if lengths is not None:
            frames = 1 + lengths.to(mel.device) // self.hop_length
            if waveforms.device.type != "cpu" or bool((frames < mel.shape[-1]).any()):
                # (On a GPU the mask is always built: checking would cost a host sync.)
                valid = (torch.arange(mel.shape[-1], device=mel.device)[None, :] < frames[:, None])[:, None, :]
        if self.log == "ln":
            out = torch.log(mel + self.log_offset)
            if valid is not None:
                out = torch.where(valid, out, float(np.log(self.log_offset)))
        else:
            out = 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
            if self.top_db is not None:
                peak = (out if valid is None else out.masked_fill(~valid, float("-inf"))).amax(dim=(1, 2), keepdim=True)
                out = torch.maximum(out, peak - self.top_db)
                if valid is not None:
                    out = torch.where(valid, out, peak - self.top_db)
            elif valid is not None:
                out = torch.where(valid, out, float(10.0 * np.log10(self.amin)))
        if self.offset or self.scale != 1.0:
            out = (out + self.offset) / self.scale
        return out

    def _project(self, power: torch.Tensor) -> torch.Tensor:
        """``mel_basis @ power``. On a GPU one dense matmul. On the CPU band by band: each group
        of neighbouring filters is non-zero over a few dozen FFT bins only, so multiplying the
        bands skips the zeros of the dense basis (94% of it for 128 mels at n_fft 1024), which
        made this product the largest cost of a CPU log-mel (measured 3x faster at 8 bands; a
        sparse CSR product was slower than the bands)."""
        if power.device.type != "cpu":
            return torch.matmul(self.mel_basis, power)
        return torch.cat(
            [torch.matmul(self.mel_basis[m0:m1, b0:b1], power[..., b0:b1, :]) for m0, m1, b0, b1 in self._bands], dim=-2
        )

    def _one_by_one(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` of each clip alone (after pre-emphasis), padded with its floor."""
        saved, self.preemphasis = self.preemphasis, 0.0
        try:
            width = 1 + waveforms.shape[1] // self.hop_length
            outs = []
            for row, n in enumerate(lengths.tolist()):
                one = self(waveforms[row : row + 1, : int(n)])[0]
                outs.append(torch.nn.functional.pad(one, (0, width - one.shape[1]), value=float(one.min())))
            return torch.stack(outs)
        finally:
            self.preemphasis = saved


def mel_bands(basis: np.ndarray, n_bands: int = 8) -> list[tuple[int, int, int, int]]:
    """Split a mel basis ``(n_mels, n_bins)`` into ``n_bands`` groups of neighbouring filters,
    each with the range of FFT bins where some filter of the group is non-zero.

    Returns ``(mel_start, mel_end, bin_start, bin_end)`` tuples that cover every filter once,
    in order, such that ``basis[m0:m1, b0:b1] @ power[b0:b1]`` stacked over the bands equals
    ``basis @ power``. A group whose filters are all zero keeps one bin (its rows are zero).

    Examples
    --------
    >>> basis = np.zeros((4, 10)); basis[0, 0:3] = basis[1, 2:5] = basis[2, 4:7] = basis[3, 6:9] = 1
    >>> mel_bands(basis, n_bands=2)
    [(0, 2, 0, 5), (2, 4, 4, 9)]
    """
    n_mels = basis.shape[0]
    edges = np.linspace(0, n_mels, min(n_bands, n_mels) + 1).round().astype(int)
    bands = []
    for m0, m1 in zip(edges[:-1], edges[1:]):
        bins = np.flatnonzero((basis[m0:m1] != 0).any(axis=0))
        b0, b1 = (int(bins[0]), int(bins[-1]) + 1) if bins.size else (0, 1)
        bands.append((int(m0), int(m1), b0, b1))
    return bands


def log_mel(
    samples: np.ndarray,
    *,
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    top_db: float | None = 80.0,
    **frontend,
) -> np.ndarray:
    """Log-mel spectrogram of one mono signal, shape ``(n_mels, n_frames(len, hop))``, in dB.

    A convenience over :class:`LogMel` for a single clip; with no ``frontend`` keywords (see
    :class:`LogMel`) equal to ``librosa.power_to_db(librosa.feature.melspectrogram(y=samples, ...))``.
    """
    module = LogMel(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_mels,
        fmin=fmin,
        fmax=fmax,
        top_db=top_db,
        **frontend,
    )
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
