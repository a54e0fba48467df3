"""Tags over time: the windows of a file (``soundtag tag --timeline``) and of a live stream
(``soundtag listen``), cut and scored by one rule, and the events they make.

A window is the model's own input length (the LH view's head, or one X chunk) of samples at the
model's rate; windows start every ``step`` samples, and when the sound ends more than one STFT
hop past the last regular window, one more window ends at its end (:class:`WindowGrid`, the rule
of :func:`~soundtag.features.views.chunk_starts` in samples). Each window gets its own log-mel,
as a training clip does, so a window's probabilities depend only on its own samples: a stream
fed block by block (:class:`StreamTimeline`) gives the windows of the same samples read as a
file (:func:`file_timeline`), the same samples in each (their probabilities differ only by the
float rounding of the batch the model saw them in), and memory holds one window and one block
however long the stream runs.

Events (:class:`EventTracker`): the windows where a label stays at or above a threshold merge
into one event (its start, its end, the highest probability in it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from soundtag.errors import ParameterError
from soundtag.features.views import chunk_starts
from soundtag.inference.combine import geometric_mean

__all__ = ["Event", "EventTracker", "StreamTimeline", "Window", "WindowGrid", "file_timeline", "window_probs"]

#: ``(start seconds, end seconds, probabilities)``
Window = tuple[float, float, np.ndarray]


@dataclass(frozen=True)
class WindowGrid:
    """Where the windows of a sound start, in samples at the model's rate.

    Attributes
    ----------
    width : samples in a window (the model's input length)
    step : samples between the starts of neighbouring windows
    frames : log-mel frames the model takes
    min_tail : a sound that ends at least this many samples past the last regular window gets
        one more window, aligned to its end
    sample_rate : the model's rate

    Examples
    --------
    >>> grid = WindowGrid(width=100, step=50, frames=10, min_tail=10, sample_rate=100)
    >>> grid.starts(260)           # 60 samples after the window at 150: one more, at 160
    [0, 50, 100, 150, 160]
    >>> grid.starts(255)           # 5 samples after it, under min_tail: none
    [0, 50, 100, 150]
    >>> grid.starts(40)            # shorter than a window: one, centred
    [0]
    """

    width: int
    step: int
    frames: int
    min_tail: int
    sample_rate: int

    @classmethod
    def from_recipe(cls, recipe, hop_seconds: float | None = None) -> "WindowGrid":
        """The grid of a model's recipe: its view's length; ``hop_seconds`` between windows, or
        the view's overlap (10% for the built-in recipes) when None."""
        from soundtag.features.numpy_melspec import frontend_frames

        f, rate = recipe.features, recipe.audio.sample_rate
        width = recipe.view_samples
        frames = recipe.chunk_frames if recipe.view.kind == "x" else frontend_frames(width, f.hop_length, f.preemphasis)
        if hop_seconds is None:
            step = max(1, int(round(frames * (1 - recipe.view.overlap)))) * f.hop_length
        else:
            if not hop_seconds > 0:
                raise ParameterError(f"the hop between windows must be positive seconds, got {hop_seconds}")
            step = max(1, int(round(hop_seconds * rate)))
        # a tail of more than the one hop the centred STFT adds gets its own window
        return cls(width=width, step=step, frames=frames, min_tail=f.hop_length + 1, sample_rate=rate)

    def starts(self, n_samples: int) -> list[int]:
        """Start samples of the windows of a sound ``n_samples`` long."""
        return chunk_starts(n_samples, chunk=self.width, step=self.step, min_tail=self.min_tail / self.width)


def window_probs(tagger, windows: np.ndarray, grid: WindowGrid) -> np.ndarray:
    """Probabilities ``(n, classes)`` of ``windows`` ``(n, grid.width)``: each window's own log-mel,
    every fold model, the folds' geometric mean."""
    if len(windows) == 0:
        return np.zeros((0, len(tagger.labels)), dtype=np.float32)
    chunks = np.stack([_fit_frames(tagger.logmel(w), grid.frames) for w in windows])
    return geometric_mean(tagger.fold_probs(chunks), axis=0, multilabel=tagger.multilabel)


def _fit_frames(spec: np.ndarray, frames: int) -> np.ndarray:
    """``spec`` cut (or edge-padded) to ``frames`` frames: an X chunk's frames are its samples
    over the hop, one fewer than its centred STFT gives."""
    if spec.shape[1] >= frames:
        return spec[:, :frames]
    return np.pad(spec, ((0, 0), (0, frames - spec.shape[1])), mode="edge")


def file_timeline(tagger, samples: np.ndarray, grid: WindowGrid, *, batch: int = 16) -> list[Window]:
    """The windows of a whole sound, in its own clock (a sound shorter than a window is centred
    in one)."""
    from soundtag import audio

    duration = len(samples) / grid.sample_rate
    padded = audio.pad_center(np.asarray(samples, dtype=np.float32), grid.width)
    offset = (len(padded) - len(samples)) // 2
    starts = grid.starts(len(padded))
    out: list[Window] = []
    for i in range(0, len(starts), batch):
        part = starts[i : i + batch]
        probs = window_probs(tagger, np.stack([padded[s : s + grid.width] for s in part]), grid)
        out += [_window(s - offset, grid, duration, p) for s, p in zip(part, probs)]
    return out


def _window(start: int, grid: WindowGrid, duration: float | None, probs: np.ndarray) -> Window:
    begin = max(0.0, start / grid.sample_rate)
    end = (start + grid.width) / grid.sample_rate
    return begin, end if duration is None else min(duration, end), probs


class StreamTimeline:
    """The windows of a stream as its samples arrive: ``feed(block)`` gives the windows the
    block completed, ``finish()`` the last ones (a tail window, or the one centred window of a
    stream shorter than a window). The same windows, to the sample, as :func:`file_timeline` of
    all the samples; memory holds a window and a block.

    Examples
    --------
    >>> class Tagger:  # two labels; probabilities from each window's mean
    ...     labels, multilabel = ["a", "b"], False
    ...     logmel = staticmethod(lambda w: np.full((1, 2), w.mean(), np.float32))
    ...     fold_probs = staticmethod(lambda c: np.stack([np.stack([c.mean((1, 2)), 1 - c.mean((1, 2))], 1)]))
    >>> grid = WindowGrid(width=4, step=2, frames=2, min_tail=2, sample_rate=1)
    >>> live = StreamTimeline(Tagger(), grid)
    >>> [(s, e) for s, e, _ in live.feed(np.ones(5, np.float32))]
    [(0.0, 4.0)]
    >>> [(s, e) for s, e, _ in live.feed(np.ones(3, np.float32)) + live.finish()]
    [(2.0, 6.0), (4.0, 8.0)]
    """

    def __init__(self, tagger, grid: WindowGrid):
        self.tagger, self.grid = tagger, grid
        self.received = 0  # samples fed so far
        self._next = 0  # start sample of the next regular window
        self._buffer = np.zeros(0, dtype=np.float32)  # samples from _base on
        self._base = 0
        self._last_start: int | None = None

    def feed(self, block: np.ndarray) -> list[Window]:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self._buffer = np.concatenate([self._buffer, block])
        self.received += len(block)
        starts = []
        while self._next + self.grid.width <= self.received:
            starts.append(self._next)
            self._next += self.grid.step
        out = self._score(starts)
        # keep what the next regular window and a tail window (the last width samples) need
        self._drop_before(min(self._next, max(0, self.received - self.grid.width)))
        return out

    def finish(self) -> list[Window]:
        """The windows the end of the stream adds; the stream is then done."""
        grid, n = self.grid, self.received
        if n == 0:
            return []
        if n < grid.width:  # never a whole window: centred in one, as a short file is
            samples = self._buffer[-n:]
            return file_timeline(self.tagger, samples, grid)
        tail = [s for s in grid.starts(n) if self._last_start is None or s > self._last_start]
        return [(s, e, p) for s, e, p in self._score(tail, duration=n / grid.sample_rate)]

    def _score(self, starts: list[int], duration: float | None = None) -> list[Window]:
        if not starts:
            return []
        windows = np.stack([self._buffer[s - self._base : s - self._base + self.grid.width] for s in starts])
        probs = window_probs(self.tagger, windows, self.grid)
        self._last_start = starts[-1]
        return [_window(s, self.grid, duration, p) for s, p in zip(starts, probs)]

    def _drop_before(self, sample: int) -> None:
        if sample > self._base:
            self._buffer = self._buffer[sample - self._base :].copy()
            self._base = sample


@dataclass(frozen=True)
class Event:
    start: float
    end: float
    label: str
    probability: float

    def to_dict(self) -> dict:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "label": self.label,
            "probability": round(float(self.probability), 6),
        }


class EventTracker:
    """Merges windows into events: a label's run of windows at or above ``threshold`` is one
    event, closed by the first window below it (or by :meth:`finish`).

    Examples
    --------
    >>> events = EventTracker(["dog", "rain"], threshold=0.5)
    >>> events.update(0.0, 5.0, np.array([0.9, 0.1]))
    []
    >>> events.update(4.5, 9.5, np.array([0.7, 0.6]))
    []
    >>> events.update(9.0, 14.0, np.array([0.2, 0.8]))
    [Event(start=0.0, end=9.5, label='dog', probability=0.9)]
    >>> events.finish()
    [Event(start=4.5, end=14.0, label='rain', probability=0.8)]
    """

    def __init__(self, labels: list[str], threshold: float):
        if not 0 <= threshold <= 1:
            raise ParameterError(f"the event threshold is a probability in [0, 1], got {threshold}")
        self.labels, self.threshold = list(labels), threshold
        self._open: dict[int, list[float]] = {}  # label index -> [start, end, highest]

    def update(self, start: float, end: float, probs: np.ndarray) -> list[Event]:
        closed = []
        for j, p in enumerate(np.asarray(probs, dtype=np.float64)):
            current = self._open.get(j)
            if p >= self.threshold:
                self._open[j] = [current[0], end, max(current[2], p)] if current else [start, end, p]
            elif current:
                closed.append(self._event(j, self._open.pop(j)))
        return sorted(closed, key=lambda ev: (ev.start, -ev.probability))

    def finish(self) -> list[Event]:
        """The events still open, closed where the sound ended."""
        out = [self._event(j, v) for j, v in self._open.items()]
        self._open.clear()
        return sorted(out, key=lambda ev: (ev.start, -ev.probability))

    def _event(self, j: int, value: list[float]) -> Event:
        return Event(value[0], value[1], self.labels[j], float(value[2]))


def events_of(windows: Iterable[Window], labels: list[str], threshold: float) -> Iterator[Event]:
    """Every event of a finished timeline, in the order they close."""
    tracker = EventTracker(labels, threshold)
    for s, e, p in windows:
        yield from tracker.update(s, e, p)
    yield from tracker.finish()
