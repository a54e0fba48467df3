"""Audio decoding: real clips, librosa's trim semantics, and every kind of bad file."""

from __future__ import annotations

import glob
import shutil

import librosa
import numpy as np
import pytest
import soundfile as sf

from soundtag import audio
from soundtag.errors import AudioError, ParameterError


@pytest.fixture(scope="module")
def ogg_clips(esc10_root):
    return sorted(glob.glob(str(esc10_root / "audio" / "*" / "*.ogg")))


def test_real_ogg_decodes_as_soundfile_and_resamples(ogg_clips):
    path = ogg_clips[0]
    ref, sr = sf.read(path, dtype="float32")
    wav = audio.load(path, sample_rate=44100)
    assert sr == 44100 and np.array_equal(wav.samples, ref) and wav.notes == []
    low = audio.load(path, sample_rate=26000)
    assert abs(len(low.samples) - len(ref) * 26000 / 44100) <= 1
    assert "resampled 44100->26000 Hz" in low.notes and low.samples.dtype == np.float32


def test_real_flac_upsampled(esc50_root):
    path = sorted((esc50_root / "audio").glob("*.flac"))[0]
    wav = audio.load(path, sample_rate=44100)
    assert wav.native_rate == 16000 and abs(len(wav.samples) - 5 * 44100) <= 1


def test_trim_equals_librosa_on_real_clips(ogg_clips):
    for path in ogg_clips[::25]:
        y, _ = sf.read(path, dtype="float32")
        assert np.array_equal(audio.trim(y, top_db=60), librosa.effects.trim(y, top_db=60)[0]), path


def test_trim_keeps_the_tone_and_at_most_a_frame_of_silence():
    sr = 16000
    tone = 0.5 * np.sin(2 * np.pi * 300 * (1 + np.arange(sr)) / sr)  # no zero sample inside
    x = np.r_[np.zeros(sr), tone, np.zeros(sr)].astype(np.float32)
    out = audio.trim(x, top_db=60)
    nonzero = np.flatnonzero(out)
    lead, tail = nonzero[0], len(out) - 1 - nonzero[-1]
    assert len(nonzero) == sr, "the whole tone is kept"
    assert 0 <= lead <= 2048 and 0 <= tail <= 2048, (lead, tail)


def test_missing_corrupt_truncated_and_empty_files_name_the_file(tmp_path, esc50_root):
    with pytest.raises(AudioError, match="nope.wav") as err:
        audio.load(tmp_path / "nope.wav", sample_rate=16000)
    assert err.value.reason == "missing"
    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioError, match="junk.wav") as err:
        audio.load(junk, sample_rate=16000)
    assert err.value.reason == "corrupt"
    real = sorted((esc50_root / "audio").glob("*.flac"))[0]
    cut = tmp_path / "cut.flac"
    cut.write_bytes(real.read_bytes()[:300])
    with pytest.raises(AudioError, match="cut.flac") as err:
        audio.load(cut, sample_rate=16000)
    assert err.value.reason in ("corrupt", "empty")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav") as err:
        audio.load(empty, sample_rate=16000)
    assert err.value.reason == "empty"


def test_silent_stereo_odd_rate_nonfinite_and_long_files_load_with_notes(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    silent = audio.load(tmp_path / "silent.wav", sample_rate=16000, trim_db=60)
    assert "silent" in silent.notes and np.all(silent.samples == 0) and len(silent.samples) == 8000

    left, right = np.full(4800, 0.5, np.float32), np.full(4800, -0.1, np.float32)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], 1), 48000, subtype="FLOAT")
    stereo = audio.load(tmp_path / "stereo.wav", sample_rate=48000)
    assert "down-mixed 2 channels" in stereo.notes and np.allclose(stereo.samples, 0.2)

    for rate in (8000, 48000):
        sf.write(tmp_path / f"r{rate}.wav", np.random.default_rng(1).uniform(-0.5, 0.5, rate).astype(np.float32), rate)
        wav = audio.load(tmp_path / f"r{rate}.wav", sample_rate=44100)
        assert abs(len(wav.samples) - 44100) <= 1 and f"resampled {rate}->44100 Hz" in wav.notes

    bad = np.ones(1000, dtype=np.float32)
    bad[[10, 20, 30]] = [np.nan, np.inf, -np.inf]
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    wav = audio.load(tmp_path / "nan.wav", sample_rate=16000)
    assert np.isfinite(wav.samples).all() and "non-finite samples replaced" in wav.notes

    sf.write(tmp_path / "long.wav", np.full(30 * 8000, 0.1, np.float32), 8000)
    wav = audio.load(tmp_path / "long.wav", sample_rate=8000, max_duration=10)
    assert len(wav.samples) == 80000 and wav.source_duration == 10 and any("truncated" in n for n in wav.notes)


def test_mp3_decodes(tmp_path, ogg_clips):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile build cannot write MP3")
    y, sr = sf.read(ogg_clips[0], dtype="float32")
    sf.write(tmp_path / "clip.mp3", y, sr, format="MP3")
    wav = audio.load(tmp_path / "clip.mp3", sample_rate=sr)
    assert abs(len(wav.samples) - len(y)) < 0.05 * sr and np.isfinite(wav.samples).all()


def test_pad_and_head():
    assert audio.pad_center(np.ones(3, np.float32), 6).tolist() == [0, 1, 1, 1, 0, 0]
    x = np.arange(10, dtype=np.float32)
    assert audio.head(x, 4).tolist() == [0, 1, 2, 3]
    assert audio.head(x[:2], 5).tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(ParameterError, match="sample_rate=0"):
        audio.load(shutil.__file__, sample_rate=0)
