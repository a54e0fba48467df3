"""The log-mel of :class:`~soundtag.features.melspec.LogMel` in NumPy alone.

The ONNX Runtime engine tags files without PyTorch, so its features cannot come from
``torch.stft``. :class:`NumpyLogMel` computes the same spectrogram (centred frames, zero
padding, periodic Hann window, power 2, a given mel filterbank, ``top_db`` against the clip's
own maximum) for one clip at a time, with SciPy's FFT in float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from soundtag.errors import ParameterError

if TYPE_CHECKING:
    from soundtag.recipe import Recipe


def n_frames(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT over ``n_samples``: ``1 + n_samples // hop_length``.

    Examples
    --------
    >>> n_frames(176400, 882)
    201
    """
    return 1 + n_samples // hop_length


def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """librosa's Slaney-normalised mel filterbank, shape ``(n_mels, 1 + n_fft // 2)``."""
    import librosa  # imported here: it takes most of a second, and exported models carry the matrix

    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                               htk=False, norm="slaney")


def mel_params(recipe: "Recipe") -> dict[str, Any]:
    """The log-mel parameters a recipe fixes, as keyword arguments of
    :class:`~soundtag.features.melspec.LogMel` and :func:`~soundtag.features.melspec.log_mel`.

    The one place that maps a recipe onto a spectrogram, so training, extraction, tagging,
    export and the pictures cannot disagree on it.

    Examples
    --------
    >>> from soundtag.recipe import load_recipe
    >>> mel_params(load_recipe("fsd2018-lh"))
    {'sample_rate': 44100, 'n_fft': 2560, 'hop_length': 882, 'n_mels': 128, 'fmin': 20.0, 'fmax': None, 'top_db': 80.0}
    """
    f = recipe.features
    return dict(sample_rate=recipe.audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, top_db=f.top_db)


class NumpyLogMel:
    """Log-mel spectrogram (dB) of one mono signal, equal to ``LogMel`` on that signal alone.

    Parameters
    ----------
    mel_basis : ``(n_mels, 1 + n_fft // 2)`` filterbank (see :func:`mel_filterbank`)
    n_fft, hop_length : STFT size and hop, in samples
    top_db : floor at the clip's maximum minus ``top_db``; ``None``: no floor
    amin : smallest power before the logarithm

    Examples
    --------
    >>> basis = mel_filterbank(sample_rate=16000, n_fft=512, n_mels=40)
    >>> NumpyLogMel(basis, n_fft=512, hop_length=160)(np.zeros(16000, np.float32)).shape
    (40, 101)
    """

    def __init__(self, mel_basis: np.ndarray, *, n_fft: int, hop_length: int, top_db: float | None = 80.0,
                 amin: float = 1e-10):
        mel_basis = np.asarray(mel_basis, dtype=np.float32)
        if mel_basis.ndim != 2 or mel_basis.shape[1] != 1 + n_fft // 2:
            raise ParameterError(f"mel_basis of shape {mel_basis.shape} does not fit n_fft={n_fft}: "
                                 f"it needs {1 + n_fft // 2} columns")
        if hop_length <= 0:
            raise ParameterError(f"hop_length={hop_length} must be a positive integer")
        self.mel_basis, self.n_fft, self.hop_length = mel_basis, n_fft, hop_length
        self.top_db, self.amin = top_db, amin
        n = np.arange(n_fft)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)).astype(np.float32)  # periodic Hann

    @classmethod
    def from_recipe(cls, recipe: "Recipe", mel_basis: np.ndarray | None = None) -> "NumpyLogMel":
        """The recipe's log-mel, equal to ``LogMel.from_recipe(recipe)`` on one clip.

        Parameters
        ----------
        recipe : fixes the rate, STFT, mel bands and ``top_db``
        mel_basis : ``(n_mels, 1 + n_fft // 2)`` filterbank, e.g. the one an exported model
            carries in its metadata; None computes it with :func:`mel_filterbank`

        Raises
        ------
        ParameterError
            when ``mel_basis`` does not have the recipe's ``n_mels`` rows and ``1 + n_fft // 2``
            columns

        Examples
        --------
        >>> from soundtag.recipe import load_recipe
        >>> NumpyLogMel.from_recipe(load_recipe("fsd2018-lh"))(np.zeros(44100, np.float32)).shape
        (128, 51)
        """
        p = mel_params(recipe)
        if mel_basis is None:
            mel_basis = mel_filterbank(sample_rate=p["sample_rate"], n_fft=p["n_fft"], n_mels=p["n_mels"],
                                       fmin=p["fmin"], fmax=p["fmax"])
        elif np.shape(mel_basis)[:1] != (p["n_mels"],):
            raise ParameterError(f"mel_basis of shape {np.shape(mel_basis)} does not fit the recipe's "
                                 f"n_mels={p['n_mels']}: it needs {p['n_mels']} rows")
        return cls(mel_basis, n_fft=p["n_fft"], hop_length=p["hop_length"], top_db=p["top_db"])

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """``(n_mels, n_frames(len(samples), hop_length))`` float32 dB."""
        from scipy import fft  # pocketfft in float32, any length, a few ms per five-second clip

        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ParameterError(f"samples must be one mono signal, got shape {samples.shape}")
        pad = self.n_fft // 2
        padded = np.pad(samples, (pad, pad))
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop_length]
        spectrum = fft.rfft(frames * self.window, axis=1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        db = 10.0 * np.log10(np.maximum(self.mel_basis @ power.T, self.amin))
        if self.top_db is not None:
            db = np.maximum(db, db.max() - self.top_db)
        return db.astype(np.float32)
