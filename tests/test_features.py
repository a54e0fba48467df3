"""Log-mel features, recipes and the LH/X views.

Expectations come from librosa (the reference the module promises to match), from the
kernel's parameter table, and from arithmetic on the view rules; never from running the code
under test.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soundtag.errors import ParameterError
from soundtag.features import (
    LogMel,
    chunk_starts,
    decode_for_recipe,
    extract_features,
    feature_stats,
    log_mel,
    n_frames,
    x_chunks,
)
from soundtag.features.melspec import recipe_log_mel
from soundtag.features.numpy_melspec import NumpyLogMel, mel_filterbank
from soundtag.manifest import read_manifest
from soundtag.recipe import list_recipes, load_recipe

librosa = pytest.importorskip("librosa")

# ESC-10 clips whose decoded length is not 5.0 s (3.6 s to 7.2 s), plus a few ordinary ones.
UNEVEN = [
    "010 - Fire crackling/4-164661-B.ogg",  # 3.64 s
    "007 - Helicopter/1-172649-F.ogg",  # 7.00 s
    "010 - Fire crackling/1-17808-B.ogg",  # 7.24 s
    "007 - Helicopter/5-177957-A.ogg",  # 5.14 s
    "002 - Rain/4-163264-A.ogg",  # 5.10 s
    "005 - Clock tick/4-175945-A.ogg",  # 5.08 s
    "004 - Baby cry/2-107351-A.ogg",  # 4.96 s
    "010 - Fire crackling/3-104632-A.ogg",  # 4.96 s
]
ORDINARY = [
    "001 - Dog bark/1-100032-A.ogg",
    "003 - Sea waves/1-28135-A.ogg",
    "009 - Rooster/1-26806-A.ogg",
]
CLIPS = UNEVEN + ORDINARY

SR = 44100
REF = dict(n_fft=2560, hop_length=882, n_mels=128, fmin=20)


def _path(esc10_root, rel):
    path = esc10_root / "audio" / rel
    assert path.is_file(), f"test data missing: {path}"
    return path


@pytest.fixture(scope="module")
def esc10_subset(esc10_root):
    """The uneven clips plus a few ordinary ones, read through the ESC-10 layout reader."""
    wanted = set(CLIPS)
    manifest = read_manifest(esc10_root).filter(lambda c: c.id in wanted)
    assert sorted(manifest.ids) == sorted(CLIPS)
    return manifest


@pytest.fixture(scope="module")
def native_audio(esc10_root):
    """Each clip at its native 44.1 kHz, decoded by librosa."""
    out = {}
    for rel in CLIPS:
        y, sr = librosa.load(_path(esc10_root, rel), sr=None)
        assert sr == SR
        out[rel] = y
    return out


def _librosa_db(y):
    return librosa.power_to_db(
        librosa.feature.melspectrogram(
            y=y,
            sr=SR,
            n_fft=REF["n_fft"],
            hop_length=REF["hop_length"],
            n_mels=REF["n_mels"],
            fmin=REF["fmin"],
            fmax=SR / 2,
        )
    )


# --- log-mel against librosa --------------------------------------------------------------


def test_log_mel_matches_librosa_on_real_clips(native_audio):
    lengths = {len(y) for y in native_audio.values()}
    assert len(lengths) >= 6, "the clips should have several different lengths"
    for rel, y in native_audio.items():
        ours = log_mel(y, sample_rate=SR, **REF)
        ref = _librosa_db(y)
        assert ours.shape == ref.shape == (128, 1 + len(y) // 882), rel
        assert np.isfinite(ours).all(), rel
        loud = ref > -80
        assert loud.mean() > 0.05, rel
        diff = np.abs(ours.astype(np.float64) - ref)[loud].max()
        assert diff < 0.01, f"{rel}: max |ours - librosa| = {diff:.4f} dB"


def test_batched_logmel_with_lengths_equals_each_clip_alone(native_audio):
    clips = [native_audio[r] for r in (UNEVEN[0], UNEVEN[2], UNEVEN[1], ORDINARY[0])]
    lengths = [len(y) for y in clips]
    assert len(set(lengths)) == len(lengths)
    batch = torch.zeros(len(clips), max(lengths))
    for i, y in enumerate(clips):
        batch[i, : len(y)] = torch.from_numpy(y)
    module = LogMel(sample_rate=SR, **REF)
    with torch.no_grad():
        out = module(batch, torch.tensor(lengths)).numpy()
    assert out.shape == (len(clips), 128, n_frames(max(lengths), 882))
    for i, y in enumerate(clips):
        alone = log_mel(y, sample_rate=SR, **REF)
        valid = n_frames(len(y), 882)
        assert alone.shape[1] == valid == 1 + len(y) // 882
        np.testing.assert_allclose(out[i, :, :valid], alone, atol=2e-3)
        # Frames past the clip hold that clip's own floor: its peak minus top_db (80 dB).
        floor = alone.max() - 80.0
        if valid < out.shape[-1]:
            np.testing.assert_allclose(out[i, :, valid:], floor, atol=2e-3)
        assert out[i].min() >= floor - 2e-3


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin",
    [
        (16000, 1024, 128, 20),
        (16000, 1024, 64, 20),
        (32000, 1024, 128, 50),
        (44100, 2560, 128, 0),
        (8000, 256, 40, 0),
        (16000, 512, 3, 0),
    ],
)
def test_banded_mel_projection_equals_the_dense_basis(sr, n_fft, n_mels, fmin):
    # The CPU product runs band by band; it must be the dense basis' product, whatever the
    # filters' widths (narrow low filters, all-zero rows at a small n_fft, very few mels).
    module = LogMel(sample_rate=sr, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels, fmin=fmin)
    power = torch.rand(3, n_fft // 2 + 1, 17, dtype=torch.float64).float() ** 4
    dense = (module.mel_basis.double() @ power.double()).float()
    np.testing.assert_allclose(module._project(power).numpy(), dense.numpy(), rtol=1e-5, atol=1e-9)
    # The bands cover every filter once, in order.
    bands = module._bands
    assert bands[0][0] == 0 and bands[-1][1] == n_mels
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))


def test_n_frames_is_centred_stft_count():
    assert n_frames(176400, 882) == 201
    for n, hop in [(1024, 512), (1535, 512), (1536, 512), (4000, 320), (176400, 882), (156000, 520)]:
        frames = torch.stft(
            torch.zeros(n),
            1024,
            hop,
            window=torch.hann_window(1024),
            center=True,
            pad_mode="constant",
            return_complex=True,
        ).shape[-1]
        assert n_frames(n, hop) == frames == 1 + n // hop


# --- known answers -----------------------------------------------------------------------


def test_pure_tone_lands_in_nearest_mel_bin():
    sr, n_mels, n_fft, hop = 22050, 96, 2048, 512
    centres = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=sr / 2)[1:-1]
    nearest = int(np.argmin(np.abs(centres - 1000.0)))
    spacing = (centres[nearest + 1] - centres[nearest - 1]) / 2
    # precondition of the test itself: 1 kHz sits close to one centre, far from a tie
    assert abs(centres[nearest] - 1000.0) < 0.25 * spacing
    t = np.arange(sr) / sr
    y = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    spec = log_mel(y, sample_rate=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    inner = spec[:, 5:-5]  # away from the zero-padded edges
    assert (inner.argmax(axis=0) == nearest).all()
    # and the peak bin is far above bins an octave away
    assert inner[nearest].mean() - inner[int(np.argmin(np.abs(centres - 2000)))].mean() > 30


@pytest.mark.parametrize("top_db", [80.0, None])
def test_silence_is_finite_floor(top_db):
    spec = log_mel(
        np.zeros(16000, dtype=np.float32), sample_rate=16000, n_fft=1024, hop_length=256, n_mels=64, top_db=top_db
    )
    assert spec.shape == (64, 1 + 16000 // 256)
    assert np.isfinite(spec).all()
    np.testing.assert_allclose(spec, 10 * np.log10(1e-10))  # -100 dB


def test_logmel_parameter_errors():
    y = np.zeros(4000, dtype=np.float32)
    with pytest.raises(ParameterError, match="hop_length"):
        log_mel(y, sample_rate=16000, n_fft=512, hop_length=0, n_mels=40)
    with pytest.raises(ParameterError, match="fmax"):
        log_mel(y, sample_rate=16000, n_fft=512, hop_length=128, n_mels=40, fmax=9000)
    with pytest.raises(ParameterError):
        LogMel(sample_rate=16000, n_fft=512, hop_length=128, n_mels=40, fmin=500, fmax=400)


# --- the log-mel of a recipe ---------------------------------------------------------------


def _hand_built(recipe) -> dict:
    """The recipe's log-mel parameters, spelt out as the call sites used to."""
    f = recipe.features
    return dict(
        sample_rate=recipe.audio.sample_rate,
        n_fft=f.n_fft,
        hop_length=f.hop_length,
        n_mels=f.n_mels,
        fmin=f.fmin,
        fmax=f.fmax,
        top_db=f.top_db,
    )


def test_logmel_from_the_kernel_recipe_matches_librosa_on_real_clips(native_audio):
    # fsd2018-lh is the kernel's table (REF): 44.1 kHz, n_fft 2560, hop 882, 128 mels from 20 Hz
    recipe = load_recipe("fsd2018-lh")
    assert _hand_built(recipe) == dict(sample_rate=SR, **REF, fmax=None, top_db=80.0)
    module = LogMel.from_recipe(recipe)
    for rel in (UNEVEN[0], UNEVEN[2], ORDINARY[0]):
        y = native_audio[rel]
        with torch.no_grad():
            ours = module(torch.from_numpy(y)[None])[0].numpy()
        ref = _librosa_db(y)
        assert ours.shape == ref.shape == (128, 1 + len(y) // 882), rel
        loud = ref > -80
        assert np.abs(ours.astype(np.float64) - ref)[loud].max() < 0.01, rel
        np.testing.assert_array_equal(recipe_log_mel(y, recipe), log_mel(y, sample_rate=SR, **REF))


@pytest.mark.parametrize("name", ["esc50-lh", "esc50-x", "fsd2018-lh", "fsd2018-x"])
def test_from_recipe_equals_the_hand_built_log_mel_on_a_real_clip(esc10_root, name):
    recipe = load_recipe(name)
    wav = decode_for_recipe(_path(esc10_root, UNEVEN[0]), recipe)
    x = torch.from_numpy(wav.samples)[None]
    with torch.no_grad():
        expected = LogMel(**_hand_built(recipe))(x)[0].numpy()
        got = LogMel.from_recipe(recipe)(x)[0].numpy()
    assert got.shape == (recipe.features.n_mels, n_frames(len(wav.samples), recipe.features.hop_length))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(recipe_log_mel(wav.samples, recipe), expected)
    # The NumPy twin (the ONNX engine's) with its own filterbank: the same spectrogram to float32
    # rounding, and identical to the hand-built NumpyLogMel.
    f = recipe.features
    basis = mel_filterbank(
        sample_rate=recipe.audio.sample_rate, n_fft=f.n_fft, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax
    )
    hand = NumpyLogMel(basis, n_fft=f.n_fft, hop_length=f.hop_length, top_db=f.top_db)(wav.samples)
    twin = NumpyLogMel.from_recipe(recipe)(wav.samples)
    np.testing.assert_array_equal(twin, hand)
    np.testing.assert_allclose(twin, expected, atol=2e-3)


def test_numpy_logmel_from_recipe_uses_the_basis_it_is_given(esc10_root):
    recipe = load_recipe("esc50-x")
    y = decode_for_recipe(_path(esc10_root, ORDINARY[0]), recipe).samples
    own = NumpyLogMel.from_recipe(recipe)
    # twice the filterbank is twice the mel power: +10*log10(2) dB everywhere, floor included
    doubled = NumpyLogMel.from_recipe(recipe, mel_basis=2 * own.mel_basis)
    np.testing.assert_allclose(doubled(y) - own(y), 10 * np.log10(2), atol=1e-3)
    with pytest.raises(ParameterError, match=r"n_mels=48: it needs 48 rows"):
        NumpyLogMel.from_recipe(recipe, mel_basis=own.mel_basis[:40])
    with pytest.raises(ParameterError, match=r"n_fft=640: it needs 321 columns"):
        NumpyLogMel.from_recipe(recipe, mel_basis=own.mel_basis[:, :300])


@pytest.mark.slow
def test_numpy_melspec_does_not_import_torch():
    code = (
        "import sys; from soundtag.recipe import load_recipe; "
        "from soundtag.features.numpy_melspec import NumpyLogMel; "
        "NumpyLogMel.from_recipe(load_recipe('esc50-x')); print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


# --- recipes -----------------------------------------------------------------------------


def test_builtin_recipes_load():
    names = list_recipes()
    assert {"esc50-lh", "esc50-x", "fsd2018-lh", "fsd2018-x"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name
        assert recipe.view.kind in ("lh", "x")


def test_fsd2018_lh_matches_kernel_table():
    r = load_recipe("fsd2018-lh")
    assert r.audio.sample_rate == 44100
    assert r.view.kind == "lh" and r.view.duration == 4.0
    assert (r.features.hop_length, r.features.n_mels, r.features.n_fft) == (882, 128, 2560)
    assert r.features.fmin == 20 and r.features.fmax is None
    assert r.view.normalization == "per_sample"
    assert r.validation == "verified_only"
    assert r.view_samples == 4 * 44100


def test_fsd2018_x_matches_kernel_table():
    r = load_recipe("fsd2018-x")
    assert r.audio.sample_rate == 26000
    assert r.view.kind == "x" and r.view.duration == 6.0
    assert (r.features.hop_length, r.features.n_mels, r.features.n_fft) == (520, 48, 960)
    assert r.features.fmin == 20
    assert r.view.normalization == "per_feature"
    assert r.validation == "all"
    assert r.view.overlap == pytest.approx(0.1) and r.view.min_tail == pytest.approx(0.2)
    # 6 s * 26000 / 520 = 300 frames per chunk; 10% overlap -> a new chunk every 270 frames
    assert r.chunk_frames == 300
    assert r.chunk_step == 270


def test_override_typo_names_key_and_nearest():
    with pytest.raises(ParameterError) as info:
        load_recipe("fsd2018-x", ["view.overlpa=0.3"])
    msg = str(info.value)
    assert "overlpa" in msg and "view.overlap" in msg


def test_yaml_typo_names_key_and_nearest(tmp_path):
    text = (
        "name: mine\n"
        "audio: {sample_rate: 16000}\n"
        "featurs: {n_fft: 1024, hop_length: 320, n_mels: 64}\n"
        "view: {kind: lh, duration: 5.0}\n"
    )
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ParameterError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "featurs" in msg and "'features'" in msg


def test_override_bad_value_is_parameter_error():
    with pytest.raises(ParameterError, match="hop_length"):
        load_recipe("fsd2018-lh", ["features.hop_length=0"])


def test_override_changes_values_and_feature_hash():
    base = load_recipe("fsd2018-lh")
    changed = load_recipe("fsd2018-lh", ["features.hop_length=441"])
    assert changed.features.hop_length == 441
    assert changed.feature_hash() != base.feature_hash()
    assert load_recipe("fsd2018-lh").feature_hash() == base.feature_hash()
    # training settings do not decide the features
    assert load_recipe("fsd2018-lh", ["training.epochs=3"]).feature_hash() == base.feature_hash()


def test_unknown_recipe_suggests_nearest():
    with pytest.raises(ParameterError, match="fsd2018-lh"):
        load_recipe("fsd2018-lhh")


# --- views: properties ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 3000), chunk=st.integers(1, 400), step_frac=st.floats(0.05, 1.0), min_tail=st.floats(0.0, 1.0))
def test_chunk_starts_properties(n, chunk, step_frac, min_tail):
    step = max(1, int(chunk * step_frac))
    starts = chunk_starts(n, chunk=chunk, step=step, min_tail=min_tail)
    if n <= chunk:
        assert starts == [0]
        return
    regular = 1 + (n - chunk) // step
    leftover = n - ((regular - 1) * step + chunk)
    tail_kept = leftover > 0 and leftover >= min_tail * chunk
    assert len(starts) == regular + (1 if tail_kept else 0)
    assert starts[0] == 0
    assert all(b > a for a, b in zip(starts, starts[1:]))
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(g == step for g in gaps[: regular - 1])
    assert all(0 <= s and s + chunk <= n for s in starts)
    if tail_kept:
        assert starts[-1] + chunk == n
    else:
        assert starts[-1] == (regular - 1) * step


@pytest.mark.parametrize("n", [0, 1, 3, 4])
def test_tta_copies_are_the_chunks_rolled_the_same_in_numpy_and_torch(n):
    from soundtag.features.views import add_tta_copies, tta_shifts

    recipe = load_recipe("esc50-cpu-x")  # shift max_fraction 0.4: copies roll by up to 0.2 of a chunk
    chunks = np.random.default_rng(n).normal(size=(3, 1, 4, 50)).astype(np.float32)
    out = add_tta_copies(chunks, recipe, n)
    shifts = tta_shifts(50, n, 0.2)
    assert out.shape == (3 * (1 + n), 1, 4, 50)
    assert len(set(shifts)) == n and max(map(abs, shifts), default=0) == (10 if n else 0)
    for j, shift in enumerate([0, *shifts]):  # copy j of chunk i is row j * 3 + i
        for i in range(3):
            np.testing.assert_array_equal(out[j * 3 + i, 0][:, (np.arange(50) + shift) % 50], chunks[i, 0])
    np.testing.assert_array_equal(add_tta_copies(torch.from_numpy(chunks), recipe, n).numpy(), out)
    with pytest.raises(ParameterError, match="tta=-1"):
        add_tta_copies(chunks, recipe, -1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 800), chunk=st.integers(2, 200), step_frac=st.floats(0.1, 1.0), min_tail=st.floats(0.0, 1.0))
def test_x_chunks_properties(n, chunk, step_frac, min_tail):
    step = max(1, int(chunk * step_frac))
    spec = np.arange(3 * n, dtype=np.float32).reshape(3, n) - 100.0
    chunks = x_chunks(spec, chunk=chunk, step=step, min_tail=min_tail)
    assert chunks.ndim == 3 and chunks.shape[1:] == (3, chunk)
    if n < chunk:
        assert chunks.shape[0] == 1
        left = (chunk - n) // 2
        np.testing.assert_array_equal(chunks[0, :, left : left + n], spec)
        pad = np.concatenate([chunks[0, :, :left], chunks[0, :, left + n :]], axis=1)
        assert (pad == spec.min()).all()
        return
    starts = chunk_starts(n, chunk=chunk, step=step, min_tail=min_tail)
    assert chunks.shape[0] == len(starts)
    for c, s in zip(chunks, starts):
        np.testing.assert_array_equal(c, spec[:, s : s + chunk])


def test_chunk_starts_docstring_numbers():
    # hand-worked: 251 frames, chunk 100, step 90 -> 0, 90; tail 251-190=61 >= 20 -> end-aligned 151
    assert chunk_starts(251, chunk=100, step=90) == [0, 90, 151]
    assert chunk_starts(200, chunk=100, step=90) == [0, 90]  # tail 10 < 20: dropped
    assert chunk_starts(40, chunk=100, step=90) == [0]
    assert chunk_starts(100, chunk=100, step=90) == [0]
    # the tail rule at its boundary: 20 frames == 0.2 * 100 is kept, 19 is dropped
    assert chunk_starts(210, chunk=100, step=90, min_tail=0.2) == [0, 90, 110]
    assert chunk_starts(209, chunk=100, step=90, min_tail=0.2) == [0, 90]
    assert chunk_starts(190, chunk=100, step=90, min_tail=0.0) == [0, 90]  # no tail at all
    with pytest.raises(ParameterError):
        chunk_starts(100, chunk=0, step=1)


def _per_sample(spec: np.ndarray, over: str = "window") -> np.ndarray:
    from soundtag.features.frontend import Normalization

    return Normalization("per_sample", over=over)(torch.from_numpy(spec)[None])[0].numpy()


def test_normalize_per_sample_constant_is_zero():
    for value in (-100.0, 0.0, 37.5):
        out = _per_sample(np.full((128, 201), value, dtype=np.float16))
        assert np.isfinite(out).all()
        assert (out == 0).all()


def test_normalize_per_sample_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(-40, 12, size=(64, 90)).astype(np.float32)
    expected = (x - x.mean()) / (x.std() + 1.0)
    np.testing.assert_allclose(_per_sample(x), expected, rtol=1e-5, atol=1e-5)


def test_fitted_normalisations_divide_by_the_std_of_the_training_clips():
    from soundtag.features.frontend import Normalization

    rng = np.random.default_rng(1)
    x = rng.normal(-40, 12, size=(3, 4, 10)).astype(np.float32)
    mean, std = rng.normal(-40, 1, 4).astype(np.float32), rng.uniform(5, 15, 4).astype(np.float32)
    per_feature = Normalization("per_feature", mean=mean, std=std)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(per_feature, (x - mean[:, None]) / (std[:, None] + 1e-6), rtol=1e-6)
    glob = Normalization("global", mean=[-40.0], std=[12.0])(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(glob, (x + 40.0) / (12.0 + 1e-6), rtol=1e-6)
    with pytest.raises(ParameterError, match="fitted mean and std"):
        Normalization("global")


def test_feature_stats_equals_concatenation():
    rng = np.random.default_rng(1)
    arrays = [
        rng.normal(-50 + 3 * i, 5 + i, size=(48, n)).astype(np.float16) for i, n in enumerate([301, 17, 363, 1, 120])
    ]
    arrays.append(np.full((48, 40), -100.0, dtype=np.float16))
    mean, std = feature_stats(iter(arrays))
    cat = np.concatenate([a.astype(np.float64) for a in arrays], axis=1)
    assert mean.shape == std.shape == (48,)
    np.testing.assert_allclose(mean, cat.mean(axis=1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(std, cat.std(axis=1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ParameterError):
        feature_stats([])


# --- views on real uneven clips ----------------------------------------------------------


def test_lh_view_is_201_frames_for_every_clip(esc10_root):
    r = load_recipe("fsd2018-lh")
    expected = (128, 1 + (4 * 44100) // 882)
    assert expected == (128, 201)
    head = 4 * 44100
    padded = 0
    for rel in CLIPS:
        wav = decode_for_recipe(_path(esc10_root, rel), r)
        assert wav.samples.shape == (head,)
        # independent: librosa's decode (no resampling at 44.1 kHz) and librosa's trim
        y, _ = librosa.load(_path(esc10_root, rel), sr=None)
        trimmed, _ = librosa.effects.trim(y, top_db=60)
        if len(trimmed) >= head:
            np.testing.assert_allclose(wav.samples, trimmed[:head], atol=1e-6)
        else:  # centre-padded with zeros, left pad (head - n) // 2
            padded += 1
            left = (head - len(trimmed)) // 2
            np.testing.assert_allclose(wav.samples[left : left + len(trimmed)], trimmed, atol=1e-6)
            assert not wav.samples[:left].any() and not wav.samples[left + len(trimmed) :].any()
        f = r.features
        spec = log_mel(
            wav.samples,
            sample_rate=r.audio.sample_rate,
            n_fft=f.n_fft,
            hop_length=f.hop_length,
            n_mels=f.n_mels,
            fmin=f.fmin,
            fmax=f.fmax,
        )
        assert spec.shape == expected, rel
        assert np.isfinite(spec).all()
    assert padded >= 1  # the 3.6 s clip, at least, is shorter than the head


def _hand_chunk_count(n_samples, *, view_samples=6 * 26000, hop=520, chunk=300, step=270, min_tail=0.2):
    frames = 1 + max(n_samples, view_samples) // hop
    if frames <= chunk:
        return frames, 1
    regular = 1 + (frames - chunk) // step
    leftover = frames - ((regular - 1) * step + chunk)
    return frames, regular + (1 if leftover > 0 and leftover >= min_tail * chunk else 0)


def test_x_and_lh_views_from_the_store_on_uneven_clips(esc10_root, esc10_subset, tmp_path):
    rx = load_recipe("fsd2018-x")
    rl = load_recipe("fsd2018-lh")
    store_x, sx = extract_features(esc10_subset, rx, cache_dir=tmp_path, workers=0, progress=False)
    store_l, sl = extract_features(esc10_subset, rl, cache_dir=tmp_path, workers=0, progress=False)
    assert sx.failures == [] and sl.failures == []
    assert sx.computed == sl.computed == len(CLIPS)

    tolerance = 2 * 520  # soxr vs librosa resampled lengths may differ by a few samples
    unambiguous, counts = 0, []
    for clip in esc10_subset:
        assert store_l.get_clip(clip.path).shape == (128, 201), clip.id
        y, _ = librosa.load(clip.path, sr=26000)
        trimmed, _ = librosa.effects.trim(y, top_db=60)
        frames, count = _hand_chunk_count(len(trimmed))
        spec = store_x.get_clip(clip.path)
        assert spec.shape[0] == 48
        assert abs(spec.shape[1] - frames) <= 2, clip.id
        chunks = x_chunks(
            np.asarray(spec, dtype=np.float32), chunk=rx.chunk_frames, step=rx.chunk_step, min_tail=rx.view.min_tail
        )
        assert chunks.shape[1:] == (48, 300)
        near = {_hand_chunk_count(len(trimmed) + d)[1] for d in range(-tolerance, tolerance + 1, 10)}
        if len(near) == 1:
            unambiguous += 1
            assert chunks.shape[0] == count, f"{clip.id}: {chunks.shape[0]} chunks, expected {count}"
            counts.append(count)
    assert unambiguous >= 8
    assert 2 in counts, "the 7.24 s clip should give an end-aligned second chunk"
