"""The device-resident training path (issue 12) against the streaming path, on real ESC-10 clips.

Both paths draw the same balanced epochs from the same sampler. LH views are fixed, so the two
must give the same batches value for value; X crops are random in both, so there the device
path must keep every crop inside its clip, with the values of the stored clip at that place,
and give the same evaluation chunks as the streaming path.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from soundtag.errors import ParameterError
from soundtag.features import extract_features
from soundtag.features.frontend import Normalization, sound_extents
from soundtag.features.views import sound_extent
from soundtag.manifest import read_manifest
from soundtag.recipe import load_recipe
from soundtag.runs import RunDir
from soundtag.training import train
from soundtag.training.device_data import (
    CPU_BUDGET_BYTES,
    DeviceClips,
    DeviceTrainBatches,
    features_bytes,
    wants_device_data,
)
from soundtag.training.folds import FoldSet


@pytest.fixture(scope="module")
def clips(esc10_root, tmp_path_factory, write_subset_csv):
    """3 ESC-10 classes with 6 / 4 / 2 clips in fold 2 (uneven, so oversampling has work) and
    4 each in fold 1."""
    path = write_subset_csv(
        esc10_root, tmp_path_factory.mktemp("device") / "clips.csv", classes=3, per_class_per_fold=6
    )
    m = read_manifest(path)
    keep, seen = [], Counter()
    for c in m:
        cap = {0: 6, 1: 4, 2: 2}[m.labels.index(c.labels[0])] if c.fold == 2 else 4
        if seen[c.labels[0], c.fold] < cap:
            seen[c.labels[0], c.fold] += 1
            keep.append(c.id)
    return m.filter(lambda c: c.id in set(keep))


def _plan(manifest, cache, overrides, device_data):
    recipe = load_recipe(
        "esc50-lh" if "view.kind=x" not in overrides else "esc50-x",
        [
            "features.n_mels=32",
            "training.batch_size=4",
            f"training.device_data={device_data}",
            *[o for o in overrides if o != "view.kind=x"],
        ],
    )
    store, _ = extract_features(manifest, recipe, cache_dir=cache, progress=False, shard="all")
    return FoldSet.build(manifest, recipe, store).loaders(0), recipe, store


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # per sample over the window
        ["view.normalize_over=sound"],
        ["view.normalization=global", "view.normalize_over=sound"],
        ["view.normalization=per_feature"],
    ],
)
def test_lh_batches_on_the_device_are_the_streaming_batches(clips, tmp_path, overrides):
    streaming, _, _ = _plan(clips, tmp_path, overrides, "off")
    device, _, _ = _plan(clips, tmp_path, overrides, "on")
    assert device.on_device and not streaming.on_device
    assert isinstance(device.train, DeviceTrainBatches) and len(device.train) == len(streaming.train)
    assert device.val.host is device.oof.host, "validation and out-of-fold share one copy of the fold"
    for _ in range(2):  # two epochs: each draws a new balanced epoch, the same in both
        pairs = list(zip(streaming.train, device.train, strict=True))
        for (xs, ys, es, ts), (xd, yd, ed, td) in pairs:
            assert xd.shape == xs.shape and xd.dtype == torch.float32
            torch.testing.assert_close(xd, xs, rtol=1e-5, atol=1e-5)
            assert torch.equal(yd, ys) and torch.equal(ed, es) and torch.equal(td, ts)
    for loader in ("val", "oof"):
        for (xs, os_, ys), (xd, od, yd) in zip(getattr(streaming, loader), getattr(device, loader), strict=True):
            torch.testing.assert_close(xd, xs, rtol=1e-5, atol=1e-5)
            assert torch.equal(od, os_) and torch.equal(yd, ys)


def test_the_device_batches_carry_each_clips_verified_flag_as_the_streaming_ones(clips, tmp_path):
    import dataclasses

    verified = {c.id: i % 3 == 0 for i, c in enumerate(clips)}  # noise strategies read this per sample
    flagged = clips.map(lambda c: dataclasses.replace(c, manually_verified=verified[c.id]))
    streaming, _, _ = _plan(flagged, tmp_path, [], "off")
    device, _, _ = _plan(flagged, tmp_path, [], "on")
    drawn = []
    for (_, ys, _, ts), (_, yd, _, td) in zip(streaming.train, device.train, strict=True):
        assert torch.equal(yd, ys) and torch.equal(td, ts)
        drawn.append(td)
    drawn = torch.cat(drawn)
    assert drawn.any() and not drawn.all(), "both verified and unverified clips were drawn"


def test_an_epoch_on_the_device_draws_every_class_as_oversampling_says(clips, tmp_path):
    device, _, _ = _plan(clips, tmp_path, ["training.batch_size=6"], "on")  # 18 draws: no batch dropped
    labels = Counter()
    for _, y, _, _ in device.train:
        labels.update(y.argmax(dim=1).tolist())
    # fold 2 trains: 6, 4 and 2 clips; oversampling draws each class as often as the largest
    assert sorted(labels.values()) == [6, 6, 6]


def test_x_crops_on_the_device_lie_inside_their_clip_with_its_values(clips, tmp_path):
    _, recipe, store = _plan(clips, tmp_path, ["view.kind=x", "view.duration=1.0"], "on")
    keys = list(store.entries)[:12]
    host = DeviceClips.load(store, keys, recipe)
    chunk = recipe.chunk_frames
    g = torch.Generator().manual_seed(0)
    index = torch.arange(len(keys)).repeat(50)
    starts = host.random_starts(index, g)
    windows = host.windows(starts)
    for i, start, window in zip(index.tolist(), starts.tolist(), windows):
        offset, length = int(host.offsets[i]), int(host.lengths[i])
        assert offset <= start <= offset + length - chunk, "the crop is inside its clip"
        spec = np.asarray(store.get(keys[i]), dtype=np.float32)
        if spec.shape[1] >= chunk:
            local = start - offset
            np.testing.assert_array_equal(window.numpy(), spec[:, local : local + chunk])
    # the crops move: clips with room for 20 or more starts give more than 5 distinct ones in 50 draws
    roomy = [i for i in range(len(keys)) if int(host.lengths[i]) - chunk >= 20]
    assert roomy and all(len(set(starts[index == i].tolist())) > 5 for i in roomy)


def test_x_batches_on_the_device_match_the_streaming_statistics_and_chunks(clips, tmp_path):
    over = ["view.kind=x", "view.duration=1.0"]
    streaming, recipe, _ = _plan(clips, tmp_path, over, "off")
    device, _, _ = _plan(clips, tmp_path, over, "on")
    for loader in ("val", "oof"):  # evaluation chunks are fixed: equal value for value
        for (xs, os_, ys), (xd, od, yd) in zip(getattr(streaming, loader), getattr(device, loader), strict=True):
            torch.testing.assert_close(xd, xs, rtol=1e-5, atol=1e-5)
            assert torch.equal(od, os_) and torch.equal(yd, ys)

    def epoch_stats(loader, epochs=8):
        xs = torch.cat([x for _ in range(epochs) for x, *_ in loader])
        return float(xs.mean()), float(xs.std()), xs.shape[1:]

    (ms, ss, shape_s), (md, sd, shape_d) = epoch_stats(streaming.train), epoch_stats(device.train)
    assert shape_d == shape_s == (1, 32, recipe.chunk_frames)
    # per-feature normalised with the training clips' statistics: mean near 0, std near 1 in both
    assert abs(md - ms) < 0.15 and abs(sd - ss) < 0.1


def test_batched_extents_and_normalisation_match_the_per_view_functions(clips, tmp_path):
    _, recipe, store = _plan(clips, tmp_path, ["view.normalize_over=sound"], "on")
    specs = [np.asarray(store.get(k), dtype=np.float32) for k in list(store.entries)[:6]]
    specs[0][:, :100] = specs[0].min()  # padding-like floors on both sides
    specs[0][:, 200:] = specs[0].min()
    batch = torch.from_numpy(np.stack(specs))
    extents = sound_extents(batch)  # the torch front-end and its NumPy twin find the same sound
    assert extents.tolist() == [list(sound_extent(s)) for s in specs] and extents[0].tolist()[0] >= 100
    for over in ("window", "sound"):
        norm = Normalization("per_sample", over=over)
        one_at_a_time = torch.cat([norm(torch.from_numpy(s)[None]) for s in specs])
        torch.testing.assert_close(norm(batch, extents), one_at_a_time, rtol=1e-5, atol=1e-5)
        start, end = sound_extent(specs[0]) if over == "sound" else (0, specs[0].shape[1])
        stats = specs[0][:, start:end].astype(np.float64)
        by_hand = (specs[0] - stats.mean()) / (stats.std() + 1.0)
        np.testing.assert_allclose(norm(batch)[0].numpy(), by_hand, rtol=1e-4, atol=1e-4)


def test_device_data_auto_follows_the_memory_budget_and_on_off_are_obeyed():
    assert wants_device_data("auto", CPU_BUDGET_BYTES - 1, "cpu")
    assert not wants_device_data("auto", CPU_BUDGET_BYTES + 1, "cpu")
    assert wants_device_data("on", 10**15, "cpu") and not wants_device_data("off", 1, "cpu")
    with pytest.raises(ParameterError, match="device_data"):
        wants_device_data("yes", 1, "cpu")
    with pytest.raises(ParameterError):  # a typo in the recipe is refused by the recipe itself
        load_recipe("esc50-lh", ["training.device_data=gpu"])


def test_features_bytes_counts_the_float16_store_and_the_lh_copy(clips, tmp_path):
    _, recipe, store = _plan(clips, tmp_path, [], "on")
    keys = list(store.entries)
    frames = sum(store.entries[k].frames for k in keys)
    assert features_bytes(store, keys, recipe) == frames * 32 * 6


@pytest.mark.slow
def test_training_on_the_device_gives_the_streaming_runs_predictions(clips, tmp_path, fast):
    """LH batches are equal on both paths and the augmentations share one stream, so a
    seeded CPU run must predict the same out of fold. (Without dropout: a DataLoader draws
    each epoch's worker seed from torch's global stream, which dropout also draws from.)"""
    probs = {}
    for setting in ("off", "on"):
        recipe = load_recipe(
            "esc50-lh",
            [
                *fast,
                "training.model_args={widths: [8, 16], drop_rate: 0.0}",
                "training.augment.specaugment.enabled=true",
                # fp32: bf16 autocast (auto on CPUs with native bf16)
                # rounds the two paths' last-bit differences apart.
                "training.precision=32",
                f"training.device_data={setting}",
            ],
        )
        run = tmp_path / setting
        train(clips, recipe, run, cache_dir=tmp_path / "cache", folds=[0], progress=False)
        probs[setting] = RunDir(run).out_of_fold(partial=True).probs
    assert probs["on"].shape == (len(clips.filter(lambda c: c.fold == 1)), 3)
    np.testing.assert_allclose(probs["on"], probs["off"], atol=1e-5)
