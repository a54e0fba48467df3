"""soundtag.audio: decoding real ESC-10 / ESC-50 clips, librosa's trim semantics, padding, and
every kind of bad file (each one either an AudioError naming the file or a note on the result).

Expected values come from soundfile's own decode, librosa, the data README (ESC-10 is 44.1 kHz
Ogg, ESC-50 is 16 kHz FLAC of exactly 5.0 s) or from the synthetic signals written here.
"""

from __future__ import annotations

import glob
import math

import librosa
import numpy as np
import pytest
import soundfile as sf

from soundtag.audio import decode, head, load, pad_center, trim
from soundtag.errors import AudioError, ParameterError


@pytest.fixture(scope="module")
def ogg_clips(esc10_root):
    clips = sorted(glob.glob(str(esc10_root / "audio" / "*" / "*.ogg")))
    assert len(clips) == 400
    return clips


@pytest.fixture(scope="module")
def flac_clips(esc50_root):
    clips = sorted(glob.glob(str(esc50_root / "audio" / "*.flac")))
    assert len(clips) == 2000
    return clips


def _sine(freq: float, sr: int, n: int, amp: float = 0.5, phase: float = 0.0) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr + phase)).astype(np.float32)


# --- real clips -----------------------------------------------------------------------------


def test_real_ogg_at_native_rate_equals_soundfile(ogg_clips):
    for path in ogg_clips[::100]:
        ref, sr = sf.read(path, dtype="float32")
        assert sr == 44100 and ref.ndim == 1  # README: Ogg Vorbis 44.1 kHz mono
        wav = load(path, sample_rate=44100)
        assert wav.samples.dtype == np.float32
        assert np.array_equal(wav.samples, ref), path
        assert not any(n.startswith("resampled") for n in wav.notes), wav.notes
        assert wav.sample_rate == wav.native_rate == 44100 and wav.channels == 1
        assert wav.source_duration == pytest.approx(len(ref) / 44100)
        assert wav.duration == pytest.approx(len(ref) / 44100)


def test_real_ogg_resampled_to_26000(ogg_clips):
    path = ogg_clips[0]
    n_native = sf.info(path).frames
    wav = load(path, sample_rate=26000)
    assert abs(len(wav.samples) - n_native * 26000 / 44100) <= 1
    assert any("resampled" in n and "44100" in n and "26000" in n for n in wav.notes), wav.notes
    assert wav.sample_rate == 26000 and wav.native_rate == 44100
    assert wav.samples.dtype == np.float32 and np.isfinite(wav.samples).all()


def test_real_esc10_uneven_lengths_are_kept(ogg_clips):
    # README: about 20 ESC-10 clips are not 5.0 s long; load keeps each clip's own length.
    lengths = {path: sf.info(path).frames for path in ogg_clips}
    odd = [p for p, n in lengths.items() if abs(n / 44100 - 5.0) > 0.05]
    assert 5 <= len(odd) <= 40
    for path in odd[:3]:
        wav = load(path, sample_rate=44100)
        assert len(wav.samples) == lengths[path]


def test_real_flac_upsampled_to_44100(flac_clips):
    path = flac_clips[0]
    info = sf.info(path)
    assert info.samplerate == 16000 and info.frames == 5 * 16000  # README: exactly 5.0 s
    wav = load(path, sample_rate=44100)
    assert wav.native_rate == 16000 and wav.sample_rate == 44100
    assert abs(len(wav.samples) - 5 * 44100) <= 1
    assert any(n.startswith("resampled") for n in wav.notes)
    assert wav.source_duration == pytest.approx(5.0)
    assert np.isfinite(wav.samples).all()
    # resampling must keep the signal: its energy per second matches the source's
    ref, _ = sf.read(path, dtype="float32")
    assert np.sum(wav.samples.astype(np.float64) ** 2) / 44100 == pytest.approx(
        np.sum(ref.astype(np.float64) ** 2) / 16000, rel=0.02
    )


def test_load_with_trim_db_equals_trim_of_the_decode(ogg_clips):
    path = ogg_clips[7]
    full = load(path, sample_rate=44100).samples
    trimmed = load(path, sample_rate=44100, trim_db=60)
    assert np.array_equal(trimmed.samples, trim(full, top_db=60))
    assert trimmed.duration == pytest.approx(len(trimmed.samples) / 44100)


# --- trim -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_trim_equals_librosa_on_real_clips(ogg_clips, flac_clips):
    paths = ogg_clips[::50] + flac_clips[::250]
    for path in paths:
        y, _ = sf.read(path, dtype="float32")
        for top_db in (60, 30):
            expected = librosa.effects.trim(y, top_db=top_db)[0]
            got = trim(y, top_db=top_db)
            assert np.array_equal(got, expected), (path, top_db, len(got), len(expected))


def test_trim_equals_librosa_at_every_geometry_and_odd_lengths(flac_clips):
    # Whole-hop frames take the per-hop path, others the per-sample running sum; both must be
    # librosa's, on lengths that end mid-hop and on clips shorter than a frame.
    y, _ = sf.read(flac_clips[7], dtype="float32")
    for frame_length, hop_length in [(2048, 512), (1024, 256), (512, 512), (2000, 512), (1000, 300)]:
        for n in (len(y), 50_001, 3_333, 700, 37):
            part = y[-n:]
            expected = librosa.effects.trim(part, top_db=40, frame_length=frame_length, hop_length=hop_length)[0]
            got = trim(part, top_db=40, frame_length=frame_length, hop_length=hop_length)
            assert np.array_equal(got, expected), (frame_length, hop_length, n, len(got), len(expected))


@pytest.mark.slow
def test_trim_of_a_tone_between_silences():
    sr, hop, half = 16000, 512, 2048 // 2
    a, length = 5000, 8000  # tone at [a, b); 500 Hz so that both edges are near a peak
    b = a + length
    n = b + 7000
    x = np.zeros(n, dtype=np.float32)
    x[a:b] = _sine(500, sr, length, phase=np.pi / 2)
    out = trim(x, top_db=60)
    assert np.array_equal(out, librosa.effects.trim(x, top_db=60)[0])

    # librosa's geometry: frame k is centred on sample k*hop and spans [k*hop - half, k*hop + half);
    # every frame touching the tone is far above -60 dB, every other frame is digital silence.
    first = (a - half) // hop + 1  # first frame with k*hop + half > a
    last = math.ceil((b + half) / hop) - 1  # last frame with k*hop - half < b
    start, end = first * hop, min(n, (last + 1) * hop)
    assert len(out) == end - start
    assert np.array_equal(out, x[start:end])
    # the whole tone is kept, with less than half a frame (+1 hop at the end) of silence around
    assert start <= a and a - start < half
    assert end >= b and end - b <= half + hop
    assert np.count_nonzero(out) == np.count_nonzero(x)


def test_trim_keeps_everything_when_nothing_is_quiet():
    x = _sine(440, 16000, 16000)
    assert np.array_equal(trim(x, top_db=60), x)


# --- bad files ------------------------------------------------------------------------------


def _raises(path, reason: str, **kw) -> AudioError:
    with pytest.raises(AudioError) as err:
        load(path, sample_rate=kw.pop("sample_rate", 16000), **kw)
    assert err.value.reason == reason, (err.value.reason, str(err.value))
    assert path.name in str(err.value)
    assert err.value.path == str(path)
    return err.value


def test_missing_file(tmp_path):
    _raises(tmp_path / "nowhere.wav", "missing")


def test_random_bytes_are_corrupt(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    _raises(junk, "corrupt")


def test_truncated_real_files_are_corrupt(tmp_path, flac_clips, ogg_clips):
    for src, name in [(flac_clips[3], "cut.flac"), (ogg_clips[3], "cut.ogg")]:
        cut = tmp_path / name
        with open(src, "rb") as fh:
            cut.write_bytes(fh.read(300))
        _raises(cut, "corrupt")


def test_empty_wav(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    assert sf.info(path).frames == 0
    _raises(path, "empty")


def test_silent_wav_loads_as_finite_zeros(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    for trim_db in (None, 60):
        wav = load(path, sample_rate=16000, trim_db=trim_db)
        assert "silent" in wav.notes
        assert len(wav.samples) == 16000
        assert np.isfinite(wav.samples).all() and not wav.samples.any()


def test_stereo_is_down_mixed_to_the_mean(tmp_path):
    sr = 16000
    left, right = _sine(440, sr, sr, amp=0.6), _sine(1000, sr, sr, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    wav = load(path, sample_rate=sr)
    assert wav.channels == 2
    assert "down-mixed 2 channels" in wav.notes
    np.testing.assert_allclose(wav.samples, (left + right) / 2, rtol=0, atol=1e-7)
    assert wav.samples.ndim == 1 and wav.samples.dtype == np.float32


@pytest.mark.parametrize("native", [8000, 48000])
def test_other_rates_are_resampled_to_44100(tmp_path, native):
    n = int(1.37 * native)
    x = _sine(1000, native, n)
    path = tmp_path / f"tone{native}.wav"
    sf.write(path, x, native, subtype="FLOAT")
    wav = load(path, sample_rate=44100)
    assert wav.native_rate == native and wav.sample_rate == 44100
    assert abs(len(wav.samples) - n * 44100 / native) <= 1
    assert any("resampled" in note and str(native) in note for note in wav.notes), wav.notes
    assert wav.source_duration == pytest.approx(n / native)
    # the 1 kHz tone survives: compare with the same tone drawn at 44.1 kHz, away from the edges
    ref = _sine(1000, 44100, len(wav.samples))
    mid = slice(2000, len(ref) - 2000)
    assert np.max(np.abs(wav.samples[mid] - ref[mid])) < 1e-2


def test_non_finite_samples_are_replaced(tmp_path):
    sr = 16000
    x = _sine(440, sr, sr)
    bad = x.copy()
    bad[[10, 500, 9000]] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "nan.wav"
    sf.write(path, bad, sr, subtype="FLOAT")
    assert not np.isfinite(sf.read(path, dtype="float32")[0]).all()  # the file really holds them
    wav = load(path, sample_rate=sr)
    assert np.isfinite(wav.samples).all()
    assert any("finite" in note for note in wav.notes), wav.notes
    ok = np.isfinite(bad)
    assert np.array_equal(wav.samples[ok], x[ok])
    assert np.all(np.abs(wav.samples[~ok]) <= 1.0)
    up = load(path, sample_rate=44100)  # and through the resampler too
    assert np.isfinite(up.samples).all()


def test_max_duration_truncates_a_long_file(tmp_path):
    sr = 8000
    path = tmp_path / "long.wav"
    x = _sine(300, sr, 30 * sr)
    sf.write(path, x, sr, subtype="FLOAT")
    wav = load(path, sample_rate=sr, max_duration=10)
    assert len(wav.samples) == 10 * sr
    assert np.array_equal(wav.samples, x[: 10 * sr])
    assert any("truncated" in note for note in wav.notes), wav.notes
    assert wav.source_duration == pytest.approx(10.0) and wav.duration == pytest.approx(10.0)

    up = load(path, sample_rate=16000, max_duration=2.5)
    assert abs(len(up.samples) - 2.5 * 16000) <= 1
    assert any("truncated" in note for note in up.notes)

    whole = load(path, sample_rate=sr, max_duration=60)
    assert len(whole.samples) == 30 * sr
    assert not any("truncated" in note for note in whole.notes)


def test_mp3(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    sr = 44100
    path = tmp_path / "tone.mp3"
    sf.write(path, _sine(440, sr, sr), sr, format="MP3")
    ref, ref_sr = sf.read(path, dtype="float32")
    wav = load(path, sample_rate=44100)
    assert ref_sr == 44100 and wav.native_rate == 44100
    assert np.array_equal(wav.samples, ref)
    assert abs(len(wav.samples) - sr) < 0.1 * sr
    assert np.isfinite(wav.samples).all() and "silent" not in wav.notes
    low = load(path, sample_rate=16000)
    assert abs(len(low.samples) - len(ref) * 16000 / 44100) <= 1


# --- padding and parameters --------------------------------------------------------------


def test_pad_center_offset():
    out = pad_center(np.ones(3, dtype=np.float32), 6)
    assert out.shape == (6,)
    left = (6 - 3) // 2
    assert np.array_equal(np.flatnonzero(out), np.arange(left, left + 3))
    assert np.array_equal(out, [0, 1, 1, 1, 0, 0])
    odd = pad_center(np.arange(1, 3, dtype=np.float32), 7)  # left pad (7-2)//2 = 2
    assert np.array_equal(odd, [0, 0, 1, 2, 0, 0, 0])
    long = np.arange(10, dtype=np.float32)
    assert np.array_equal(pad_center(long, 4), long)


def test_head_crops_and_pads():
    x = np.arange(1, 11, dtype=np.float32)
    assert np.array_equal(head(x, 4), x[:4])
    assert np.array_equal(head(x, 10), x)
    short = head(x[:3], 8)
    left = (8 - 3) // 2
    assert short.shape == (8,)
    assert np.array_equal(short[left : left + 3], x[:3])
    assert not short[:left].any() and not short[left + 3 :].any()


@pytest.mark.parametrize("rate", [0, -16000])
def test_non_positive_sample_rate(tmp_path, rate):
    path = tmp_path / "ok.wav"
    sf.write(path, _sine(440, 8000, 800), 8000)
    with pytest.raises(ParameterError):
        load(path, sample_rate=rate)
    with pytest.raises(ParameterError):  # checked before the file is even looked at
        load(tmp_path / "missing.wav", sample_rate=rate)


# --- decode: the one reader of files ------------------------------------------------------


def test_decode_keeps_every_channel_at_the_native_rate(tmp_path, ogg_clips):
    ref, sr = sf.read(ogg_clips[5], dtype="float32", always_2d=True)
    native = decode(ogg_clips[5])
    assert native.sample_rate == sr == 44100 and native.total_frames == len(ref)
    assert native.samples.dtype == np.float32 and np.array_equal(native.samples, ref)
    left, right, third = _sine(440, 22050, 22050), _sine(1000, 22050, 22050, amp=0.2), np.zeros(22050, np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, np.stack([left, right, third], axis=1), 22050, subtype="FLOAT")
    native = decode(path)
    assert native.samples.shape == (22050, 3) and native.sample_rate == 22050
    np.testing.assert_array_equal(native.samples, np.stack([left, right, third], axis=1))
    # load is decode + down-mix (+ resampling, trim): the mean of the channels
    np.testing.assert_allclose(load(path, sample_rate=22050).samples, (left + right) / 3, atol=1e-7)


def test_decode_max_duration_reads_the_start_and_counts_the_whole_file(tmp_path):
    path = tmp_path / "long.wav"
    x = _sine(300, 8000, 8000 * 3)
    sf.write(path, x, 8000, subtype="FLOAT")
    native = decode(path, max_duration=1.25)
    assert native.samples.shape == (10000, 1) and native.total_frames == 24000
    np.testing.assert_array_equal(native.samples[:, 0], x[:10000])
    for bad in (0, -1.0):
        with pytest.raises(ParameterError, match=f"max_duration={bad} must be a positive"):
            decode(path, max_duration=bad)


def test_decode_errors_name_the_file(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(1).bytes(3000))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    for path, reason in [
        (tmp_path / "nowhere.flac", "missing"),
        (junk, "corrupt"),
        (empty, "empty"),
        (zero_bytes, "corrupt"),
        (tmp_path, "missing"),
    ]:
        with pytest.raises(AudioError) as err:
            decode(path)
        assert err.value.reason == reason, path
        assert str(path) in str(err.value) and err.value.path == str(path)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_non_finite_samples_are_replaced_and_noted(tmp_path, rate):
    # A float WAV can hold NaN and inf; they are zeroed/clipped (before any resampling, which
    # would smear them over the clip) and the clip says so, instead of poisoning the log-mel.
    x = _sine(440, 16000, 16000).astype(np.float32)
    x[100], x[200], x[300] = np.nan, np.inf, -np.inf
    path = tmp_path / "bad.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    wav = load(path, sample_rate=rate)
    assert np.isfinite(wav.samples).all()
    assert "non-finite samples replaced" in wav.notes
    assert ("resampled 16000->8000 Hz" in wav.notes) == (rate == 8000)
    if rate == 16000:
        assert wav.samples[100] == 0.0 and wav.samples[200] == 1.0 and wav.samples[300] == -1.0
    assert "silent" not in wav.notes
