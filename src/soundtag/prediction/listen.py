"""Tags of a live source: ``soundtag listen``.

Sound arrives in blocks from a source, at the source's rate; :func:`listen` resamples it to the
model's rate as it comes (soxr's streaming resampler), cuts it into the windows ``soundtag tag
--timeline`` would cut from the same samples (:class:`~soundtag.prediction.stream.StreamTimeline`),
and hands each window and each finished event to callbacks as soon as it is known. Memory holds a
window, a block and the open events, however long the source runs.

Sources:

* :func:`pipe_blocks`: from a file descriptor such as standard input, raw PCM (``s16le``,
  ``s32le``, ``f32le``; any channel count), or a stream that says what it is in its first bytes:
  WAV (read here, as ``ffmpeg -f wav -`` writes it) or any container and codec ffmpeg's libraries
  decode (FLAC, Ogg Vorbis and Opus, MP3, AAC in ADTS or MPEG-TS, Matroska/WebM ...; through PyAV).
  So ``ffmpeg -i rtsp://camera/stream -f s16le -ac 1 -ar 16000 - | soundtag listen model.onnx
  --stdin --format s16le --rate 16000`` works, and so does ``cat field.flac | soundtag listen
  model.onnx --stdin``;
* :func:`microphone_blocks`: the default (or a named) input device through PortAudio
  (``sounddevice``).
"""

from __future__ import annotations

import os
import select
import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np

from soundtag.errors import DataError, ParameterError
from soundtag.prediction.stream import Event, EventTracker, StreamTimeline, Window, WindowGrid
from soundtag.stopping import Stopped

__all__ = ["HEADER_FORMATS", "PCM_FORMATS", "ListenSummary", "listen", "microphone_blocks", "pipe_blocks"]

#: raw sample formats: NumPy dtype and the scale that maps them to [-1, 1)
PCM_FORMATS = {"s16le": ("<i2", 32768.0), "s32le": ("<i4", 2147483648.0), "f32le": ("<f4", 1.0)}
#: ``--format`` values that read a header: ``auto`` tells WAV from any other container by it
HEADER_FORMATS = ("auto", "wav")
#: bytes ffmpeg reads at most to recognise a container on a pipe: 4 s of 16 kHz 16-bit mono
PROBE_BYTES = 128 * 1024
#: sample rates a stream may declare
RATE_RANGE = (1000, 384000)


@dataclass(frozen=True)
class ListenSummary:
    """What a finished :func:`listen` saw: seconds of sound, windows and events."""

    seconds: float
    windows: int
    events: int
    interrupted: bool


def check_rate(rate: int, what: str = "--rate") -> int:
    """``rate`` when it is a sample rate a stream can have, else a clear error.

    >>> check_rate(16000)
    16000
    >>> check_rate(16)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    soundtag.errors.ParameterError: --rate 16 Hz is not an audio sample rate: give the source's rate in Hz, ...
    """
    if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
        raise ParameterError(
            f"{what} {rate} Hz is not an audio sample rate: give the source's rate in Hz, "
            f"from {RATE_RANGE[0]} to {RATE_RANGE[1]} (16000 for 16 kHz)"
        )
    return rate


def _read(fd: int, n: int, stall_s: float, on_stall: Callable[[float], None] | None) -> bytes:
    """Up to ``n`` bytes from ``fd`` (b"" at the end); ``on_stall(seconds)`` each time nothing
    came for ``stall_s`` seconds."""
    waited = 0.0
    while True:
        try:
            ready, _, _ = select.select([fd], [], [], stall_s)
        except (OSError, ValueError):  # not selectable (a regular file on some systems): just read
            ready = [fd]
        if ready:
            return os.read(fd, n)
        waited += stall_s
        if on_stall:
            on_stall(waited)


def _wav_header(read: Callable[[int], bytes]) -> tuple[str, int, int]:
    """The sample format, rate and channels of a WAV stream's header, read up to its data."""

    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            part = read(n - len(out))
            if not part:
                raise DataError("the WAV stream ended inside its header")
            out += part
        return out

    riff = exactly(12)
    if not _is_wav(riff):
        raise DataError(
            "the stream is not WAV (no RIFF/WAVE header): leave --format out to read any container, or give "
            "the raw format with --format s16le"
        )
    fmt = None
    while True:
        chunk_id, size = struct.unpack("<4sI", exactly(8))
        if chunk_id == b"data":
            break
        body = exactly(size + (size & 1))
        if chunk_id == b"fmt ":
            code, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if code == 0xFFFE and size >= 40:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's code
                code = struct.unpack("<H", body[24:26])[0]
            fmt = {(1, 16): "s16le", (1, 32): "s32le", (3, 32): "f32le"}.get((code, bits))
            if fmt is None:
                raise DataError(
                    f"the WAV stream holds {bits}-bit samples of format code {code}: send 16- or 32-bit PCM or "
                    "32-bit float (ffmpeg: -c:a pcm_s16le)"
                )
    if fmt is None:
        raise DataError("the WAV stream has no 'fmt ' chunk before its data")
    return fmt, rate, channels


def _is_wav(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"


class _Pipe:
    """A forward-only reader over ``read`` that hands back ``head`` first: bytes already read to
    tell the format. It has no ``seek``, so PyAV treats it as the live pipe it is."""

    def __init__(self, read: Callable[[int], bytes], head: bytes = b""):
        self._read, self._head = read, head

    def read(self, n: int) -> bytes:
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._read(n) if n > 0 else b""


def _decoded(pipe: _Pipe) -> tuple[int, Iterator[np.ndarray]]:
    """The rate and mono float32 blocks of a container stream, decoded by ffmpeg's
    libraries (PyAV) as it arrives.

    ffmpeg rather than soundfile: libsndfile asks a file for its length and seeks in it while
    opening FLAC, Ogg and MP3, which a pipe cannot do; ffmpeg's demuxers are made for live input
    (about a second of it is read before the first samples, to recognise the format).
    """
    import av

    try:
        # probesize: the bytes ffmpeg may read to recognise the format (its default, 5 MB, would keep
        # a raw stream given without --format waiting minutes for its error)
        container = av.open(pipe, mode="r", buffer_size=4096, options={"probesize": str(PROBE_BYTES)})
    except av.FFmpegError as exc:
        raise DataError(
            f"the stream on standard input is not a sound container ffmpeg recognises ({exc.strerror or exc}): "
            "raw PCM has no header, so give its format and rate (--format s16le --rate 16000)"
        ) from None
    if not container.streams.audio:
        container.close()
        raise DataError("the stream on standard input holds no audio track")
    stream = container.streams.audio[0]
    rate = check_rate(int(stream.codec_context.sample_rate or 0), "the stream's sample rate")
    # float planes at the stream's own rate and layout; the channels are averaged below, as files
    # are, and the rate is converted with the rest of the source's sound in listen()
    resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)

    def blocks() -> Iterator[np.ndarray]:
        seen = 0
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    for out in resampler.resample(frame):
                        planes = out.to_ndarray()
                        x = planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]
                        seen += len(x)
                        yield x
        except av.FFmpegError as exc:
            raise DataError(
                f"the stream could not be decoded after {seen / rate:.2f} s of sound ({exc.strerror or exc})"
            ) from None
        finally:
            container.close()

    return rate, blocks()


def pipe_blocks(
    source: BinaryIO | int,
    *,
    fmt: str,
    rate: int | None,
    channels: int = 1,
    block_seconds: float = 0.1,
    stall_s: float = 10.0,
    on_stall: Callable[[float], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> tuple[int, Iterator[np.ndarray]]:
    """The rate of a piped stream and an iterator of its mono float32 blocks.

    Parameters
    ----------
    source : a binary file or file descriptor (standard input)
    fmt : ``auto`` (WAV, or any container ffmpeg decodes: the header says the rest), ``wav``, or a
        raw format of :data:`PCM_FORMATS`
    rate : the raw stream's rate (Hz); with a header, if given, it must match it
    channels : interleaved channels of a raw stream, mixed down to mono
    stall_s : seconds without data after which ``on_stall`` is called (and again each time)
    on_note : called with a line for what the user should know (bytes dropped at the end)
    """
    fd = source if isinstance(source, int) else source.fileno()

    def read(n: int) -> bytes:
        return _read(fd, n, stall_s, on_stall)

    if fmt in HEADER_FORMATS:
        head = b""
        while fmt == "auto" and len(head) < 12:
            part = read(12 - len(head))
            if not part:
                break
            head += part
        if fmt == "auto" and not _is_wav(head):
            if not head:
                raise DataError("standard input is empty: no sound came")
            header_rate, decoded = _decoded(_Pipe(read, head))
            kind, blocks_of_header = "stream's header", decoded
        else:
            fmt, header_rate, channels = _wav_header(_Pipe(read, head).read)
            kind, blocks_of_header = "WAV header", None
        if rate is not None and rate != header_rate:
            raise ParameterError(
                f"--rate {rate} Hz contradicts the {kind} ({header_rate} Hz): "
                "leave --rate out for a stream with a header"
            )
        rate = header_rate
        if blocks_of_header is not None:
            return rate, blocks_of_header
    if fmt not in PCM_FORMATS:
        raise ParameterError(f"--format must be one of {', '.join([*HEADER_FORMATS, *PCM_FORMATS])}, got {fmt!r}")
    if rate is None:
        raise ParameterError(f"a raw {fmt} stream has no header: give its sample rate with --rate (e.g. --rate 16000)")
    check_rate(rate)
    if channels < 1:
        raise ParameterError(f"--channels must be at least 1, got {channels}")
    dtype, scale = PCM_FORMATS[fmt]
    frame_bytes = np.dtype(dtype).itemsize * channels
    want = max(1, int(rate * block_seconds)) * frame_bytes

    def blocks() -> Iterator[np.ndarray]:
        pending = b""
        seen = 0
        while True:
            data = read(want)
            if not data:
                break
            pending += data
            whole = len(pending) - len(pending) % frame_bytes
            if not whole:
                continue
            raw = np.frombuffer(pending[:whole], dtype=dtype).reshape(-1, channels)
            pending = pending[whole:]
            x = raw.astype(np.float32) / np.float32(scale)
            if fmt == "f32le" and not np.isfinite(x).all():
                at = seen + int(np.argwhere(~np.isfinite(x))[0][0])
                raise DataError(
                    f"the stream sent a sample that is not a number at {at / rate:.2f} s: it is not f32le "
                    "audio (check --format and --channels)"
                )
            seen += len(x)
            yield x.mean(axis=1) if channels > 1 else x[:, 0]
        if pending and on_note:
            on_note(
                f"the stream ended in the middle of a sample frame: {len(pending)} byte(s) left out "
                f"({frame_bytes} bytes a frame of {channels} {fmt} sample(s))"
            )

    return rate, blocks()


def microphone_blocks(
    *, rate: int, block_seconds: float = 0.1, device: str | int | None = None
) -> Iterator[np.ndarray]:
    """Mono float32 blocks from an input device (the default one unless ``device``) at ``rate``,
    through PortAudio (``sounddevice``)."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise DataError(
            f"no microphone support here ({exc}): soundtag listens through PortAudio; install it "
            "(Debian/Ubuntu: apt install libportaudio2; then pip install sounddevice, or soundtag[mic]), "
            "or pipe sound in with --stdin (ffmpeg -i SOURCE -f s16le -ac 1 -ar 16000 - | "
            "soundtag listen MODEL --stdin --format s16le --rate 16000)"
        ) from None
    import queue

    blocks: queue.Queue = queue.Queue(maxsize=100)  # about 10 s of blocks: a bounded backlog

    def callback(indata, frames, time_info, status):
        try:
            blocks.put_nowait(indata.mean(axis=1).astype(np.float32))
        except queue.Full:  # the model is slower than real time: drop rather than grow
            pass

    try:
        stream = sd.InputStream(
            samplerate=rate, blocksize=max(1, int(rate * block_seconds)), device=device, channels=1, callback=callback
        )
    except Exception as exc:  # PortAudio's errors: no device, a rate it cannot open
        raise DataError(f"cannot open the input device {device or '(default)'}: {exc}") from None
    with stream:
        while True:
            yield blocks.get()


def listen(
    tagger,
    blocks: Iterable[np.ndarray],
    *,
    source_rate: int,
    grid: WindowGrid,
    threshold: float,
    on_window: Callable[[Window], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> ListenSummary:
    """Tag ``blocks`` (mono float32 at ``source_rate``) window by window as they come.

    Every window goes to ``on_window`` and every event to ``on_event`` as soon as it is known;
    at the end of the blocks, or on Ctrl-C or SIGTERM (KeyboardInterrupt, :class:`~soundtag.
    stopping.Stopped`), the last windows and the open events are written too, and the summary
    returned.
    """
    if getattr(tagger, "logmel", None) is None:
        raise ParameterError(
            "listen takes one model (a run, an .onnx file, a checkpoint): a blend of views cuts time differently "
            "in each; export or name one of its views"
        )
    timeline = StreamTimeline(tagger, grid)
    tracker = EventTracker(tagger.labels, threshold)
    resampler = None
    if source_rate != grid.sample_rate:
        import soxr

        resampler = soxr.ResampleStream(source_rate, grid.sample_rate, 1, dtype="float32")
    counts = {"windows": 0, "events": 0}

    def emit(windows: list[Window]) -> None:
        for w in windows:
            counts["windows"] += 1
            if on_window:
                on_window(w)
            for ev in tracker.update(*w):
                counts["events"] += 1
                if on_event:
                    on_event(ev)

    interrupted = False
    try:
        for block in blocks:
            if resampler is not None:
                block = resampler.resample_chunk(block)
            emit(timeline.feed(block))
    except (KeyboardInterrupt, Stopped):  # Ctrl-C, or a service manager's stop: the normal end of a live source
        interrupted = True
    if resampler is not None:
        emit(timeline.feed(resampler.resample_chunk(np.zeros(0, np.float32), last=True)))
    emit(timeline.finish())
    for ev in tracker.finish():
        counts["events"] += 1
        if on_event:
            on_event(ev)
    return ListenSummary(timeline.received / grid.sample_rate, counts["windows"], counts["events"], interrupted)
