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
from soundtag.recipe import FRONTEND_DEFAULTS

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


def mel_filterbank(
    *,
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    mel_scale: str = "slaney",
) -> np.ndarray:
    """A mel filterbank of shape ``(n_mels, 1 + n_fft // 2)``.

    ``mel_scale="slaney"`` is librosa's Slaney-normalised bank (``librosa.filters.mel``, as
    torchlibrosa and PANNs use it); ``"kaldi"`` is :func:`kaldi_mel_filterbank`.
    """
    if mel_scale == "kaldi":
        return kaldi_mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    if mel_scale != "slaney":
        raise ParameterError(f"mel_scale={mel_scale!r} must be 'slaney' or 'kaldi'")
    import librosa  # imported here: it takes most of a second, and exported models carry the matrix

    return librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney"
    )


def kaldi_mel_filterbank(
    *, sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Kaldi's mel banks (``torchaudio.compliance.kaldi.get_mel_banks`` without VTLN warping),
    with a zero column for the Nyquist bin, as EfficientAT pads them: ``(n_mels, 1 + n_fft // 2)``.

    Triangles of height 1, equally spaced on the mel scale ``1127 ln(1 + f / 700)`` from
    ``fmin`` to ``fmax``, evaluated at the FFT bins ``k * sample_rate / n_fft`` for
    ``k < n_fft // 2``; no area normalisation.

    Examples
    --------
    >>> bank = kaldi_mel_filterbank(sample_rate=32000, n_fft=1024, n_mels=128, fmax=15000)
    >>> bank.shape, float(bank.max()) <= 1.0, bool((bank[:, -1] == 0).all())
    ((128, 513), True, True)
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ParameterError(f"fmin={fmin}, fmax={fmax} must satisfy 0 <= fmin < fmax <= {sample_rate / 2}")

    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    low, high = mel(fmin), mel(fmax)
    delta = (high - low) / (n_mels + 1)
    left = low + delta * np.arange(n_mels)[:, None]
    center, right = left + delta, left + 2 * delta
    bins = mel(np.arange(n_fft // 2) * sample_rate / n_fft)[None, :]
    bank = np.maximum(0.0, np.minimum((bins - left) / (center - left), (right - bins) / (right - center)))
    return np.pad(bank, ((0, 0), (0, 1))).astype(np.float32)


#: mel_params' keys that only the front-end's details use (the STFT size, rate and bands aside).
FRONTEND_KEYS = tuple(FRONTEND_DEFAULTS)


def mel_params(recipe: "Recipe") -> dict[str, Any]:
    """The log-mel parameters a recipe fixes, as keyword arguments of
    :class:`~soundtag.features.melspec.LogMel` and :func:`~soundtag.features.melspec.log_mel`.

    The one place that maps a recipe onto a spectrogram, so training, extraction, tagging,
    export and the pictures cannot disagree on it.

    Examples
    --------
    >>> from soundtag.recipe import load_recipe
    >>> p = mel_params(load_recipe("fsd2018-lh"))
    >>> {k: p[k] for k in ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "top_db")}
    {'sample_rate': 44100, 'n_fft': 2560, 'hop_length': 882, 'n_mels': 128, 'fmin': 20.0, 'fmax': None, 'top_db': 80.0}
    >>> p["pad_mode"], p["log"], p["mel_scale"]
    ('constant', 'db', 'slaney')
    """
    f = recipe.features
    return dict(
        sample_rate=recipe.audio.sample_rate,
        n_fft=f.n_fft,
        hop_length=f.hop_length,
        n_mels=f.n_mels,
        fmin=f.fmin,
        fmax=f.fmax,
        top_db=f.top_db,
        **{k: getattr(f, k) for k in FRONTEND_KEYS},
    )


def hann_window(n_fft: int, window_length: int | None = None, periodic: bool = True) -> np.ndarray:
    """A Hann window of ``window_length`` samples centred in ``n_fft`` zeros, as ``torch.stft``
    pads a shorter window (float64, length ``n_fft``).

    Examples
    --------
    >>> w = hann_window(8, 4, periodic=False)
    >>> w.round(3).tolist()
    [0.0, 0.0, 0.0, 0.75, 0.75, 0.0, 0.0, 0.0]
    """
    length = n_fft if window_length is None else int(window_length)
    if not 0 < length <= n_fft:
        raise ParameterError(f"window_length={window_length} must be between 1 and n_fft={n_fft}")
    n = np.arange(length)
    denominator = length if periodic else max(length - 1, 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / denominator)
    left = (n_fft - length) // 2
    return np.pad(window, (left, n_fft - length - left))


def frontend_frames(n_samples: int, hop_length: int, preemphasis: float = 0.0) -> int:
    """Frames of the front-end over ``n_samples``: pre-emphasis drops one sample first.

    Examples
    --------
    >>> frontend_frames(320000, 320), frontend_frames(320000, 320, preemphasis=0.97)
    (1001, 1000)
    """
    return n_frames(n_samples - (1 if preemphasis and n_samples > 0 else 0), hop_length)


class NumpyLogMel:
    """The recipe's log-mel of one mono signal, equal to ``LogMel`` on that signal alone.

    Parameters
    ----------
    mel_basis : ``(n_mels, 1 + n_fft // 2)`` filterbank (see :func:`mel_filterbank`)
    n_fft, hop_length : STFT size and hop, in samples
    top_db : floor at the clip's maximum minus ``top_db``; ``None``: no floor (``log="db"`` only)
    amin : smallest power before the logarithm
    window_length, periodic_window, pad_mode, preemphasis, log, log_offset, offset, scale :
        as the recipe's ``features`` fields of the same names

    Examples
    --------
    >>> basis = mel_filterbank(sample_rate=16000, n_fft=512, n_mels=40)
    >>> NumpyLogMel(basis, n_fft=512, hop_length=160)(np.zeros(16000, np.float32)).shape
    (40, 101)
    """

    def __init__(
        self,
        mel_basis: np.ndarray,
        *,
        n_fft: int,
        hop_length: int,
        top_db: float | None = 80.0,
        amin: float = 1e-10,
        window_length: int | None = None,
        periodic_window: bool = True,
        pad_mode: str = "constant",
        preemphasis: float = 0.0,
        log: str = "db",
        log_offset: float = 1e-5,
        offset: float = 0.0,
        scale: float = 1.0,
    ):
        mel_basis = np.asarray(mel_basis, dtype=np.float32)
        if mel_basis.ndim != 2 or mel_basis.shape[1] != 1 + n_fft // 2:
            raise ParameterError(
                f"mel_basis of shape {mel_basis.shape} does not fit n_fft={n_fft}: it needs {1 + n_fft // 2} columns"
            )
        if hop_length <= 0:
            raise ParameterError(f"hop_length={hop_length} must be a positive integer")
        if pad_mode not in ("constant", "reflect") or log not in ("db", "ln"):
            raise ParameterError(f"pad_mode={pad_mode!r} must be 'constant' or 'reflect' and log={log!r} 'db' or 'ln'")
        self.mel_basis, self.n_fft, self.hop_length = mel_basis, n_fft, hop_length
        self.top_db, self.amin, self.pad_mode, self.preemphasis = top_db, amin, pad_mode, preemphasis
        self.log, self.log_offset, self.offset, self.scale = log, log_offset, offset, scale
        self.window = hann_window(n_fft, window_length, periodic_window).astype(np.float32)

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
            mel_basis = mel_filterbank(
                sample_rate=p["sample_rate"],
                n_fft=p["n_fft"],
                n_mels=p["n_mels"],
                fmin=p["fmin"],
                fmax=p["fmax"],
                mel_scale=p["mel_scale"],
            )
        elif np.shape(mel_basis)[:1] != (p["n_mels"],):
            raise ParameterError(
                f"mel_basis of shape {np.shape(mel_basis)} does not fit the recipe's "
                f"n_mels={p['n_mels']}: it needs {p['n_mels']} rows"
            )
        return cls(
            mel_basis,
            n_fft=p["n_fft"],
            hop_length=p["hop_length"],
            top_db=p["top_db"],
            amin=p["amin"],
            **{k: p[k] for k in FRONTEND_KEYS if k not in ("mel_scale", "amin")},
        )

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """``(n_mels, frontend_frames(len(samples), hop_length, preemphasis))`` float32."""
        from scipy import fft  # pocketfft in float32, any length, a few ms per five-second clip

        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ParameterError(f"samples must be one mono signal, got shape {samples.shape}")
        if self.preemphasis and len(samples) > 1:
            samples = samples[1:] - np.float32(self.preemphasis) * samples[:-1]
        pad = self.n_fft // 2
        if self.pad_mode == "reflect" and len(samples) <= pad:
            raise ParameterError(f"a clip of {len(samples)} samples is too short for reflect padding by {pad}")
        padded = np.pad(samples, (pad, pad), mode=self.pad_mode)
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop_length]
        spectrum = fft.rfft(frames * self.window, axis=1)
        power = spectrum.real**2 + spectrum.imag**2
        mel = self.mel_basis @ power.T
        if self.log == "ln":
            out = np.log(mel + np.float32(self.log_offset))
        else:
            out = 10.0 * np.log10(np.maximum(mel, self.amin))
            if self.top_db is not None:
                out = np.maximum(out, out.max() - self.top_db)
        if self.offset or self.scale != 1.0:
            out = (out + self.offset) / self.scale
        return out.astype(np.float32)
