"""Training: splits, balance, augmentations, models, and real runs on ESC-10 clips."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch

from soundtag.errors import DataError, ParameterError
from soundtag.manifest import Clip, Manifest, read_manifest
from soundtag.models import create_model, list_models, register_model
from soundtag.recipe import load_recipe
from soundtag.training import augment, make_folds, train, validation_mask
from soundtag.training.sampling import epoch_indices, oversample_indices
from soundtag.training.splits import label_matrix


def synthetic_manifest(n_groups=60, per_group=3, classes=("a", "b", "c"), multilabel=False, seed=0):
    rng = np.random.default_rng(seed)
    clips = []
    for g in range(n_groups):
        label = classes[g % len(classes)]
        for j in range(per_group):
            labels = (label,) if not multilabel else tuple(sorted({label, classes[rng.integers(len(classes))]}))
            clips.append(
                Clip(
                    id=f"g{g}-{j}",
                    path=f"/nowhere/g{g}-{j}.wav",
                    labels=labels,
                    group=f"g{g}",
                    manually_verified=bool(j % 2),
                )
            )
    return Manifest.build(clips, labels=list(classes), multilabel=multilabel)


# --- splits ---------------------------------------------------------------------------------


def test_given_folds_are_used_as_they_are(esc50_root):
    m = read_manifest(esc50_root)
    folds = make_folds(m, 5)
    assert [int(f) + 1 for f in folds] == [c.fold for c in m]


def test_stratified_group_folds_keep_groups_together_and_balance_classes():
    m = synthetic_manifest()
    folds = make_folds(m, 5, seed=3)
    for group in {c.group for c in m}:
        assert len({f for c, f in zip(m, folds) if c.group == group}) == 1
    per_fold = Counter((f, c.labels[0]) for c, f in zip(m, folds))
    # 20 groups of 3 clips per class over 5 folds: exactly 4 groups (12 clips) of each class per fold.
    assert set(per_fold.values()) == {12}
    assert np.array_equal(folds, make_folds(m, 5, seed=3)), "same seed, same folds"
    assert not np.array_equal(folds, make_folds(m, 5, seed=4))


def test_multilabel_folds_use_iterative_stratification_over_groups():
    m = synthetic_manifest(multilabel=True)
    folds = make_folds(m, 4, seed=0)
    assert set(folds) == {0, 1, 2, 3}
    for group in {c.group for c in m}:
        assert len({f for c, f in zip(m, folds) if c.group == group}) == 1
    y = label_matrix(m)
    share = np.stack([y[folds == k].sum(0) / y.sum(0) for k in range(4)])
    assert np.all(np.abs(share - 0.25) < 0.1)


def test_verified_only_validation_mask():
    m = synthetic_manifest()
    folds = make_folds(m, 5)
    mask = validation_mask(m, folds, 2, verified_only=True)
    assert mask.sum() > 0
    assert all(c.manually_verified and f == 2 for c, f, keep in zip(m, folds, mask) if keep)
    assert mask.sum() < (folds == 2).sum()


def test_fold_strategy_given_requires_folds():
    with pytest.raises(ParameterError, match="fold"):
        make_folds(synthetic_manifest(), 5, strategy="given")


# --- balance --------------------------------------------------------------------------------


def test_oversampling_brings_every_class_to_the_largest_and_keeps_every_clip():
    classes = np.array([0] * 10 + [1] * 3 + [2] * 6)
    idx = oversample_indices(classes, np.random.default_rng(1))
    assert np.bincount(classes[idx]).tolist() == [10, 10, 10]
    assert set(range(len(classes))) <= set(idx.tolist())


def test_balanced_and_none_epochs():
    classes = np.array([0] * 90 + [1] * 10)
    rng = np.random.default_rng(0)
    assert sorted(epoch_indices(classes, "none", rng).tolist()) == list(range(100))
    drawn = classes[epoch_indices(classes, "balanced", rng)]
    assert 35 < (drawn == 1).sum() < 65  # about half instead of a tenth
    with pytest.raises(ParameterError):
        epoch_indices(classes, "smote", rng)


# --- augmentations --------------------------------------------------------------------------


def test_mixup_is_a_convex_combination_of_two_samples_and_their_targets():
    x = torch.arange(6 * 2 * 3, dtype=torch.float32).reshape(6, 1, 2, 3)
    y = torch.eye(6)
    before = x.clone()
    xm, ym = augment.mixup(x, y, alpha=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before), "input left untouched"
    assert torch.allclose(ym.sum(1), torch.ones(6))
    for i in range(6):
        weights = ym[i]
        expected = sum(weights[j] * x[j] for j in range(6))
        assert torch.allclose(xm[i], expected, atol=1e-5)
        assert (weights > 0).sum() <= 2


def test_random_erasing_fills_one_rectangle_of_the_right_area_with_one_value():
    x = torch.randn(8, 1, 40, 60)
    out = augment.random_erasing(
        x, p=1.0, area=(0.02, 0.4), aspect=(0.3, 3.33), generator=torch.Generator().manual_seed(0)
    )
    assert not torch.equal(out, x)
    for i in range(8):
        changed = (out[i] != x[i])[0]
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert 0.02 * 0.5 <= h * w / (40 * 60) <= 0.4 + 0.05
        patch = out[i, 0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert torch.all(patch == patch.flatten()[0])
        assert x.min() <= patch.flatten()[0] <= x.max()
    assert torch.equal(augment.random_erasing(x, p=0.0, generator=torch.Generator().manual_seed(0)), x)


def test_time_shift_rolls_within_limit_and_reverse_flips():
    x = torch.arange(10, dtype=torch.float32).reshape(1, 1, 1, 10).repeat(4, 1, 1, 1)
    shifted = augment.time_shift(x, max_fraction=0.4, generator=torch.Generator().manual_seed(2))
    for row in shifted[:, 0, 0]:
        shift = int((row == 0).nonzero()[0]) % 10
        assert min(shift, 10 - shift) <= 4
        assert sorted(row.tolist()) == list(range(10))
    flipped = augment.time_reverse(x, p=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flipped, x.flip(-1))


def test_spec_augment_masks_bands_with_the_mean():
    x = torch.randn(2, 1, 32, 50)
    out = augment.spec_augment(
        x, time_masks=1, time_width=0.2, freq_masks=1, freq_width=0.2, generator=torch.Generator().manual_seed(5)
    )
    changed = out != x
    assert changed.any()
    for i in range(2):
        assert torch.allclose(out[i][changed[i]], x[i].mean().expand(int(changed[i].sum())))


# --- models ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models() + ["timm:resnet18"])
def test_every_model_trains_a_step(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = torch.randn(3, 1, 64, 101)
    logits = model(x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (3, model.num_features)
    model.reset_classifier(4)
    assert model(x).shape == (3, 4)


@pytest.mark.slow
def test_model_registry_errors():
    with pytest.raises(ParameterError, match="alexnet-kernel"):
        create_model("alexnet-kernal", num_classes=3)
    with pytest.raises(ParameterError, match="already registered"):
        register_model("vgg")(lambda **kw: None)
    with pytest.raises(ParameterError, match="timm:resnet18"):
        create_model("timm:resnet_18", num_classes=3)


def test_model_starts_from_a_local_checkpoint(tmp_path):
    a = create_model("alexnet-kernel", num_classes=5)
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = create_model("alexnet-kernel", num_classes=5, checkpoint=tmp_path / "w.pt")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


# --- real runs on ESC-10 clips --------------------------------------------------------------


@pytest.mark.slow
def test_training_writes_oof_for_every_clip_and_leaves_blacklisted_clips_out(
    esc10_root, tmp_path, write_subset_csv, fast
):
    data = read_manifest(write_subset_csv(esc10_root, tmp_path / "subset.csv"))
    blacklisted = [data[0].id, data[len(data) // 2 + 1].id]
    (tmp_path / "blacklist.csv").write_text("clip_id,reason\n" + "".join(f"{b},noisy\n" for b in blacklisted))
    recipe = load_recipe("esc50-lh", fast + [f"training.blacklist={tmp_path / 'blacklist.csv'}"])
    result = train(data, recipe, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    run = result.run_dir
    assert result.folds_trained == [0, 1]
    for k in (0, 1):
        done = json.loads((run / f"fold-{k}" / "done.json").read_text())
        in_fold = [c for c in data if c.fold == k + 1]
        assert sorted(done["clips"]) == sorted(c.id for c in in_fold)
        trained_on = [c for c in data if c.fold != k + 1 and c.id not in blacklisted]
        assert done["train_clips"] == len(trained_on)
        assert (run / f"fold-{k}" / "best.ckpt").is_file()
    with open(run / "oof.csv", newline="") as fh:
        oof = list(csv.DictReader(fh))
    assert sorted(r["clip_id"] for r in oof) == sorted(data.ids)
    assert {r["clip_id"] for r in oof if r["blacklisted"] == "1"} == set(blacklisted)
    probs = np.array([[float(r[lab]) for lab in data.labels] for r in oof])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["all"]["clips"] == len(data)
    assert metrics["blacklisted"]["clips"] == 2 and metrics["not_blacklisted"]["clips"] == len(data) - 2
    assert (run / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "learning_curves.png").is_file()
    with pytest.raises(ParameterError, match="resume"):
        train(data, recipe, run, cache_dir=tmp_path / "cache", progress=False)


def test_blacklist_naming_an_unknown_clip_is_refused(esc10_root, tmp_path, write_subset_csv, fast):
    data = read_manifest(write_subset_csv(esc10_root, tmp_path / "subset.csv"))
    (tmp_path / "bl.csv").write_text("clip_id\nnot-a-clip.ogg\n")
    recipe = load_recipe("esc50-lh", fast + [f"training.blacklist={tmp_path / 'bl.csv'}"])
    with pytest.raises(DataError, match="not-a-clip.ogg"):
        train(data, recipe, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_resumes_without_redoing_finished_folds(esc10_root, tmp_path, write_subset_csv, fast, stop):
    from soundtag.checkpoints import read_soundtag_checkpoint

    csv_path = write_subset_csv(esc10_root, tmp_path / "subset.csv")
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "soundtag.cli",
        "train",
        "--data",
        str(csv_path),
        "-r",
        "esc50-lh",
        "--out",
        str(run),
        "--cache",
        str(tmp_path / "cache"),
        "--no-progress",
        *sum((["-o", o] for o in fast[1:] + ["training.epochs=40"]), []),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while not (run / "fold-1" / "last.ckpt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.time() < deadline, "fold 1 never started"
        time.sleep(0.05)
    if stop == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:  # to the process alone, as `timeout`, `kill` and a scheduler's preemption send it
        proc.send_signal(signal.SIGTERM)
        said = proc.communicate(timeout=120)[0].decode()
        assert proc.returncode == 128 + signal.SIGTERM, said[-2000:]
        assert "stopped by SIGTERM: fold(s) 0 of" in said and f"soundtag train --resume {run}" in said, said[-2000:]
        assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or ".tmp_" in p.name]
    assert (run / "fold-0" / "done.json").is_file() and not (run / "fold-1" / "done.json").exists()
    for ckpt in run.rglob("*.ckpt"):  # whatever the stop, every checkpoint left is whole
        read_soundtag_checkpoint(ckpt)
    fold0_done = (run / "fold-0" / "done.json").stat().st_mtime_ns

    out = subprocess.run(
        [sys.executable, "-m", "soundtag.cli", "train", "--resume", str(run), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "skipped finished fold(s) [0]" in out.stdout
    assert (run / "fold-0" / "done.json").stat().st_mtime_ns == fold0_done
    done1 = json.loads((run / "fold-1" / "done.json").read_text())
    assert done1["resumed_after_epoch"] is not None and done1["resumed_after_epoch"] >= 1
    assert (run / "metrics.json").is_file()
    # the learning curve keeps the epochs from before the crash
    from soundtag.training.evaluate import _histories

    epochs = _histories(run)["fold-1"]["epoch"].tolist()
    assert epochs == list(range(done1["epochs"])), epochs


# --- metrics --------------------------------------------------------------------------------


def test_metrics_against_hand_computed_values():
    from soundtag import evaluation as ev

    t = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    p = np.array(
        [
            [0.6, 0.3, 0.1],  # rank 1
            [0.5, 0.2, 0.3],  # rank 3
            [0.2, 0.5, 0.3],  # rank 2
            [0.1, 0.2, 0.7],
        ]
    )  # rank 3
    assert ev.map_at_k(t, p, 3) == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 / 3) / 4)
    assert ev.map_at_k(t, p, 1) == pytest.approx(1 / 4)
    assert ev.top1_accuracy(t, p) == pytest.approx(0.25)
    assert ev.log_loss(t, p) == pytest.approx(-(np.log(0.6) + np.log(0.2) + np.log(0.3) + np.log(0.1)) / 4)
    assert ev.per_class_recall(t, p).tolist() == [0.5, 0.0, 0.0]
    assert ev.confusion(t, p).tolist() == [[1, 0, 1], [1, 0, 0], [0, 1, 0]]
    # lwlrap: clip 1 has labels 0 and 2 ranked 2nd and 3rd -> precisions 1/2 and 2/3
    assert ev.lwlrap(np.array([[1, 0, 1]]), np.array([[0.2, 0.9, 0.1]])) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # binary log loss: mean over clips x classes of -log p(true) and -log(1 - p(false))
    assert ev.binary_log_loss(np.array([[1, 0]]), np.array([[0.8, 0.3]])) == pytest.approx(
        -(np.log(0.8) + np.log(0.7)) / 2
    )


@pytest.mark.slow
def test_x_view_and_multilabel_runs_predict_every_clip(esc10_root, tmp_path, write_subset_csv, fast):
    """The X view (chunks averaged per clip, per-feature statistics) and a multi-label manifest
    (sigmoid + BCE, iterative stratification, lwlrap) both go through a whole run."""
    subset = write_subset_csv(esc10_root, tmp_path / "subset.csv")
    rows = list(csv.DictReader(open(subset)))
    for i, row in enumerate(rows):  # every third clip also carries the next class's label
        if i % 3 == 0:
            other = rows[(i + 7) % len(rows)]["labels"]
            row["labels"] = ",".join(sorted({row["labels"], other}))
        del row["fold"]
    ml_csv = tmp_path / "multilabel.csv"
    with open(ml_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "labels"])
        w.writeheader()
        w.writerows(rows)
    data = read_manifest(ml_csv)
    assert data.multilabel
    recipe = load_recipe("esc50-x", fast + ["training.folds=2"])
    result = train(data, recipe, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    metrics = result.metrics
    assert metrics["all"]["clips"] == len(data) and 0 <= metrics["all"]["lwlrap"] <= 1
    with open(tmp_path / "run" / "oof.csv", newline="") as fh:
        probs = np.array([[float(r[lab]) for lab in data.labels] for r in csv.DictReader(fh)])
    assert probs.shape == (len(data), len(data.labels))
    assert np.all((probs >= 0) & (probs <= 1)) and not np.allclose(probs.sum(1), 1)  # sigmoid, not softmax


@pytest.mark.parametrize("alpha", [0.2, 0.4, 1.0, 2.0])
def test_beta_draws_follow_the_beta_distribution(alpha):
    from scipy import stats

    draws = augment.beta(alpha, 20000, torch.Generator().manual_seed(3)).numpy()
    assert ((draws >= 0) & (draws <= 1)).all()
    assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    again = augment.beta(alpha, 20000, torch.Generator().manual_seed(3)).numpy()
    assert np.array_equal(draws, again), "seeded: the same stream twice"


def test_randint_covers_its_inclusive_range_evenly():
    g = torch.Generator().manual_seed(0)
    draws = augment.randint(torch.full((60000,), -2), torch.full((60000,), 3), g)
    counts = torch.bincount(draws + 2, minlength=6)
    assert draws.min() == -2 and draws.max() == 3 and (counts > 9000).all()


def test_freq_shift_moves_whole_spectra_along_mels_and_fills_with_the_floor():
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1).expand(200, 1, 8, 5) + 1.0  # bins hold 1..8

    def shifted(s):  # bin f takes bin f - s; bins with nothing to take get the floor, 1
        return torch.tensor([float(f - s + 1) if 0 <= f - s < 8 else 1.0 for f in range(8)])

    out = augment.freq_shift(x, max_bins=3, generator=torch.Generator().manual_seed(0))
    seen = []
    for row in out[:, 0, :, 0]:
        matches = [s for s in range(-3, 4) if torch.equal(row, shifted(s))]
        assert len(matches) == 1, f"{row.tolist()} is no shift of at most 3 bins"
        seen += matches
    assert set(seen) == set(range(-3, 4)), "every shift within the limit occurs"
    assert torch.equal(out[..., 0], out[..., 4]), "all frames move together"
