"""Windows over time: a stream fed block by block cuts exactly the windows of the same samples
read whole, and the events merge windows as the file timeline's CSV does.

The tagger here is a small deterministic function of each window's samples (its log-mel is the
window's framed energy, its "model" a softmax of fixed projections), so that any difference
between the two paths (a shifted start, a lost or doubled sample at a block boundary, a tail
window missing) changes the probabilities.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soundtag.errors import ParameterError
from soundtag.prediction.stream import EventTracker, StreamTimeline, WindowGrid, events_of, file_timeline

RATE = 1000


class FramedEnergyTagger:
    labels = ["low", "mid", "high"]
    multilabel = False

    def __init__(self, hop: int = 10):
        self.hop = hop
        self.projection = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)

    def logmel(self, samples: np.ndarray) -> np.ndarray:
        n = len(samples) // self.hop
        frames = samples[: n * self.hop].reshape(n, self.hop)
        bands = np.stack([frames.mean(1), np.abs(frames).mean(1), (frames**2).mean(1), frames.max(1)])
        return bands.astype(np.float32)  # (4 "mels", frames)

    def fold_probs(self, chunks: np.ndarray) -> np.ndarray:
        logits = np.einsum("cm,nmf->nc", self.projection, chunks) / chunks.shape[2]
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True))[None]  # one fold


def _signal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    return (0.3 * np.sin(2 * np.pi * 3 * t) * rng.uniform(0.2, 1.0) + 0.1 * rng.normal(size=n)).astype(np.float32)


GRID = WindowGrid(width=500, step=230, frames=50, min_tail=11, sample_rate=RATE)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=3000),
    cuts=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=40),
)
def test_a_stream_in_any_blocks_gives_the_windows_of_the_whole_sound(n, cuts):
    tagger, samples = FramedEnergyTagger(), _signal(n)
    live, got, at = StreamTimeline(tagger, GRID), [], 0
    while at < n:
        size = cuts[len(got) % len(cuts)]
        got += live.feed(samples[at : at + size])
        at += size
    got += live.finish()
    expected = file_timeline(tagger, samples, GRID)
    assert [(s, e) for s, e, _ in got] == [(s, e) for s, e, _ in expected]
    for (_, _, a), (_, _, b) in zip(got, expected):
        # the same samples; only the batch the model saw them in differs (float rounding)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_windows_cover_the_sound_and_the_tail_gets_one_aligned_to_its_end():
    n = 2 * 230 + 500 + 40  # 40 samples past the last regular window: over min_tail
    windows = file_timeline(FramedEnergyTagger(), _signal(n), GRID)
    assert [(s, e) for s, e, _ in windows] == [(0.0, 0.5), (0.23, 0.73), (0.46, 0.96), (0.5, 1.0)]
    short = file_timeline(FramedEnergyTagger(), _signal(120), GRID)
    assert [(s, e) for s, e, _ in short] == [(0.0, 0.12)]  # one window, centred, in the sound's own clock


def test_memory_holds_a_window_and_a_block_however_long_the_stream():
    live = StreamTimeline(FramedEnergyTagger(), GRID)
    block = _signal(97)
    sizes = []
    for _ in range(2000):  # 194 s of sound at 1 kHz
        live.feed(block)
        sizes.append(len(live._buffer))
    assert max(sizes) <= GRID.width + len(block)
    assert live.received == 2000 * 97


def test_the_grid_of_a_recipe_follows_its_view_and_the_hop_asked():
    from soundtag.recipe import load_recipe

    lh = load_recipe("esc50-cpu-lh")
    grid = WindowGrid.from_recipe(lh)
    assert grid.width == 5 * 16000 and grid.sample_rate == 16000
    assert grid.step == round(grid.frames * 0.9) * 320  # the view's 10% overlap, in whole hops
    assert WindowGrid.from_recipe(lh, 2.5).step == 40000
    x = load_recipe("esc50-cpu-x")
    assert WindowGrid.from_recipe(x).frames == x.chunk_frames
    with pytest.raises(ParameterError, match="positive"):
        WindowGrid.from_recipe(lh, 0)


def test_events_merge_a_labels_neighbouring_windows_and_close_open_ones_at_the_end():
    labels = ["dog", "rain"]
    windows = [
        (0.0, 5.0, np.array([0.9, 0.2])),
        (2.5, 7.5, np.array([0.6, 0.7])),
        (5.0, 10.0, np.array([0.3, 0.8])),
        (7.5, 12.5, np.array([0.55, 0.1])),
    ]
    got = [(e.start, e.end, e.label, e.probability) for e in events_of(windows, labels, 0.5)]
    assert got == [(0.0, 7.5, "dog", 0.9), (2.5, 10.0, "rain", 0.8), (7.5, 12.5, "dog", 0.55)]
    with pytest.raises(ParameterError, match="threshold"):
        EventTracker(labels, 1.5)


# --- containers on a pipe ------------------------------------------------------------------------


def _through_a_pipe(data: bytes, **kwargs) -> tuple[int, np.ndarray]:
    """``pipe_blocks`` on ``data`` written into a real pipe by another thread, all blocks joined."""
    import os
    import threading

    from soundtag.prediction.listen import pipe_blocks

    read_end, write_end = os.pipe()

    def feed():
        with os.fdopen(write_end, "wb") as pipe:
            for i in range(0, len(data), 3001):  # odd pieces, as a network delivers them
                pipe.write(data[i : i + 3001])
                pipe.flush()

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        rate, blocks = pipe_blocks(read_end, fmt="auto", rate=None, **kwargs)
        samples = np.concatenate(list(blocks))
    finally:
        feeder.join()
        os.close(read_end)
    return rate, samples


@pytest.mark.parametrize(
    "container, subtype, atol",
    [("FLAC", "PCM_16", 0), ("OGG", "VORBIS", 1e-5), ("MP3", "MPEG_LAYER_III", 1e-5)],
)
def test_a_container_on_a_pipe_gives_the_samples_the_file_gives(esc10_root, tmp_path, container, subtype, atol):
    """A real ESC-10 clip, re-encoded: what `listen --stdin` decodes as the bytes arrive
    is what soundtag's file reader decodes from the same file (MP3 adds the encoder's padding)."""
    import soundfile as sf

    clip = next((esc10_root / "audio").glob("*/*.ogg"))
    original, rate = sf.read(clip, dtype="float32")
    path = tmp_path / f"clip.{container.lower()}"
    sf.write(path, original, rate, format=container, subtype=subtype)
    from_file, _ = sf.read(path, dtype="float32")
    got_rate, streamed = _through_a_pipe(path.read_bytes())
    assert got_rate == rate
    assert len(from_file) <= len(streamed) <= len(from_file) + (1152 if container == "MP3" else 0)
    assert np.abs(streamed[: len(from_file)] - from_file).max() <= atol + 1e-7


def test_a_stereo_stream_is_averaged_to_mono_as_a_file_is(tmp_path):
    import soundfile as sf

    t = np.arange(16000 * 2) / 16000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 660 * t)], axis=1).astype(np.float32)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo * 0.5, 16000)
    rate, streamed = _through_a_pipe(path.read_bytes())
    from_file, _ = sf.read(path, dtype="float32")
    assert rate == 16000 and np.allclose(streamed, from_file.mean(axis=1), atol=1e-7)
