"""Short sounds in long views: the sound's extent, augmentations sized to it, padding and
normalisation that do not drown it. Real ESC-10 audio cut short in the test."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from soundtag.features import LogMel, decode_for_recipe
from soundtag.features.frontend import Normalization
from soundtag.features.views import sound_extent
from soundtag.recipe import load_recipe
from soundtag.training import augment
from soundtag.training.data import Normalizer


def _loudest(samples: np.ndarray, n: int) -> np.ndarray:
    energy = np.convolve(samples.astype(np.float64) ** 2, np.ones(n), mode="valid")
    start = int(np.argmax(energy))
    return samples[start : start + n]


@pytest.fixture(scope="module")
def short_clips(esc10_root, tmp_path_factory):
    """Five real sounds cut to their loudest 0.4 s, written at 16 kHz (no resampling needed)."""
    import soxr

    folder = tmp_path_factory.mktemp("short")
    paths = []
    for i, path in enumerate(sorted((esc10_root / "audio").rglob("*.ogg"))[::80][:5]):
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        mono = soxr.resample(data.mean(axis=1), rate, 16000)
        out = folder / f"short-{i}.wav"
        sf.write(out, _loudest(mono, 6400), 16000, subtype="FLOAT")
        paths.append(out)
    return paths


def _views(paths, recipe):
    logmel = LogMel.from_recipe(recipe)
    with torch.inference_mode():
        return [logmel(torch.from_numpy(decode_for_recipe(p, recipe).samples)[None])[0].numpy() for p in paths]


def test_the_extent_of_a_short_real_sound_centred_in_a_5_s_view(short_clips):
    recipe = load_recipe("esc50-lh", ["audio.trim_db=null"])  # exactly 0.4 s of sound
    for spec in _views(short_clips, recipe):
        start, end = sound_extent(spec)
        # 6400 samples centred in 80000: samples 36800..43200, frames 115..135 at hop 320,
        # give or take the STFT window (1024 samples, 3 frames) reaching into the padding.
        assert 112 <= start <= 116 and 134 <= end <= 139, (start, end)
    full = _views(
        sorted(short_clips[0].parent.glob("*.wav"))[:1],
        load_recipe("esc50-lh", ["view.padding=repeat", "audio.trim_db=null"]),
    )[0]
    start, end = sound_extent(full)
    assert start <= 2 and end >= full.shape[1] - 2, "a repeated clip fills the view: no padding"


def test_repeat_padding_fills_the_view_with_the_clip_and_has_its_own_store(short_clips):
    center = load_recipe("esc50-lh", ["audio.trim_db=null"])
    repeat = load_recipe("esc50-lh", ["audio.trim_db=null", "view.padding=repeat"])
    wav = decode_for_recipe(short_clips[0], repeat).samples
    clip, _ = sf.read(short_clips[0], dtype="float32")
    assert len(wav) == 80000 and np.array_equal(wav[:6400], clip) and np.array_equal(wav[6400:12800], clip)
    assert center.feature_hash() != repeat.feature_hash()
    assert load_recipe("esc50-lh").feature_key()["crop"] == {"kind": "lh", "samples": 80000}, (
        "the stores of existing recipes keep their keys"
    )


def _batch(specs):
    x = torch.from_numpy(np.stack(specs))[:, None].float()
    extents = torch.tensor([sound_extent(s) for s in specs])
    return x, extents


def test_erasing_and_masks_relative_to_the_sound_stay_inside_it(short_clips):
    specs = _views(short_clips, load_recipe("esc50-lh", ["audio.trim_db=null"]))
    x, extents = _batch(specs)
    rng = torch.Generator().manual_seed(0)
    for _ in range(20):
        erased = augment.random_erasing(x, p=1.0, area=(0.02, 0.4), generator=rng, extents=extents)
        masked = augment.spec_augment(x, time_masks=2, time_width=0.5, freq_masks=0, generator=rng, extents=extents)
        for out in (erased, masked):
            changed = (out != x).any(dim=2)[:, 0]  # (batch, frames)
            for i, (start, end) in enumerate(extents.tolist()):
                outside = torch.cat([changed[i, :start], changed[i, end:]])
                assert not outside.any(), "nothing outside the sound is touched"
                # the sound keeps most of itself: at most 40% of its area erased
                assert changed[i, start:end].sum() <= end - start
        lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
        assert ((erased.amin(dim=(1, 2, 3)) >= lo) & (erased.amax(dim=(1, 2, 3)) <= hi)).all(), (
            "the fill comes from the sample's own range: no louder fake sound"
        )
    # the kernel's window-sized erasing does wipe the short sound (or paint beside it) often
    window = augment.random_erasing(x.repeat(20, 1, 1, 1), p=1.0, area=(0.02, 0.4), generator=rng)
    changed = (window != x.repeat(20, 1, 1, 1)).any(dim=2)[:, 0]
    outside = [bool(torch.cat([c[:s], c[e:]]).any()) for c, (s, e) in zip(changed, extents.repeat(20, 1).tolist())]
    assert np.mean(outside) > 0.5


def test_a_shift_relative_to_the_sound_never_pushes_it_out_of_the_view(short_clips):
    specs = _views(short_clips, load_recipe("esc50-lh", ["audio.trim_db=null"]))
    x, extents = _batch(specs)
    rng = torch.Generator().manual_seed(1)
    moved_any = False
    for _ in range(50):
        shifts = augment.shift_amounts(len(x), x.shape[-1], max_fraction=0.5, generator=rng, extents=extents)
        out = augment.roll_time(x, shifts)
        for i, (start, end) in enumerate(extents.tolist()):
            s = int(shifts[i])
            assert 0 <= start + s and end + s <= x.shape[-1]
            assert sound_extent(out[i, 0].numpy()) == (start + s, end + s), "the sound moved whole"
            moved_any |= s != 0
    assert moved_any
    # near the right edge a sound may only move left
    edge = torch.tensor([[200, x.shape[-1]]] * 100)
    assert (augment.shift_amounts(100, x.shape[-1], max_fraction=0.5, generator=rng, extents=edge) <= 0).all()


def _per_sample(spec: np.ndarray, over: str = "window") -> np.ndarray:
    return Normalization("per_sample", over=over)(torch.from_numpy(spec)[None])[0].numpy()


def _by_hand(spec: np.ndarray, over: str) -> np.ndarray:
    """``(x - mean) / (std + 1)`` with the statistics of the sound's frames (or the window's)."""
    start, end = sound_extent(spec) if over == "sound" else (0, spec.shape[1])
    stats = spec[:, start:end].astype(np.float64)
    return (spec - stats.mean()) / (stats.std() + 1.0)


def test_normalising_over_the_sound_ignores_how_much_padding_there_is(short_clips):
    five = load_recipe("esc50-lh", ["audio.trim_db=null", "view.normalize_over=sound"])
    two = load_recipe("esc50-lh", ["audio.trim_db=null", "view.normalize_over=sound", "view.duration=2.0"])
    for long_spec, short_spec in zip(_views(short_clips, five), _views(short_clips, two)):
        a, b = sound_extent(long_spec), sound_extent(short_spec)
        la, lb = _per_sample(long_spec, over="sound"), _per_sample(short_spec, over="sound")
        np.testing.assert_allclose(la, _by_hand(long_spec, "sound"), atol=1e-4)
        n = min(a[1] - a[0], b[1] - b[0])
        # the same sound, normalised the same way whatever the window around it
        np.testing.assert_allclose(la[:, a[0] + 2 : a[0] + n - 2], lb[:, b[0] + 2 : b[0] + n - 2], atol=0.05)
        # whereas the window's statistics depend on the padding
        wa, wb = _per_sample(long_spec), _per_sample(short_spec)
        assert np.abs(wa[:, a[0] + 2 : a[0] + n - 2] - wb[:, b[0] + 2 : b[0] + n - 2]).mean() > 0.2


def test_the_fold_ensemble_normalises_over_the_sound_as_training_does(short_clips):
    from soundtag.inference.fold_models import FoldEnsemble

    recipe = load_recipe("esc50-lh", ["audio.trim_db=null", "view.normalize_over=sound"])
    specs = _views(short_clips, recipe)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x[:, 0].clone())
            return torch.zeros(len(x), 2)

    ensemble = FoldEnsemble([Spy()], [Normalization("per_sample", over="sound")], multilabel=False)
    ensemble.probabilities(np.stack(specs))
    expected = np.stack([_by_hand(s, "sound") for s in specs])
    np.testing.assert_allclose(seen[0][: len(specs)].numpy(), expected, atol=1e-4)


def test_global_normalisation_uses_one_mean_and_std_of_the_sounds(short_clips, tmp_path):
    from soundtag.features.views import global_stats, sound_frames

    specs = _views(short_clips, load_recipe("esc50-lh", ["audio.trim_db=null"]))
    mean, std = global_stats(sound_frames(s) for s in specs)
    values = np.concatenate([sound_frames(s).ravel() for s in specs]).astype(np.float64)
    assert mean == pytest.approx(values.mean(), rel=1e-6) and std == pytest.approx(values.std(), rel=1e-6)
    norm = Normalizer("global", np.array([mean], np.float32), np.array([std], np.float32), "sound")
    out = norm.module()(torch.from_numpy(specs[0])[None])[0].numpy()
    np.testing.assert_allclose(out, (specs[0] - mean) / (std + 1e-6), rtol=1e-5, atol=1e-5)
    assert Normalizer.from_dict(norm.to_dict()).over == "sound"
    assert Normalizer.from_dict({"kind": "per_sample", "mean": None, "std": None}).over == "window"


@pytest.mark.slow
def test_a_short_clip_run_with_every_sound_relative_setting_trains_tags_and_exports(
    short_clips, esc10_root, tmp_path, fast
):
    """Train, tag and export with padding, normalisation and augmentations all relative to
    the sound: the ONNX model agrees with PyTorch on the short clips."""
    import csv

    from soundtag.manifest import read_manifest
    from soundtag.prediction import export_onnx, load_tagger
    from soundtag.training import train

    rows = [{"path": str(p), "labels": "ab"[i % 2], "fold": 1 + i % 2} for i, p in enumerate(short_clips * 2)]
    # each clip twice would repeat ids: copy the files
    for i, row in enumerate(rows[len(short_clips) :], start=len(short_clips)):
        copy = tmp_path / f"copy-{i}.wav"
        copy.write_bytes(open(row["path"], "rb").read())
        row["path"] = str(copy)
    data = tmp_path / "short.csv"
    with open(data, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "labels", "fold"])
        w.writeheader()
        w.writerows(rows)
    recipe = load_recipe(
        "esc50-lh",
        fast
        + [
            "view.normalize_over=sound",
            "view.normalization=global",
            "training.augment.erasing.relative_to=sound",
            "training.augment.shift.relative_to=sound",
            "training.augment.specaugment.enabled=true",
            "training.augment.specaugment.relative_to=sound",
        ],
    )
    result = train(read_manifest(data), recipe, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert result.metrics["complete"] and result.metrics["all"]["clips"] == len(rows)
    model = export_onnx(result.run_dir)
    torch_tagger, onnx_tagger = load_tagger(result.run_dir), load_tagger(model)
    for p in short_clips:
        assert np.abs(torch_tagger.tag(p).probs - onnx_tagger.tag(p).probs).max() <= 1e-4


def _module(overrides):
    from soundtag.training.module import TaggerModule

    recipe = load_recipe(
        "esc50-lh",
        [
            "training.model=vgg",
            "training.model_args={widths: [4, 8]}",
            "training.augment.specaugment.enabled=true",
            *overrides,
        ],
    )
    return TaggerModule(recipe.model_dump(), ["a", "b"], False, {"kind": "per_sample", "mean": None, "std": None})


def test_window_recipes_keep_the_kernels_order_and_sound_ones_mask_first(short_clips):
    specs = _views(short_clips, load_recipe("esc50-lh", ["audio.trim_db=null"]))
    x, extents = _batch(specs)
    y = torch.eye(2)[[0, 1, 0, 1, 0]]

    def by_hand(order, sound):
        rng = torch.Generator().manual_seed(7)
        ext = extents if sound else None
        steps = {
            "shift": lambda v: augment.time_shift(v, max_fraction=0.4, generator=rng, extents=ext),
            "mask": lambda v: augment.random_erasing(
                augment.spec_augment(
                    v, time_masks=2, time_width=0.1, freq_masks=2, freq_width=0.15, generator=rng, extents=ext
                ),
                p=0.5,
                area=(0.02, 0.4),
                aspect=(0.3, 3.33),
                generator=rng,
                extents=ext,
            ),
        }
        out = x
        for name in order:
            out = steps[name](out)
        return augment.mixup(out, y, alpha=1.0, generator=rng)[0]

    window = _module([])
    window.generator = torch.Generator().manual_seed(7)
    torch.testing.assert_close(window.augment(x, y, extents)[0], by_hand(["shift", "mask"], sound=False))
    sound = _module(
        [
            "training.augment.erasing.relative_to=sound",
            "training.augment.shift.relative_to=sound",
            "training.augment.specaugment.relative_to=sound",
        ]
    )
    sound.generator = torch.Generator().manual_seed(7)
    torch.testing.assert_close(sound.augment(x, y, extents)[0], by_hand(["mask", "shift"], sound=True))
