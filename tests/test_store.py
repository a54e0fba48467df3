"""The feature store and extraction over a manifest: caching, incremental runs, crash safety,
bad inputs. Real ESC-10 clips are copied into tmp_path so that their mtimes can be changed."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundtag.errors import DataError
from soundtag.features import (
    FeatureStore,
    clip_key,
    decode_for_recipe,
    extract_features,
    log_mel,
)
from soundtag.manifest import Clip, Manifest
from soundtag.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _real_clips(esc10_root: Path, n: int) -> list[Path]:
    """n real ESC-10 clips across classes, always including the uneven-length ones."""
    audio = esc10_root / "audio"
    uneven = [
        audio / "010 - Fire crackling/4-164661-B.ogg",
        audio / "010 - Fire crackling/1-17808-B.ogg",
        audio / "007 - Helicopter/1-172649-F.ogg",
        audio / "007 - Helicopter/5-177957-A.ogg",
    ]
    others = [p for d in sorted(audio.iterdir()) for p in sorted(d.glob("1-*-A.ogg"))[:2]]
    paths = uneven + [p for p in others if p not in uneven]
    assert all(p.is_file() for p in paths)
    assert len(paths) >= n
    return paths[:n]


def _copy_clips(src: list[Path], dest: Path) -> Manifest:
    dest.mkdir(parents=True, exist_ok=True)
    clips = []
    for p in src:
        label = p.parent.name.split(" - ", 1)[1]
        target = dest / f"{label.replace(' ', '_')}--{p.name}"
        shutil.copy2(p, target)
        clips.append(Clip(id=target.name, path=str(target), labels=(label,)))
    return Manifest.build(clips, name="esc10-copy")


def _expected(path, recipe) -> np.ndarray:
    wav = decode_for_recipe(path, recipe)
    f = recipe.features
    return log_mel(
        wav.samples,
        sample_rate=recipe.audio.sample_rate,
        n_fft=f.n_fft,
        hop_length=f.hop_length,
        n_mels=f.n_mels,
        fmin=f.fmin,
        fmax=f.fmax,
        top_db=f.top_db,
    )


def _all_parts_finite(store: FeatureStore) -> None:
    for npy in (store.path / "parts").glob("part-*.npy"):
        data = np.load(npy, mmap_mode="r")
        assert np.isfinite(data).all(), npy


def _age(*paths: Path, seconds: float = 3600) -> None:
    """Make files look abandoned (older than the store's sweep threshold)."""
    past = time.time() - seconds
    for p in paths:
        os.utime(p, (past, past))


def _leftovers(store_path: Path) -> tuple[list[Path], list[Path]]:
    parts = store_path / "parts"
    tmp = sorted(parts.glob("*.tmp")) + sorted(parts.glob(".*.tmp"))
    orphans = [p for p in parts.glob("part-*.npy") if not p.with_suffix(".json").is_file()]
    return tmp, orphans


@pytest.fixture(scope="module")
def lh():
    return load_recipe("fsd2018-lh")


# --- caching and incremental runs --------------------------------------------------------


def test_extract_cache_incremental_and_reopen(esc10_root, tmp_path, lh):
    sources = _real_clips(esc10_root, 21)
    manifest = _copy_clips(sources[:20], tmp_path / "audio")
    n = len(manifest)
    cache = tmp_path / "cache"

    store, s1 = extract_features(manifest, lh, cache_dir=cache, workers=1, progress=False)
    assert (s1.clips, s1.computed, s1.cached, s1.failures) == (n, n, 0, [])
    assert len(store) == n
    assert s1.audio_seconds == pytest.approx(sum(sf.info(c.path).duration for c in manifest), rel=0.01)

    # the stored float16 arrays are the log-mel of the decoded, cropped clip
    for clip in manifest:
        got = store.get_clip(clip.path)
        assert got.dtype == np.float16 and got.shape == (128, 201)
        np.testing.assert_allclose(got.astype(np.float32), _expected(clip.path, lh), atol=0.05)

    # second run: everything cached, nothing computed, nothing new on disk
    parts_before = sorted((store.path / "parts").iterdir())
    store2, s2 = extract_features(manifest, lh, cache_dir=cache, workers=0, progress=False)
    assert (s2.computed, s2.cached, s2.failures) == (0, n, [])
    assert store2.path == store.path
    assert sorted((store.path / "parts").iterdir()) == parts_before

    # a touched file (new mtime) is computed again; the others are reused
    touched = manifest[3]
    st = os.stat(touched.path)
    os.utime(touched.path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    store3, s3 = extract_features(manifest, lh, cache_dir=cache, workers=0, progress=False)
    assert (s3.computed, s3.cached) == (1, n - 1)
    np.testing.assert_allclose(store3.get_clip(touched.path).astype(np.float32), _expected(touched.path, lh), atol=0.05)

    # a new clip copied in is the only one computed
    bigger = Manifest.build(list(manifest) + list(_copy_clips(sources[20:21], tmp_path / "audio")))
    store4, s4 = extract_features(bigger, lh, cache_dir=cache, workers=0, progress=False)
    assert (s4.clips, s4.computed, s4.cached) == (n + 1, 1, n)
    new = bigger[n]
    np.testing.assert_allclose(store4.get_clip(new.path).astype(np.float32), _expected(new.path, lh), atol=0.05)

    # a fresh FeatureStore object reads the same arrays, memory-mapped and read-only
    reopened = FeatureStore.open(cache, lh)
    assert reopened.path == store4.path
    for clip in bigger:
        key = clip_key(clip.path)
        assert key in reopened
        a, b = reopened.get(key), store4.get(key)
        assert isinstance(a, np.memmap) or isinstance(a.base, np.memmap)
        assert not a.flags.writeable
        np.testing.assert_array_equal(a, b)
        assert reopened.entries[key].clip_id == clip.id
    _all_parts_finite(reopened)


# --- interrupted runs ------------------------------------------------------------------------

_WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from soundtag.features import FeatureStore, clip_key, decode_for_recipe, log_mel
    from soundtag.recipe import load_recipe
    cache, *paths = sys.argv[1:]
    recipe = load_recipe("fsd2018-lh")
    f = recipe.features
    store = FeatureStore.open(cache, recipe)
    per_clip = 201 * f.n_mels * 2
    with store.writer(max_part_bytes=3 * per_clip) as writer:   # a part every 3 clips
        for i, path in enumerate(paths):
            wav = decode_for_recipe(path, recipe)
            spec = log_mel(wav.samples, sample_rate=recipe.audio.sample_rate, n_fft=f.n_fft,
                           hop_length=f.hop_length, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax)
            writer.add(clip_key(path), Path(path).name, spec, duration=wav.source_duration, notes=wav.notes)
            print("added", i, flush=True)
            if i >= 3:
                time.sleep(0.5)   # slow down after the first part so the test can kill it mid-run
""")


@pytest.mark.slow
def test_killed_run_leaves_a_readable_store_and_rerun_completes(esc10_root, tmp_path, lh):
    manifest = _copy_clips(_real_clips(esc10_root, 16), tmp_path / "audio")
    n = len(manifest)
    cache = tmp_path / "cache"
    store_path = FeatureStore.open(cache, lh).path
    parts = store_path / "parts"

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER_SCRIPT, str(cache), *[c.path for c in manifest]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(parts.glob("part-*.json")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no part was written within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # what a crash between the .npy rename and the .json write leaves, and a torn temp file
    np.save(parts / "part-0123456789abcdef.npy", np.full((50, 128), np.nan, dtype=np.float16))
    (parts / ".part-fedcba9876543210.npy.x1y2z3.tmp").write_bytes(b"\x93NUMPY half written")
    orphan_tmp, orphans = _leftovers(store_path)
    assert orphan_tmp and orphans
    _age(*orphan_tmp, *orphans)

    store = FeatureStore.open(cache, lh)
    orphan_tmp, orphans = _leftovers(store_path)
    assert orphan_tmp == [] and orphans == [], "leftovers of the killed writer must be swept on open"
    assert not (parts / "part-0123456789abcdef.npy").exists()
    done = len(store)
    assert 3 <= done < n, f"the kill should land mid-run ({done} of {n} stored)"
    by_key = {clip_key(c.path): c for c in manifest}
    for key in store.entries:
        assert key in by_key
        arr = store.get(key)
        assert arr.shape == (128, 201) and np.isfinite(arr).all()
    for key in list(store.entries)[:3]:
        np.testing.assert_allclose(store.get(key).astype(np.float32), _expected(by_key[key].path, lh), atol=0.05)
    _all_parts_finite(store)

    # the rerun computes only what the killed run did not store
    store2, summary = extract_features(manifest, lh, cache_dir=cache, workers=0, progress=False)
    assert (summary.computed, summary.cached, summary.failures) == (n - done, done, [])
    assert len(store2) == n
    assert set(store2.entries) == set(by_key)
    again = FeatureStore.open(cache, lh)
    assert set(again.entries) == set(by_key)
    _all_parts_finite(again)


def test_orphan_part_without_index_is_ignored_and_removed(esc10_root, tmp_path, lh):
    manifest = _copy_clips(_real_clips(esc10_root, 3), tmp_path / "audio")
    cache = tmp_path / "cache"
    store, _ = extract_features(manifest, lh, cache_dir=cache, workers=0, progress=False)
    good = {k: np.array(store.get(k)) for k in store.entries}
    parts = store.path / "parts"
    orphan = parts / "part-x.npy"
    np.save(orphan, np.full((201, 128), np.inf, dtype=np.float16))
    tmp = parts / ".part-y.npy.abc123.tmp"
    tmp.write_bytes(b"\x00" * 100)

    # Fresh, they may be another shard's part being written: left alone, and not read.
    reopened = FeatureStore.open(cache, lh)
    assert orphan.exists() and tmp.exists()
    assert all(e.part != "part-x" for e in reopened.entries.values())
    _age(orphan, tmp)
    reopened = FeatureStore.open(cache, lh)
    assert not orphan.exists() and not tmp.exists()
    assert set(reopened.entries) == set(good)
    assert all(e.part != "part-x" for e in reopened.entries.values())
    for k, arr in good.items():
        np.testing.assert_array_equal(reopened.get(k), arr)
    _, summary = extract_features(manifest, lh, cache_dir=cache, workers=0, progress=False)
    assert (summary.computed, summary.cached) == (0, len(manifest))


# --- bad inputs ---------------------------------------------------------------------------


def test_bad_inputs_are_reported_and_the_run_goes_on(esc10_root, tmp_path, lh):
    folder = tmp_path / "bad"
    folder.mkdir()
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"this is not audio, just text with a .wav name\n" * 20)
    empty = folder / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    missing = folder / "missing.wav"
    silent = folder / "silent.wav"
    sf.write(silent, np.zeros(2 * 44100, dtype=np.float32), 44100)
    stereo = folder / "stereo48k.wav"
    t = np.arange(int(1.5 * 48000)) / 48000
    sf.write(
        stereo,
        np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)], axis=1),
        48000,
        subtype="PCM_16",
    )
    real = _real_clips(esc10_root, 2)

    clips = [
        Clip("corrupt", str(corrupt), ("a",)),
        Clip("real0", str(real[0]), ("b",)),
        Clip("empty", str(empty), ("a",)),
        Clip("missing", str(missing), ("a",)),
        Clip("silent", str(silent), ("a",)),
        Clip("stereo", str(stereo), ("b",)),
        Clip("real1", str(real[1]), ("b",)),
    ]
    manifest = Manifest.build(clips)
    store, summary = extract_features(
        manifest, lh, cache_dir=tmp_path / "cache", workers=1, batch_size=2, progress=False
    )

    reasons = {f.clip_id: f.reason for f in summary.failures}
    assert reasons == {"corrupt": "corrupt", "empty": "empty", "missing": "missing"}
    for f in summary.failures:
        assert f.message and f.path
    assert summary.computed == 4 and summary.cached == 0
    assert len(store) == 4

    with open(summary.failures_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert summary.failures_csv == store.path / "failures.csv"
    assert {(r["clip_id"], r["reason"]) for r in rows} == set(reasons.items())
    assert {r["path"] for r in rows} == {str(corrupt), str(empty), str(missing)}

    sil = store.get_clip(silent)
    assert sil.shape == (128, 201) and np.isfinite(sil).all()
    np.testing.assert_array_equal(sil, np.float16(10 * np.log10(1e-10)))  # all at the -100 dB floor
    assert "silent" in store.entries[clip_key(silent)].notes
    st_notes = store.entries[clip_key(stereo)].notes
    assert any("down-mixed 2 channels" in n for n in st_notes)
    assert any("48000->44100" in n for n in st_notes)
    stereo_spec = store.get_clip(stereo)
    assert np.isfinite(stereo_spec).all() and stereo_spec.max() > stereo_spec.min()

    with open(summary.notes_csv, newline="") as fh:
        noted = list(csv.DictReader(fh))
    assert {"silent", "stereo"} <= {r["clip_id"] for r in noted}
    for path in real:
        assert np.isfinite(store.get_clip(path)).all()
    _all_parts_finite(store)


# --- feature configs and store folders -----------------------------------------------------


def test_changed_feature_config_uses_another_store(esc10_root, tmp_path, lh):
    cache = tmp_path / "cache"
    hop = load_recipe("fsd2018-lh", ["features.hop_length=441"])
    a = FeatureStore.open(cache, lh)
    b = FeatureStore.open(cache, hop)
    assert a.path != b.path and a.path.parent == b.path.parent == cache
    # training-only changes share the store
    assert FeatureStore.open(cache, load_recipe("fsd2018-lh", ["training.epochs=2"])).path == a.path

    manifest = _copy_clips(_real_clips(esc10_root, 2), tmp_path / "audio")
    extract_features(manifest, lh, cache_dir=cache, workers=0, progress=False)
    store_hop, summary = extract_features(manifest, hop, cache_dir=cache, workers=0, progress=False)
    assert (summary.computed, summary.cached) == (2, 0)
    assert store_hop.get_clip(manifest[0].path).shape == (128, 1 + 4 * 44100 // 441)


def test_store_of_another_feature_config_is_refused(tmp_path, lh):
    store = FeatureStore.open(tmp_path, lh)
    config = store.path / "store.json"
    data = json.loads(config.read_text())
    data["feature_key"]["features"]["n_fft"] = 4096
    config.write_text(json.dumps(data))
    with pytest.raises(DataError, match="another feature config"):
        FeatureStore.open(tmp_path, lh)


def test_a_part_is_the_npy_file_of_its_clips_rows_end_to_end(tmp_path, lh):
    # The writer streams each clip's rows after one header instead of concatenating them first:
    # the file must be byte for byte what np.save of the concatenation writes.
    store = FeatureStore.open(tmp_path, lh)
    rng = np.random.default_rng(0)
    specs = [rng.normal(size=(store.n_mels, frames)).astype(np.float16) for frames in (3, 1, 7)]
    with store.writer() as writer:
        for i, spec in enumerate(specs):
            writer.add(f"k{i}", f"c{i}", spec, duration=1.0)
    (part,) = (store.path / "parts").glob("part-*.npy")
    expected = tmp_path / "expected.npy"
    np.save(expected, np.concatenate([np.ascontiguousarray(s.T) for s in specs]))  # (frames, n_mels) rows
    assert part.read_bytes() == expected.read_bytes()
    reopened = FeatureStore.open(tmp_path, lh)
    for i, spec in enumerate(specs):
        np.testing.assert_array_equal(reopened.get(f"k{i}"), spec)
