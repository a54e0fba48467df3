"""Audio decoding: any file to a clean mono float32 waveform at the recipe's rate.

Decoding is soundfile (WAV, FLAC, Ogg, MP3 through libsndfile); resampling is soxr at high
quality. Every way a file can be bad ends in an :class:`~soundtag.errors.AudioError` that
names the file (corrupt, empty, missing) or in a note on the result (down-mixed, resampled,
truncated, silent), and never in NaN or infinity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

from soundtag.errors import AudioError, ParameterError

# Peak amplitude under which a clip is called silent: -120 dBFS, below 16-bit dither.
SILENCE_PEAK = 1e-6


@dataclass
class Waveform:
    """A decoded clip.

    Attributes
    ----------
    samples : np.ndarray [shape=(n,), dtype=float32], mono, finite
    sample_rate : rate of ``samples`` in Hz
    native_rate : the file's own rate in Hz
    channels : the file's channel count before down-mixing
    duration : seconds of audio in ``samples`` (after trimming, before padding)
    source_duration : seconds of audio read from the file
    notes : what was done or found on the way (``resampled 48000->44100 Hz``, ``silent``...)
    """

    samples: np.ndarray
    sample_rate: int
    native_rate: int
    channels: int
    duration: float
    source_duration: float
    notes: list[str] = field(default_factory=list)


class NativeAudio(NamedTuple):
    """A file's samples as it holds them, from :func:`decode`.

    Attributes
    ----------
    samples : np.ndarray [shape=(frames, channels), dtype=float32], every channel, at the
        file's own rate; not cleaned (a float file may hold NaN or infinity)
    sample_rate : the file's rate in Hz
    total_frames : frames in the whole file (more than ``len(samples)`` when ``max_duration``
        cut the read short)
    """

    samples: np.ndarray
    sample_rate: int
    total_frames: int


def decode(path: str | Path, *, max_duration: float | None = None) -> NativeAudio:
    """Decode ``path`` at its native rate with all its channels: the one place files are read.

    Parameters
    ----------
    path : audio file (WAV, FLAC, Ogg Vorbis, MP3, AIFF; any rate and channel count)
    max_duration : read at most this many seconds from the start; None reads everything

    Returns
    -------
    NativeAudio

    Raises
    ------
    AudioError
        ``reason`` is ``missing`` (no such file), ``corrupt`` (libsndfile cannot decode it) or
        ``empty`` (no samples); the message names the file.
    ParameterError
        when ``max_duration`` is not positive

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "stereo.wav"
    >>> sf.write(path, np.full((8000, 2), 0.25, np.float32), 8000, subtype="FLOAT")
    >>> native = decode(path, max_duration=0.5)
    >>> native.samples.shape, native.samples.dtype, native.sample_rate, native.total_frames
    ((4000, 2), dtype('float32'), 8000, 8000)
    >>> decode(path.with_name("nope.wav"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    soundtag.errors.AudioError: .../nope.wav: no such file; check the path
    """
    if max_duration is not None and not max_duration > 0:
        raise ParameterError(f"max_duration={max_duration} must be a positive number of seconds or None")
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "missing", "no such file; check the path")
    try:
        with sf.SoundFile(str(path)) as fh:  # one open for the header and the samples
            rate, total = int(fh.samplerate), int(fh.frames)
            frames = -1 if max_duration is None else int(max_duration * rate)
            data = fh.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise AudioError(path, "corrupt", f"cannot decode ({exc}); re-encode the file or blacklist it") from exc
    if data.shape[0] == 0:
        raise AudioError(path, "empty", "the file holds no audio samples; remove or blacklist it")
    return NativeAudio(data, rate, total)


def load(
    path: str | Path,
    *,
    sample_rate: int,
    trim_db: float | None = None,
    max_duration: float | None = None,
) -> Waveform:
    """Decode ``path`` to mono float32 at ``sample_rate``.

    Parameters
    ----------
    path : audio file (WAV, FLAC, Ogg Vorbis, MP3, AIFF; any rate and channel count)
    sample_rate : target rate in Hz; soxr resamples at high quality when the file differs
    trim_db : trim leading and trailing parts quieter than ``trim_db`` below the peak, with
        the semantics of ``librosa.effects.trim(top_db=trim_db)``; None keeps everything
    max_duration : read at most this many seconds (a note says the clip was truncated)

    Returns
    -------
    Waveform

    Raises
    ------
    AudioError
        ``reason`` is ``missing``, ``corrupt`` or ``empty``; the message names the file.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "tone.wav"
    >>> tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)
    >>> sf.write(path, np.stack([tone, tone], axis=1), 48000)
    >>> wav = load(path, sample_rate=16000)
    >>> wav.samples.shape, wav.samples.dtype, wav.channels, wav.duration
    ((16000,), dtype('float32'), 2, 1.0)
    >>> wav.notes
    ['down-mixed 2 channels', 'resampled 48000->16000 Hz']
    """
    if sample_rate <= 0:
        raise ParameterError(f"sample_rate={sample_rate} must be a positive integer")
    data, native_rate, total_frames = decode(path, max_duration=max_duration)
    notes: list[str] = []
    if max_duration is not None and total_frames > data.shape[0]:
        notes.append(f"truncated from {total_frames / native_rate:.1f} s to {max_duration:g} s")

    channels = data.shape[1]
    samples = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    if channels > 1:
        notes.append(f"down-mixed {channels} channels")
    peak = float(np.max(np.abs(samples)))  # NaN or inf when any sample is: one pass for both checks
    if not np.isfinite(peak):
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
        notes.append("non-finite samples replaced")
    if native_rate != sample_rate or not np.isfinite(peak):
        if native_rate != sample_rate:
            samples = resample(samples, native_rate, sample_rate)
            notes.append(f"resampled {native_rate}->{sample_rate} Hz")
        peak = float(np.max(np.abs(samples)))

    if peak < SILENCE_PEAK:
        notes.append("silent")
    elif trim_db is not None:
        samples = trim(samples, top_db=trim_db)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    return Waveform(
        samples,
        sample_rate,
        int(native_rate),
        int(channels),
        samples.shape[0] / sample_rate,
        data.shape[0] / native_rate,
        notes,
    )


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono signal with soxr's high-quality filter (``quality="HQ"``)."""
    import soxr

    return soxr.resample(samples, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def trim(samples: np.ndarray, *, top_db: float = 60.0, frame_length: int = 2048, hop_length: int = 512) -> np.ndarray:
    """Remove leading and trailing silence, as ``librosa.effects.trim(samples, top_db=...)[0]``.

    Frames are centred, zero-padded windows of ``frame_length`` every ``hop_length`` samples;
    a frame is kept when its RMS is within ``top_db`` of the loudest frame's; the result runs
    from the first kept frame's start to the last kept frame's end. Written here instead of
    calling librosa because importing ``librosa.effects`` costs over a second in every
    decoding worker, and a running sum gives every frame's energy in one pass.

    Examples
    --------
    >>> x = np.r_[np.zeros(8192), np.ones(4096), np.zeros(8192)].astype(np.float32)
    >>> trimmed = trim(x, top_db=60)
    >>> len(trimmed) < len(x), float(trimmed.max())
    (True, 1.0)
    """
    n = samples.shape[0]
    half = frame_length // 2
    n_frames = 1 + n // hop_length
    if frame_length % hop_length == 0:
        # Frames made of whole hops: each hop's energy once (float32 squares, float64 sums),
        # then every frame as a sum of neighbouring hops. 20x faster than a float64 running
        # sum over every sample, which cost more than decoding a FLAC clip.
        per_frame = frame_length // hop_length
        padded = np.zeros((n_frames - 1 + per_frame) * hop_length, dtype=np.float32)
        kept = min(n, padded.shape[0] - half)  # samples past the last frame's end matter to none
        padded[half : half + kept] = samples[:kept]
        hops = np.square(padded).reshape(-1, hop_length).sum(axis=1, dtype=np.float64)
        energy = np.concatenate(([0.0], np.cumsum(hops)))
        power = (energy[per_frame : per_frame + n_frames] - energy[:n_frames]) / frame_length
    else:
        padded = np.zeros(n + 2 * half, dtype=np.float64)
        padded[half : half + n] = samples
        energy = np.concatenate(([0.0], np.cumsum(np.square(padded))))
        starts = np.arange(n_frames) * hop_length
        power = (energy[starts + frame_length] - energy[starts]) / frame_length
    # librosa: amplitude_to_db(rms, ref=np.max) > -top_db, with amplitude floor amin=1e-5.
    power = np.maximum(power, 1e-10)
    keep = np.flatnonzero(10.0 * np.log10(power / power.max()) > -top_db)
    if keep.size == 0:
        return samples[:0]
    return samples[keep[0] * hop_length : min(n, (keep[-1] + 1) * hop_length)]


def pad_center(samples: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad ``samples`` to ``length`` with the signal in the middle, as the kernel did.

    The left pad is ``(length - n) // 2``; a signal already ``length`` long or longer is
    returned unchanged.

    Examples
    --------
    >>> pad_center(np.ones(3, dtype=np.float32), 6)
    array([0., 1., 1., 1., 0., 0.], dtype=float32)
    """
    n = samples.shape[0]
    if n >= length:
        return samples
    left = (length - n) // 2
    return np.pad(samples, (left, length - n - left))


def pad_repeat(samples: np.ndarray, length: int) -> np.ndarray:
    """``samples`` repeated end to end until ``length`` samples long (a longer signal is returned
    unchanged): a short clip fills the view with itself instead of silence.

    Examples
    --------
    >>> pad_repeat(np.arange(1, 4, dtype=np.float32), 7)
    array([1., 2., 3., 1., 2., 3., 1.], dtype=float32)
    >>> pad_repeat(np.zeros(0, dtype=np.float32), 3)    # nothing to repeat: zeros
    array([0., 0., 0.], dtype=float32)
    """
    n = samples.shape[0]
    if n >= length:
        return samples
    if n == 0:
        return np.zeros(length, dtype=samples.dtype)
    return np.tile(samples, -(-length // n))[:length]


def head(samples: np.ndarray, length: int, *, padding: str = "center") -> np.ndarray:
    """The first ``length`` samples; a shorter clip is centre-padded with zeros (``center``) or
    repeated to fill them (``repeat``)."""
    if padding not in ("center", "repeat"):
        raise ParameterError(f"padding={padding!r} must be 'center' or 'repeat'")
    fill = pad_center if padding == "center" else pad_repeat
    return fill(samples[:length], length)
