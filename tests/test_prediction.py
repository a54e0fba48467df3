"""Prediction: geometric means, blend weights fitted on out-of-fold predictions only,
submissions against the real FSDKaggle2018 labels, odd input files, and ONNX parity.

Expected values come from arithmetic done here (logs, roots, means), from the real
``train.csv``, or from a second, independent path through the models (the PyTorch engine
against ONNX Runtime, a manual fold ensemble against ``predict_dataset``); never from
running the code under test and copying its output.

Two tiny real runs (LH and X, two folds, four ESC-10 classes) are trained once per module.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import soxr

from soundtag import evaluation
from soundtag.errors import DataError, ParameterError
from soundtag.features import clip_key, eval_chunks, extract_features
from soundtag.inference.clips import predict_out_of_fold
from soundtag.inference.combine import EPS, clip_means
from soundtag.manifest import read_manifest
from soundtag.manifest.readers import FSDKAGGLE2018_LABELS
from soundtag.prediction import (
    Predictions,
    combine_folds,
    ensemble_runs,
    export_onnx,
    fit_blend_weights,
    geometric_mean,
    load_run,
    load_tagger,
    predict_dataset,
    read_predictions,
    tag_files,
    write_submission,
)
from soundtag.prediction.combine import blend_loss
from soundtag.prediction.ensemble import load_oof_predictions
from soundtag.prediction.tagger import read_onnx_metadata
from soundtag.recipe import load_recipe
from soundtag.runs import RunDir
from soundtag.training import train

REPO = Path(__file__).resolve().parents[1]
#: A higher learning rate than the tiny runs' default (``fast``), so that two epochs already make the models
#: depend on their input by far more than the 1e-4 parity tolerance (checked below).
LEARN = ["training.lr=0.01"]
ONNX_TOL = 1e-4


def _flat(text: str) -> str:
    return "".join(text.split())


def _copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run (checkpoints and out-of-fold files), without predictions."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("predictions", "*.onnx", "tb", "logs", "*.png"))
    return dest


# --- fixtures: two real runs, their ONNX exports, odd files -----------------------------------


@pytest.fixture(scope="module")
def runs(esc10_root, tmp_path_factory, write_subset_csv, fast) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("prediction-runs")
    subset = write_subset_csv(esc10_root, root / "subset.csv")
    data = read_manifest(subset)
    cache = root / "cache"
    out = {}
    for kind in ("lh", "x"):
        recipe = load_recipe(f"esc50-{kind}", fast + LEARN)
        out[kind] = train(data, recipe, root / kind, cache_dir=cache, progress=False).run_dir
    return SimpleNamespace(root=root, subset=subset, data=data, cache=cache, lh=out["lh"], x=out["x"])


@pytest.fixture(scope="module")
def onnx_models(runs) -> dict[str, Path]:
    return {kind: export_onnx(getattr(runs, kind), runs.root / f"{kind}.onnx") for kind in ("lh", "x")}


@pytest.fixture(scope="module")
def odd(esc10_root, tmp_path_factory) -> SimpleNamespace:
    """Odd inputs made from real ESC-10 audio, and bad files."""
    folder = tmp_path_factory.mktemp("odd")
    audio = esc10_root / "audio"
    source = audio / "001 - Dog bark/1-100032-A.ogg"
    x, sr = sf.read(source, dtype="float32")
    assert x.ndim == 1 and sr == 44100
    f = SimpleNamespace(folder=folder, source=source)

    f.stereo = folder / "stereo.wav"  # two identical channels, float: down-mixes to x exactly
    sf.write(f.stereo, np.stack([x, x], axis=1), sr, subtype="FLOAT")
    f.flac8k = folder / "low.flac"
    sf.write(f.flac8k, soxr.resample(x, sr, 8000), 8000, subtype="PCM_16")
    f.short = folder / "short.wav"  # 0.1 s around the loudest sample
    peak = int(np.argmax(np.abs(x)))
    start = max(0, min(peak - sr // 20, len(x) - sr // 10))
    sf.write(f.short, x[start : start + sr // 10], sr)
    pieces, total = [], 0
    for p in sorted(audio.glob("*/*.ogg"))[::37]:  # real clips of several classes, 40 s in all
        y, r = sf.read(p, dtype="float32")
        assert r == sr
        pieces.append(y)
        total += len(y)
        if total >= 40 * sr:
            break
    f.long = folder / "long.wav"
    sf.write(f.long, np.concatenate(pieces)[: 40 * sr], sr)
    f.silent = folder / "silent.wav"
    sf.write(f.silent, np.zeros(2 * 16000, dtype=np.float32), 16000)
    f.corrupt = folder / "corrupt.wav"
    f.corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    f.empty = folder / "empty.wav"
    f.empty.write_bytes(b"")
    f.missing = folder / "not-there.wav"
    f.batch = folder / "batch"  # a folder: two good files, a bad one, a text file
    (f.batch / "sub").mkdir(parents=True)
    shutil.copy(f.short, f.batch / "a_short.wav")
    shutil.copy(f.flac8k, f.batch / "sub" / "b_low.flac")
    shutil.copy(f.corrupt, f.batch / "c_bad.wav")
    (f.batch / "notes.txt").write_text("not audio\n")
    return f


# --- geometric mean and fold combination ------------------------------------------------------


def test_geometric_mean_is_the_renormalised_exp_of_weighted_mean_logs():
    p1, p2 = [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]
    w = [0.25, 0.75]
    raw = [math.pow(a, 0.25) * math.pow(b, 0.75) for a, b in zip(p1, p2)]
    expected = [r / sum(raw) for r in raw]
    got = geometric_mean(np.array([[p1], [p2]]), weights=np.array(w))
    assert got.shape == (1, 3)
    assert np.allclose(got[0], expected, rtol=0, atol=1e-12)
    # equal weights by default: the square root of the product, renormalised
    raw = [math.sqrt(a * b) for a, b in zip(p1, p2)]
    assert np.allclose(geometric_mean(np.array([[p1], [p2]]))[0], [r / sum(raw) for r in raw], atol=1e-12)
    # along another axis: (clips, models, classes)
    assert np.allclose(geometric_mean(np.array([[p1, p2]]), weights=np.array(w), axis=1)[0], expected, atol=1e-12)
    # a zero in one model is clipped to EPS, not a veto
    vetoed = geometric_mean(np.array([[[1.0, 0.0]], [[0.5, 0.5]]]))[0]
    assert np.isfinite(vetoed).all() and vetoed[1] > 0
    assert vetoed[1] / vetoed[0] == pytest.approx(math.sqrt(EPS * 0.5) / math.sqrt(1.0 * 0.5), rel=1e-9)


def test_identical_models_leave_a_distribution_unchanged_unlike_the_old_product():
    p = np.array([[0.6, 0.3, 0.1], [0.25, 0.25, 0.5]])
    stack = np.stack([p, p, p])
    assert np.allclose(geometric_mean(stack), p, atol=1e-12)
    old = stack.prod(axis=0)  # the kernel's product without the root
    old = old / old.sum(axis=1, keepdims=True)
    assert not np.allclose(old, p, atol=1e-2)
    assert (old.max(axis=1) > p.max(axis=1) + 0.1).all(), "the product sharpens; the root does not"
    assert old[0, 0] == pytest.approx(0.216 / (0.216 + 0.027 + 0.001))


@pytest.mark.parametrize("weights", [[0.5, 0.6], [1.2, -0.2], [0.5, 0.25, 0.25], [0.3, 0.3]])
def test_weights_must_be_non_negative_and_sum_to_one(weights):
    probs = np.full((2, 1, 3), 1 / 3)
    with pytest.raises(ParameterError, match="weights"):
        geometric_mean(probs, weights=np.array(weights))


def test_multilabel_keeps_each_class_unnormalised():
    a, b = np.array([[0.9, 0.5]]), np.array([[0.4, 0.2]])
    got = geometric_mean(np.stack([a, b]), multilabel=True)
    assert np.allclose(got, [[0.6, math.sqrt(0.1)]], atol=1e-12)
    assert got.sum() != pytest.approx(1.0)
    single = geometric_mean(np.stack([a, b]))
    assert np.allclose(single, [[0.6 / (0.6 + math.sqrt(0.1)), math.sqrt(0.1) / (0.6 + math.sqrt(0.1))]])


def test_combine_folds_means_chunks_per_clip_then_takes_the_geometric_mean_of_folds():
    # 6 chunks of 3 clips, in mixed order: clip 0 has 3 chunks, clip 1 one, clip 2 two.
    owner = np.array([0, 1, 0, 2, 0, 2])
    fold_a = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.6, 0.2, 0.2], [0.4, 0.2, 0.4]]
    )
    fold_b = np.array(
        [[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.7, 0.1, 0.2], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1], [0.2, 0.3, 0.5]]
    )
    means_a = [
        [(0.7 + 0.5 + 0.6) / 3, (0.2 + 0.4 + 0.2) / 3, (0.1 + 0.1 + 0.2) / 3],
        [0.1, 0.8, 0.1],
        [(0.2 + 0.4) / 2, (0.2 + 0.2) / 2, (0.6 + 0.4) / 2],
    ]
    means_b = [
        [(0.5 + 0.7 + 0.3) / 3, (0.4 + 0.1 + 0.6) / 3, (0.1 + 0.2 + 0.1) / 3],
        [0.3, 0.3, 0.4],
        [(0.1 + 0.2) / 2, (0.1 + 0.3) / 2, (0.8 + 0.5) / 2],
    ]
    expected = []
    for ra, rb in zip(means_a, means_b):
        raw = [math.sqrt(x * y) for x, y in zip(ra, rb)]
        expected.append([r / sum(raw) for r in raw])
    got = combine_folds(np.stack([fold_a, fold_b]), owner, 3)
    assert got.shape == (3, 3)
    assert np.allclose(got, expected, atol=1e-12)
    assert np.allclose(clip_means(fold_a, owner, 3), means_a, atol=1e-12)
    with pytest.raises(ParameterError, match="no chunk"):
        clip_means(fold_a, owner, 4)  # clip 3 has no chunk


# --- blend weights ----------------------------------------------------------------------------


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fit_blend_weights_gives_a_calibrated_run_the_weight_over_random_ones():
    rng = np.random.default_rng(0)
    n, k = 600, 6
    good = _softmax(2.5 * rng.normal(size=(n, k)))
    y = np.array([rng.choice(k, p=p) for p in good])  # labels drawn from good: it is calibrated
    targets = np.eye(k)[y]
    random = rng.dirichlet(np.ones(k), size=n)
    anti = _softmax(-4 * targets + rng.normal(size=(n, k)))  # confidently wrong

    w = fit_blend_weights(targets, np.stack([random, good]))
    assert w.shape == (2,) and (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w[1] > 0.95, w
    loss = blend_loss(targets, np.stack([random, good]), w, multilabel=False)
    for other in ([0.5, 0.5], [0.0, 1.0], [1.0, 0.0], [0.1, 0.9]):
        assert loss <= blend_loss(targets, np.stack([random, good]), np.array(other), multilabel=False) + 1e-9

    w3 = fit_blend_weights(targets, np.stack([good, anti, random]))
    assert (w3 >= 0).all() and w3.sum() == pytest.approx(1.0, abs=1e-12)
    assert w3[1] < 1e-3 and w3[0] > 0.9, w3  # would want a negative weight: held at zero

    # multi-label: independent sigmoids
    ml = 1 / (1 + np.exp(-2.5 * rng.normal(size=(n, k))))
    ml_targets = (rng.random((n, k)) < ml).astype(float)
    wm = fit_blend_weights(ml_targets, np.stack([rng.random((n, k)), ml]), multilabel=True)
    assert (wm >= 0).all() and wm.sum() == pytest.approx(1.0) and wm[1] > 0.95, wm

    assert fit_blend_weights(targets, good[None]).tolist() == [1.0]
    with pytest.raises(ParameterError, match="do not match"):
        fit_blend_weights(targets[:10], np.stack([good, random]))


def _garbage_test_predictions(
    run: Path, labels: list[str], ids: list[str], given: list[str], right: bool, seed: int
) -> np.ndarray:
    """Write ``run/predictions/test.csv``: confidently right (or wrong) about ``given``;
    columns in reversed label order and rows shuffled, so the blend must align them."""
    rng = np.random.default_rng(seed)
    k = len(labels)
    y = np.array([labels.index(g) for g in given])
    hit = np.eye(k)[y if right else (y + 1) % k]
    probs = _softmax(5 * hit + rng.normal(size=(len(ids), k)))
    order = rng.permutation(len(ids))
    cols = list(reversed(range(k)))
    Predictions(
        [ids[i] for i in order], [labels[c] for c in cols], probs[order][:, cols], [(given[i],) for i in order]
    ).write_csv(run / "predictions" / "test.csv")
    return probs  # in ``ids`` order, ``labels`` columns


def _oof(run: Path, ids: list[str], labels: list[str]) -> np.ndarray:
    """A run's out-of-fold probabilities (as ensembling reads them), in the given clip and label order."""
    pred, _ = load_oof_predictions(run)
    pred = pred.reorder(labels)
    return pred.probs[[pred.ids.index(c) for c in ids]]


@pytest.mark.slow
def test_ensemble_weights_come_from_oof_only_and_blend_the_test_predictions(runs, tmp_path, esc10_root, soundtag_main):
    a, b = _copy_run(runs.lh, tmp_path / "a"), _copy_run(runs.x, tmp_path / "b")
    first = ensemble_runs([a, b], tmp_path / "e1")
    w = first.weights
    assert w.shape == (2,) and (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
    assert first.fitted_on == len(runs.data) and first.predictions == []
    info = json.loads((tmp_path / "e1" / "ensemble.json").read_text())
    assert [r["weight"] for r in info["runs"]] == pytest.approx(w.tolist(), abs=1e-12)
    assert info["blend"]["fitted_clips"] == len(runs.data)
    # the blended oof.csv is the weighted geometric mean of the runs' out-of-fold predictions
    blend = read_predictions(tmp_path / "e1" / "oof.csv")
    labels, ids = blend.labels, blend.ids
    assert sorted(ids) == sorted(runs.data.ids)
    stack = np.stack([_oof(a, ids, labels), _oof(b, ids, labels)])
    assert np.allclose(blend.probs, geometric_mean(stack, weights=w), atol=1e-6)
    targets = np.array([[lab in runs.data[runs.data.ids.index(c)].labels for lab in labels] for c in ids], float)
    assert np.allclose(w, fit_blend_weights(targets, stack), atol=1e-6)
    # Beside it, the blend that fits nothing: equal weights, scored on the same clips.
    equal = evaluation.summarize(targets, geometric_mean(stack))
    assert first.equal_weight_metrics["top1"] == pytest.approx(equal["top1"])
    assert info["blend"]["equal_weights_oof"]["log_loss"] == pytest.approx(equal["log_loss"], rel=1e-6)

    # Test predictions that reward the run with less weight: fitting on them would move the weights.
    test_ids = [f"test-{i:03d}.wav" for i in range(30)]
    given = [labels[i % len(labels)] for i in range(30)]
    favoured = int(np.argmin(w))
    pa = _garbage_test_predictions(a, labels, test_ids, given, right=favoured == 0, seed=1)
    pb = _garbage_test_predictions(b, labels, test_ids, given, right=favoured == 1, seed=2)
    second = ensemble_runs([a, b], tmp_path / "e2")
    assert np.allclose(second.weights, w, atol=1e-12), "test predictions must not move the weights"
    assert [p.name for p in second.predictions] == ["test.csv"]
    blended = read_predictions(tmp_path / "e2" / "predictions" / "test.csv").reorder(labels)
    assert sorted(blended.ids) == sorted(test_ids)
    row = [blended.ids.index(c) for c in test_ids]
    assert np.allclose(blended.probs[row], geometric_mean(np.stack([pa, pb]), weights=w), atol=1e-6)
    # ... whereas weights fitted on these test predictions would have been very different
    test_fit = fit_blend_weights(np.eye(len(labels))[[labels.index(g) for g in given]], np.stack([pa, pb]))
    assert abs(test_fit[favoured] - w[favoured]) > 0.2

    # The ensemble directory tags like a run: the weighted geometric mean of its members.
    clip = esc10_root / "audio" / "002 - Rain" / "1-17367-A.ogg"
    ens = load_tagger(tmp_path / "e2")
    members = [load_tagger(r).tag(clip).probs for r in (a, b)]
    assert np.allclose(ens.tag(clip).probs, geometric_mean(np.stack(members), weights=w), atol=1e-9)
    with pytest.raises(ParameterError, match="timeline"):
        ens.tag(clip, timeline=True)

    # the CLI writes the same ensemble
    code, out, err = soundtag_main("ensemble", a, b, "--out", tmp_path / "e3")
    assert code == 0, out + err
    cli_info = json.loads((tmp_path / "e3" / "ensemble.json").read_text())
    assert [r["weight"] for r in cli_info["runs"]] == pytest.approx(w.tolist(), abs=1e-12)
    assert cli_info["predictions"] == ["test.csv"]
    with pytest.raises(ParameterError, match="two runs"):
        ensemble_runs([a], tmp_path / "e4")


def _set_in_training(run: Path, left_out: set[str]) -> None:
    with open(run / "folds.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if r["clip_id"] in left_out:
            r["in_training"] = "False"
    with open(run / "folds.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=["clip_id", "fold", "in_training"])
        wr.writeheader()
        wr.writerows(rows)


@pytest.mark.slow
def test_ensemble_leaves_blacklisted_clips_out_of_the_fit(runs, tmp_path):
    copies = [_copy_run(runs.lh, tmp_path / "a"), _copy_run(runs.x, tmp_path / "b")]
    ids = runs.data.ids
    labels = list(runs.data.labels)
    targets = np.array([[lab in c.labels for lab in labels] for c in runs.data], float)
    before = fit_blend_weights(targets, np.stack([_oof(r, ids, labels) for r in copies]))
    # The run with more weight is made confidently wrong on 7 clips it did not train on:
    # counted, they would pull its weight down. The other run leaves one more clip out.
    hit = int(np.argmax(before))
    left_out = [set(), set()]
    left_out[hit], left_out[1 - hit] = set(ids[1:40:6]), {ids[0]}
    for run, out in zip(copies, left_out):
        _set_in_training(run, out)
    k = len(labels)
    for done in sorted(copies[hit].glob("fold-*/done.json")):
        clips = json.loads(done.read_text())["clips"]
        oof = np.load(done.parent / "oof.npy")
        for i, c in enumerate(clips):
            if c in left_out[hit]:
                wrong = (labels.index(runs.data[ids.index(c)].labels[0]) + 1) % k
                oof[i] = np.eye(k)[wrong] * (1 - k * 1e-3) + 1e-3
        np.save(done.parent / "oof.npy", oof)

    result = ensemble_runs(copies, tmp_path / "e")
    left = left_out[0] | left_out[1]
    assert result.fitted_on == len(ids) - len(left) == len(ids) - 8
    assert json.loads((tmp_path / "e" / "ensemble.json").read_text())["blend"]["fitted_clips"] == len(ids) - 8

    stack = np.stack([_oof(r, ids, labels) for r in copies])
    keep = np.array([c not in left for c in ids])
    by_hand = fit_blend_weights(targets[keep], stack[:, keep])
    assert np.allclose(result.weights, by_hand, atol=1e-6)
    all_clips = fit_blend_weights(targets, stack)
    assert all_clips[hit] < result.weights[hit] - 0.05, "the left-out clips would have mattered"


# --- submissions against the real FSDKaggle2018 labels ----------------------------------------


@pytest.fixture(scope="module")
def fsd_train(fsd2018_root) -> list[dict]:
    path = fsd2018_root / "train.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["label"] for r in rows} == set(FSDKAGGLE2018_LABELS)
    return rows


@pytest.fixture
def fsd_test(fsd_train, tmp_path) -> SimpleNamespace:
    """300 real train.csv clips as a pretend test set, random probabilities, a shuffled sample."""
    rng = np.random.default_rng(7)
    rows = [fsd_train[i] for i in rng.choice(len(fsd_train), 300, replace=False)]
    labels = [str(x) for x in rng.permutation(FSDKAGGLE2018_LABELS)]  # not the vocabulary's order
    probs = rng.dirichlet(np.full(len(labels), 0.3), size=len(rows))
    preds = Predictions([r["fname"] for r in rows], labels, probs, [()] * len(rows))
    order = [rows[i]["fname"] for i in rng.permutation(len(rows))]
    sample = tmp_path / "sample_submission.csv"
    with open(sample, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["fname", "label"])
        w.writerows([f, "Laughter Hi-hat Flute"] for f in order)
    return SimpleNamespace(
        rows=rows,
        labels=labels,
        probs=probs,
        preds=preds,
        order=order,
        sample=sample,
        truth={r["fname"]: r["label"] for r in rows},
    )


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_kaggle_submission_follows_the_sample_and_names_the_three_best_labels(fsd_test, fsd_train, tmp_path):
    out = write_submission(fsd_test.preds, tmp_path / "sub.csv", fmt="kaggle", sample_submission=fsd_test.sample)
    header, rows = _read_rows(out)
    assert header == ["fname", "label"]
    assert [r[0] for r in rows] == fsd_test.order
    vocabulary = {r["label"] for r in fsd_train}
    row_of = {c: i for i, c in enumerate(fsd_test.preds.ids)}
    score = 0.0
    for fname, cell in rows:
        top3 = cell.split(" ")
        assert len(top3) == 3 and len(set(top3)) == 3 and set(top3) <= vocabulary, cell
        probs = fsd_test.probs[row_of[fname]]
        assert top3 == [fsd_test.labels[i] for i in np.argsort(-probs)[:3]]
        assert probs[fsd_test.labels.index(top3[0])] == probs.max()
        truth = fsd_test.truth[fname]
        score += 1 / (top3.index(truth) + 1) if truth in top3 else 0.0
    # MAP@3 of the file against the real labels is the one evaluation computes from the probabilities
    targets = np.array([[lab == fsd_test.truth[c] for lab in fsd_test.labels] for c in fsd_test.preds.ids], float)
    assert score / len(rows) == pytest.approx(evaluation.map_at_k(targets, fsd_test.probs, 3))


def test_a_clip_without_prediction_is_an_error_and_nothing_is_written(fsd_test, tmp_path):
    dropped = fsd_test.order[17]
    keep = [i for i, c in enumerate(fsd_test.preds.ids) if c != dropped]
    partial = Predictions(
        [fsd_test.preds.ids[i] for i in keep], fsd_test.labels, fsd_test.probs[keep], [()] * len(keep)
    )
    out = tmp_path / "sub.csv"
    with pytest.raises(DataError, match=dropped):
        write_submission(partial, out, fmt="kaggle", sample_submission=fsd_test.sample)
    assert not out.exists()
    with pytest.raises(ParameterError, match="format"):
        write_submission(fsd_test.preds, out, fmt="csv")
    assert not out.exists()


def test_multilabel_submission_has_a_probability_column_per_label(fsd_test, tmp_path):
    out = write_submission(
        fsd_test.preds, tmp_path / "ml.csv", fmt="kaggle-multilabel", sample_submission=fsd_test.sample
    )
    header, rows = _read_rows(out)
    assert header == ["fname", *fsd_test.labels] and len(header) == 42
    assert [r[0] for r in rows] == fsd_test.order
    row_of = {c: i for i, c in enumerate(fsd_test.preds.ids)}
    got = np.array([[float(x) for x in r[1:]] for r in rows])
    assert np.allclose(got, fsd_test.probs[[row_of[r[0]] for r in rows]], atol=6e-7)
    # multi-label predictions default to this format, in their own order without a sample
    ml = Predictions(fsd_test.preds.ids, fsd_test.labels, fsd_test.probs, [()] * 300, multilabel=True)
    header, rows = _read_rows(write_submission(ml, tmp_path / "ml2.csv"))
    assert len(header) == 42 and [r[0] for r in rows] == fsd_test.preds.ids


def test_labels_with_spaces_become_one_word_in_the_kaggle_format(tmp_path):
    preds = Predictions(["a.wav"], ["Dog bark", "Rain", "Sea waves", "Baby cry"], [[0.1, 0.2, 0.3, 0.4]], [()])
    _, rows = _read_rows(write_submission(preds, tmp_path / "s.csv"))
    assert rows == [["a.wav", "Baby_cry Sea_waves Rain"]]


def test_submit_cli_round_trip(fsd_test, tmp_path, soundtag_main):
    pred_csv = fsd_test.preds.write_csv(tmp_path / "test-predictions.csv")
    direct = write_submission(fsd_test.preds, tmp_path / "direct.csv", fmt="kaggle", sample_submission=fsd_test.sample)
    out = tmp_path / "cli.csv"
    code, stdout, stderr = soundtag_main("submit", pred_csv, "--sample-submission", fsd_test.sample, "--out", out)
    assert code == 0, stdout + stderr
    assert out.read_text() == direct.read_text()
    assert "kaggleformat" in _flat(stdout)

    partial = Predictions(fsd_test.preds.ids[1:], fsd_test.labels, fsd_test.probs[1:], [()] * 299)
    partial_csv = partial.write_csv(tmp_path / "partial.csv")
    bad_out = tmp_path / "bad.csv"
    code, stdout, stderr = soundtag_main(
        "submit", partial_csv, "--sample-submission", fsd_test.sample, "--out", bad_out
    )
    assert code == 2 and "Traceback" not in stderr  # a message naming the clip, not an exception
    assert fsd_test.preds.ids[0] in _flat(stderr)
    assert not bad_out.exists()


# --- odd input files --------------------------------------------------------------------------


@pytest.mark.slow
def test_odd_files_are_tagged_and_bad_ones_reported_one_by_one(runs, odd):
    tagger = load_tagger(runs.lh)
    inputs = [odd.stereo, odd.corrupt, odd.flac8k, odd.empty, odd.short, odd.missing, odd.silent, odd.batch]
    seen = []
    results, failures = tag_files(tagger, inputs, on_result=seen.append)
    batch_good = [odd.batch / "a_short.wav", odd.batch / "sub" / "b_low.flac"]
    good = [odd.stereo, odd.flac8k, odd.short, odd.silent, *batch_good]
    bad = [odd.corrupt, odd.empty, odd.missing, odd.batch / "c_bad.wav"]
    assert [r.path for r in results] == [str(p) for p in good]
    assert [f.path for f in failures] == [str(p) for p in bad]
    expected_order = [
        odd.stereo,
        odd.corrupt,
        odd.flac8k,
        odd.empty,
        odd.short,
        odd.missing,
        odd.silent,
        odd.batch / "a_short.wav",
        odd.batch / "c_bad.wav",
        odd.batch / "sub" / "b_low.flac",
    ]
    assert [item.path for item in seen] == [str(p) for p in expected_order], "notes.txt is not audio"
    for r in results:
        assert r.probs.shape == (len(tagger.labels),) and np.isfinite(r.probs).all()
        assert (r.probs >= 0).all() and r.probs.sum() == pytest.approx(1.0, abs=1e-6)
    for f in failures:
        assert str(f.path) in f.message
    by_path = {r.path: r for r in results}
    assert "down-mixed 2 channels" in by_path[str(odd.stereo)].notes
    assert "resampled 8000->16000 Hz" in by_path[str(odd.flac8k)].notes
    assert "silent" in by_path[str(odd.silent)].notes
    # two identical float channels down-mix to the original samples: the same tags as the source
    assert np.allclose(by_path[str(odd.stereo)].probs, tagger.tag(odd.source).probs, atol=1e-6)
    # the same files in a folder get the same tags
    assert np.allclose(by_path[str(batch_good[0])].probs, by_path[str(odd.short)].probs, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lh", "x"])
def test_timeline_windows_cover_a_long_file(runs, odd, kind):
    tagger = load_tagger(getattr(runs, kind))
    view = tagger.recipe.view
    duration = sf.info(odd.long).duration
    assert duration == pytest.approx(40.0)
    result = tagger.tag(odd.long, timeline=True)
    starts = np.array([s for s, _, _ in result.timeline])
    ends = np.array([e for _, e, _ in result.timeline])
    step = view.duration * (1 - view.overlap)
    assert len(starts) >= math.floor((duration - view.duration) / step) + 1
    assert starts[0] == 0.0 and (np.diff(starts) > 0).all()
    assert (ends > starts).all() and (ends <= duration + 1e-9).all()
    assert np.allclose(ends - starts, view.duration, atol=0.021)  # one hop of rounding
    assert (starts[1:] <= ends[:-1]).all(), "no gap between windows"
    # a window every step (within a hop of rounding); the last one may be aligned to the end
    assert np.allclose(np.diff(starts)[:-1], step, atol=0.021) and np.diff(starts)[-1] <= step + 0.021
    # the last window reaches the end of the file (to a frame or two), even past a tail shorter
    # than the view's min_tail (40 s with X: 2 s windows every 1.8 s leave 0.2 s after the 22nd)
    hop = tagger.recipe.features.hop_length / tagger.recipe.audio.sample_rate
    assert ends[-1] >= duration - 2 * hop
    for _, _, p in result.timeline:
        assert p.sum() == pytest.approx(1.0, abs=1e-6)
    # windows see different audio (several classes were concatenated)
    assert np.ptp(np.stack([p for _, _, p in result.timeline]), axis=0).max() > 1e-3
    short = tagger.tag(odd.short, timeline=True).timeline
    assert len(short) == 1 and short[0][0] == 0.0
    assert short[0][1] == pytest.approx(sf.info(odd.short).duration, abs=1e-6)


@pytest.mark.slow
def test_tag_cli_prints_the_good_files_and_exits_1_for_the_bad(runs, odd, soundtag_main):
    args = [
        "tag",
        str(runs.lh),
        str(odd.stereo),
        str(odd.corrupt),
        str(odd.short),
        str(odd.missing),
        "--format",
        "json",
        "--top",
        "4",
    ]
    code, stdout, stderr = soundtag_main(*args)
    assert code == 1, stdout + stderr
    out = json.loads(stdout)
    assert [item["file"] for item in out] == [str(odd.stereo), str(odd.short)]
    tagger = load_tagger(runs.lh)
    for item in out:
        scores = {t["label"]: t["score"] for t in item["tags"]}
        assert sorted(scores) == sorted(tagger.labels)
        expected = tagger.tag(item["file"]).probs
        assert np.allclose([scores[lab] for lab in tagger.labels], expected, atol=1.5e-6)
        assert [t["score"] for t in item["tags"]] == sorted(scores.values(), reverse=True)
    err = _flat(stderr)
    assert _flat(str(odd.corrupt)) in err and _flat(str(odd.missing)) in err
    assert "2of4file(s)couldnotbetagged" in err

    # CSV timeline to a file
    out_csv = odd.folder / "timeline.csv"
    code, stdout, stderr = soundtag_main(
        "tag", runs.x, odd.long, "--timeline", "--format", "csv", "--top", "2", "--out", out_csv
    )
    assert code == 0, stdout + stderr
    header, rows = _read_rows(out_csv)
    assert header == ["file", "start", "end", "rank", "label", "score"]
    windows = load_tagger(runs.x).tag(odd.long, timeline=True).timeline
    assert len(rows) == 2 * len(windows)
    assert [float(r[1]) for r in rows[::2]] == pytest.approx([s for s, _, _ in windows], abs=0.0051)


@pytest.mark.slow
def test_tagger_threads_apply_while_tagging_and_leave_the_process_as_it_was(runs, odd, monkeypatch):
    import torch

    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    seen = []
    stft = torch.stft

    def spy(*args, **kwargs):  # the log-mel's STFT: record the thread count it runs with
        seen.append(torch.get_num_threads())
        return stft(*args, **kwargs)

    monkeypatch.setattr(torch, "stft", spy)
    tagger = load_tagger(runs.lh, threads=want)
    assert torch.get_num_threads() == before, "load_tagger changed the process's thread count"
    result = tagger.tag(odd.short, timeline=True)
    assert torch.get_num_threads() == before, "tag changed the process's thread count"
    assert seen and set(seen) == {want}
    plain = load_tagger(runs.lh).tag(odd.short, timeline=True)
    assert np.allclose(result.probs, plain.probs, atol=1e-6)
    assert set(seen) == {want, before}, "a tagger without threads= uses the process's setting"
    assert torch.get_num_threads() == before


# --- ONNX export and parity -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lh", "x"])
def test_onnx_and_torch_engines_agree_on_real_clips(runs, onnx_models, odd, kind):
    run = getattr(runs, kind)
    torch_tagger, onnx_tagger = load_tagger(run), load_tagger(onnx_models[kind])
    assert (torch_tagger.engine, onnx_tagger.engine) == ("torch", "onnx")
    assert onnx_tagger.labels == torch_tagger.labels == load_run(run).labels
    clips = [Path(c.path) for c in runs.data][::5]
    assert len(clips) >= 6
    files = clips + [odd.stereo, odd.flac8k, odd.short, odd.silent, odd.long]
    a, fa = tag_files(torch_tagger, files, timeline=True)
    b, fb = tag_files(onnx_tagger, files, timeline=True)
    assert fa == fb == [] and len(a) == len(b) == len(files)
    pa, pb = np.stack([r.probs for r in a]), np.stack([r.probs for r in b])
    assert np.abs(pa - pb).max() <= ONNX_TOL
    # not vacuous: the probabilities move between clips by far more than the tolerance
    assert np.ptp(pa, axis=0).max() > 10 * ONNX_TOL
    for ra, rb in zip(a, b):
        assert len(ra.timeline) == len(rb.timeline) >= 1
        for (sa, ea, qa), (sb, eb, qb) in zip(ra.timeline, rb.timeline):
            assert (sa, ea) == pytest.approx((sb, eb), abs=1e-9)
            assert np.abs(qa - qb).max() <= ONNX_TOL
    assert len(a[-1].timeline) > 5
    # the NumPy log-mel of the ONNX engine is PyTorch's, chunk for chunk
    ca, _ = torch_tagger.chunks(clips[0])
    cb, _ = onnx_tagger.chunks(clips[0])
    assert ca.shape == cb.shape and np.abs(ca - cb).max() < 1e-2
    with pytest.raises(ParameterError, match="export"):
        load_tagger(run, engine="onnx")
    with pytest.raises(ParameterError, match="onnx"):
        load_tagger(onnx_models[kind], engine="torch")


@pytest.mark.slow
def test_exported_model_is_self_contained(runs, tmp_path, esc10_root, soundtag_main):
    private = _copy_run(runs.x, tmp_path / "run-copy")
    code, stdout, stderr = soundtag_main("export", private, "--format", "onnx", "--out", tmp_path / "exp" / "m.onnx")
    assert code == 0, stdout + stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "exp" / "m.onnx", elsewhere / "m.onnx")
    shutil.rmtree(private)  # our own copy of the run, and the export folder: gone
    shutil.rmtree(tmp_path / "exp")
    model = elsewhere / "m.onnx"
    meta = read_onnx_metadata(model)
    assert meta["labels"] == load_run(runs.x).labels and meta["folds"] == 2
    assert meta["recipe"]["view"]["kind"] == "x"
    tagger = load_tagger(model)
    assert tagger.labels == load_run(runs.x).labels
    clip = esc10_root / "audio" / "009 - Rooster" / "1-26806-A.ogg"
    assert np.abs(tagger.tag(clip).probs - load_tagger(runs.x).tag(clip).probs).max() <= ONNX_TOL
    (elsewhere / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.onnx"):
        load_tagger(elsewhere / "junk.onnx")


_NO_TORCH = (
    "import sys\n"
    "sys.modules['torch'] = None  # any import of torch now fails\n"
    "sys.argv = ['soundtag'] + sys.argv[1:]\n"
    "from soundtag.cli import main\n"
    "main()\n"
)


def _without_torch(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        COLUMNS="300",
        NO_COLOR="1",
        TERM="dumb",
        PYTHONIOENCODING="utf-8",
        PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lh", "x"])
def test_onnx_engine_tags_without_pytorch(runs, onnx_models, tmp_path, kind):
    model = tmp_path / "model.onnx"
    shutil.copy(onnx_models[kind], model)
    clips = [Path(c.path) for c in runs.data][3::13]
    proc = _without_torch("tag", model, *clips, "--engine", "onnx", "--format", "json", "--top", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert [item["file"] for item in out] == [str(c) for c in clips]
    torch_tagger = load_tagger(getattr(runs, kind))
    for item, clip in zip(out, clips):
        scores = {t["label"]: t["score"] for t in item["tags"]}
        got = np.array([scores[lab] for lab in torch_tagger.labels])
        assert np.abs(got - torch_tagger.tag(clip).probs).max() <= ONNX_TOL + 1e-6
    # the control: the same blocked interpreter cannot tag with the PyTorch engine
    proc = _without_torch("tag", getattr(runs, kind), clips[0], "--format", "json", cwd=tmp_path)
    assert proc.returncode != 0 and "torch" in proc.stderr


# --- predicting a dataset ---------------------------------------------------------------------


@pytest.mark.slow
def test_predict_dataset_covers_every_clip_once_and_matches_a_manual_fold_ensemble(runs, tmp_path, soundtag_main):
    import torch

    lh = predict_dataset(runs.lh, runs.data, out=tmp_path / "lh.csv", progress=False)
    res = predict_dataset(runs.x, runs.data, out=tmp_path / "x.csv", progress=False)
    for r in (lh, res):
        read = read_predictions(r.path)
        assert sorted(read.ids) == sorted(runs.data.ids) and len(set(read.ids)) == len(runs.data)
        assert read.probs.shape == (len(runs.data), len(runs.data.labels))
        assert np.allclose(read.probs.sum(axis=1), 1.0, atol=1e-6)
        assert [g for g in read.given] == [tuple(c.labels) for c in runs.data]
        assert r.metrics["clips"] == len(runs.data)

    loaded = load_run(runs.x)
    store, _ = extract_features(runs.data, loaded.recipe, cache_dir=runs.cache, progress=False)
    manual, arithmetic, n_chunks = [], [], []
    for clip in runs.data:
        chunks = eval_chunks(store.get(clip_key(clip.path)), loaded.recipe)
        n_chunks.append(len(chunks))
        with torch.inference_mode():
            fold_probs = loaded.ensemble(torch.from_numpy(chunks)).numpy().astype(np.float64)
        per_fold = fold_probs.mean(axis=1)  # (folds, classes): chunk mean
        g = np.exp(np.log(np.clip(per_fold, EPS, 1)).mean(axis=0))
        manual.append(g / g.sum())
        arithmetic.append(per_fold.mean(axis=0))
    assert max(n_chunks) > 1 and per_fold.shape[0] == 2
    manual = np.array(manual)
    assert np.abs(res.predictions.probs - manual).max() <= 1e-6
    read = read_predictions(res.path).reorder(loaded.labels)
    assert read.ids == runs.data.ids and np.abs(read.probs - manual).max() <= 1e-6
    # the geometric mean is what the check tells apart from an arithmetic one
    assert np.abs(np.array(arithmetic) - manual).max() > 1e-5

    tta = predict_dataset(runs.x, runs.data, out=tmp_path / "x-tta.csv", tta=2, progress=False)
    assert tta.predictions.ids == res.predictions.ids and tta.predictions.probs.shape == manual.shape
    assert np.allclose(tta.predictions.probs.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(tta.predictions.probs - res.predictions.probs).max() > 1e-5

    # the CLI writes the same file
    out = tmp_path / "cli.csv"
    code, stdout, stderr = soundtag_main("predict", runs.x, "--data", runs.subset, "--out", out, "--no-progress")
    assert code == 0, stdout + stderr
    assert out.read_text() == res.path.read_text()


@pytest.mark.slow
def test_out_of_fold_tta_in_training_matches_predicting_again_from_the_fold_models(runs, tmp_path, fast, soundtag_main):
    # Training rolls its out-of-fold chunks on the device with torch; predict_out_of_fold rolls
    # them in NumPy and runs the exported-model path (FoldEnsemble): two ways to the same numbers.
    recipe = load_recipe("esc50-x", fast + LEARN + ["training.tta=2"])
    run = train(runs.data, recipe, tmp_path / "x-tta", cache_dir=runs.cache, progress=False).run_dir
    stored = RunDir(run).out_of_fold()
    again = predict_out_of_fold(run, progress=False)  # the recipe's tta, 2
    assert again.manifest.ids == stored.manifest.ids
    assert np.abs(again.probs - stored.probs).max() <= 1e-4
    plain = predict_out_of_fold(run, tta=0, progress=False)
    assert np.abs(plain.probs - stored.probs).max() > 1e-3  # the copies changed them
    assert np.allclose(plain.probs.sum(axis=1), 1.0, atol=1e-5)

    # predict and tag default to the recipe's copies too
    default = predict_dataset(run, runs.data, out=tmp_path / "default.csv", progress=False)
    two = predict_dataset(run, runs.data, out=tmp_path / "two.csv", tta=2, progress=False)
    none = predict_dataset(run, runs.data, out=tmp_path / "none.csv", tta=0, progress=False)
    assert np.array_equal(default.predictions.probs, two.predictions.probs)
    assert np.abs(default.predictions.probs - none.predictions.probs).max() > 1e-3

    # evaluate --tta scores the new predictions apart and leaves the run's own metrics alone
    before = json.loads((Path(run) / "metrics.json").read_text())
    code, stdout, stderr = soundtag_main("evaluate", run, "--tta", "0")
    assert code == 0, stdout + stderr
    assert "metrics-tta0.json" in _flat(stdout)
    scored = json.loads((Path(run) / "metrics-tta0.json").read_text())
    assert scored["tta"] == 0 and before["tta"] == 2
    assert json.loads((Path(run) / "metrics.json").read_text()) == before
    targets = np.array([[lab in c.labels for lab in plain.manifest.labels] for c in plain.manifest], float)
    assert scored["all"]["top1"] == pytest.approx(evaluation.top1_accuracy(targets, plain.probs))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lh", "x"])
def test_fold_ensemble_reproduces_the_out_of_fold_predictions_of_training(runs, kind):
    """Fold ``k`` of the inference module (with its own normalisation) on the clips it was
    validated on gives the probabilities training wrote to ``fold-k/oof.npy``."""
    import torch

    run = getattr(runs, kind)
    loaded = load_run(run)
    store, _ = extract_features(runs.data, loaded.recipe, cache_dir=runs.cache, progress=False)
    path_of = {c.id: c.path for c in runs.data}
    for k, done in enumerate(sorted(run.glob("fold-*/done.json"))):
        clips = json.loads(done.read_text())["clips"]
        expected = np.load(done.parent / "oof.npy")
        got = []
        for c in clips:
            chunks = eval_chunks(store.get(clip_key(path_of[c])), loaded.recipe)
            with torch.inference_mode():
                got.append(loaded.ensemble(torch.from_numpy(chunks))[k].numpy().mean(axis=0))
        assert np.abs(np.array(got) - expected).max() <= 1e-5


@pytest.mark.slow
def test_predict_refuses_labels_the_run_does_not_know(runs, tmp_path):
    with open(runs.subset, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[3]["labels"] = "Unicorn"
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "never.csv"
    with pytest.raises(DataError, match="Unicorn"):
        predict_dataset(runs.x, read_manifest(bad), out=out, progress=False)
    assert not out.exists()


@pytest.mark.slow
def test_an_ensemble_tags_through_the_onnx_engine_like_through_pytorch(runs, tmp_path, esc10_root):
    a, b = _copy_run(runs.lh, tmp_path / "a"), _copy_run(runs.x, tmp_path / "b")
    for run in (a, b):
        export_onnx(run)  # to the run's default place, where the onnx engine looks for it
    ens = ensemble_runs([a, b], tmp_path / "ens")
    onnx_tagger = load_tagger(tmp_path / "ens", engine="onnx")
    assert onnx_tagger.engine == "onnx" and [m.engine for m in onnx_tagger.members] == ["onnx", "onnx"]
    clip = esc10_root / "audio" / "002 - Rain" / "1-17367-A.ogg"
    members = np.stack([load_tagger(r, engine="onnx").tag(clip).probs for r in (a, b)])
    got = onnx_tagger.tag(clip).probs
    assert np.allclose(got, geometric_mean(members, weights=ens.weights), atol=1e-9)
    assert np.abs(got - load_tagger(tmp_path / "ens").tag(clip).probs).max() <= ONNX_TOL
    # a member run that was never exported: the message says what to run
    (a / "model.onnx").unlink()
    with pytest.raises(ParameterError, match="soundtag export"):
        load_tagger(tmp_path / "ens", engine="onnx")


def test_the_torch_and_numpy_clip_means_of_the_inference_core_agree():
    """Training's batches average chunks in PyTorch, tagging without PyTorch in NumPy: one rule."""
    import torch

    from soundtag.inference.clips import clip_probabilities

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 5)).astype(np.float32)
    owner = np.array([0, 0, 1, 2, 2, 2, 1])
    for multilabel in (False, True):
        probs = 1 / (1 + np.exp(-logits)) if multilabel else np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        got = clip_probabilities(torch.from_numpy(logits), torch.from_numpy(owner), 3, multilabel).numpy()
        np.testing.assert_allclose(got, clip_means(probs, owner, 3), rtol=1e-6, atol=1e-7)


# --- int8 models --------------------------------------------------------------------------------


def _conv_weight_types(model_path: Path) -> set[int]:
    """The ONNX element types of the tensors every Conv's weight comes from (through a
    DequantizeLinear in an int8 model)."""
    import onnx

    model = onnx.load(str(model_path))
    inits = {t.name: t.data_type for t in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    types = set()
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = node.input[1]
        source = made_by.get(weight)
        types.add(
            inits[source.input[0]] if source is not None and source.op_type == "DequantizeLinear" else inits[weight]
        )
    return types


@pytest.mark.slow
def test_int8_export_keeps_the_tags_and_stores_its_convolutions_in_int8(runs, onnx_models, tmp_path, soundtag_main):
    import onnx

    model = tmp_path / "lh.int8.onnx"
    code, stdout, stderr = soundtag_main("export", runs.lh, "--quantize", "int8", "--out", model, "--no-progress")
    assert code == 0, stdout + stderr
    assert "static,calibratedon" in _flat(stdout)
    assert _conv_weight_types(onnx_models["lh"]) == {onnx.TensorProto.FLOAT}
    assert _conv_weight_types(model) == {onnx.TensorProto.INT8}
    info = read_onnx_metadata(model)
    q = info["quantization"]
    assert q["mode"] == "static" and q["calibration_source"] == "the run's training clips"
    # the run's 2 folds are both scored, so every training clip may calibrate: calibration and check part them
    assert q["calibration_clips"] > 0 and q["check_clips"] > 0
    assert q["calibration_clips"] + q["check_clips"] == len(runs.data)
    assert info["labels"] == read_onnx_metadata(onnx_models["lh"])["labels"]
    # the user's side is unchanged: `tag model.onnx`; the int8 tags stay near the float model's
    clips = [Path(c.path) for c in runs.data][::5]
    fp32, int8 = load_tagger(onnx_models["lh"]), load_tagger(model)
    a = np.stack([fp32.tag(c).probs for c in clips])
    b = np.stack([int8.tag(c).probs for c in clips])
    assert np.abs(a - b).max() < 0.05
    assert np.abs(a - b).max() > 0  # it is another model, not the float one copied
    code, stdout, _ = soundtag_main("tag", model, clips[0], "--format", "json")
    assert code == 0 and json.loads(stdout)[0]["tags"][0]["label"] == int8.labels[int(np.argmax(b[0]))]


def _tiny_exported_model(path: Path, mels: int = 16, frames: int = 32, classes: int = 4) -> Path:
    """A small convolutional tagger exported as soundtag's ONNX files are: ``chunks`` in, one
    fold's ``fold_probs`` out, and the metadata entry the quantiser copies."""
    import onnx
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.head = torch.nn.Linear(8, classes)

        def forward(self, chunks):
            hidden = torch.relu(self.conv(chunks.unsqueeze(1))).mean(dim=(2, 3))
            return torch.softmax(self.head(hidden) * 4, dim=-1).unsqueeze(0)

    torch.onnx.export(
        Tiny().eval(),
        (torch.zeros(2, mels, frames),),
        str(path),
        input_names=["chunks"],
        output_names=["fold_probs"],
        dynamic_axes={"chunks": {0: "n"}, "fold_probs": {1: "n"}},
        dynamo=False,
    )
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "soundtag", json.dumps({"labels": [f"c{i}" for i in range(classes)]})
    onnx.save(model, str(path))
    return path


def test_static_int8_ranges_ignore_a_rare_outlier_in_the_calibration_clips(tmp_path):
    from soundtag.prediction.quantize import CALIBRATION_PERCENTILE, quantize_model

    fp32 = _tiny_exported_model(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((2, 16, 32)).astype(np.float32) for _ in range(60)]
    # one value in 60 x 1024: a click in one clip. Ranges from the extremes would span +-1000 and
    # round every ordinary input (about +-3) to zero; the 99.99th percentile leaves it out.
    calibration[7][0, 3, 5] = 1000.0
    check = [rng.standard_normal((2, 16, 32)).astype(np.float32) for _ in range(20)]
    report = quantize_model(fp32, tmp_path / "tiny.int8.onnx", calibration=calibration, check=check)
    # here the extremes leave probabilities 0.10 apart and the percentile 0.008
    assert report.top1_agreement >= 0.9 and report.max_prob_diff < 0.03
    q = read_onnx_metadata(tmp_path / "tiny.int8.onnx")["quantization"]
    assert q["ranges"] == f"{CALIBRATION_PERCENTILE:g}th percentile of the calibration chunks"


@pytest.mark.slow
def test_int8_dynamic_needs_no_clips_and_bad_requests_say_what_to_do(runs, tmp_path, soundtag_main):
    model = tmp_path / "dyn.onnx"
    code, stdout, stderr = soundtag_main(
        "export", runs.x, "--quantize", "int8", "--int8-mode", "dynamic", "--out", model, "--no-progress"
    )
    assert code == 0, stdout + stderr
    q = read_onnx_metadata(model)["quantization"]
    assert q["mode"] == "dynamic" and q["calibration_clips"] == 0
    assert load_tagger(model).tag(runs.data.clips[0].path).probs.shape == (len(runs.data.labels),)
    empty = tmp_path / "no-audio"
    empty.mkdir()
    (empty / "notes.txt").write_text("not audio\n")
    code, stdout, stderr = soundtag_main(
        "export", runs.x, "--quantize", "int8", "--calibrate", empty, "--out", tmp_path / "c.onnx"
    )
    assert code != 0 and "no-audio" in _flat(stdout + stderr) and not (tmp_path / "c.onnx").exists()
    code, stdout, stderr = soundtag_main("export", runs.x, "--quantize", "int4", "--out", tmp_path / "d.onnx")
    assert code != 0 and "int8" in _flat(stdout + stderr) and not (tmp_path / "d.onnx").exists()


@pytest.mark.slow
def test_an_int8_blend_exports_one_model_a_view_and_tags_like_its_members(runs, tmp_path, esc10_root):
    a, b = _copy_run(runs.lh, tmp_path / "a"), _copy_run(runs.x, tmp_path / "b")
    ens = ensemble_runs([a, b], tmp_path / "ens")
    with pytest.raises(ParameterError, match="folder"):
        export_onnx(tmp_path / "ens", tmp_path / "blend.onnx", quantize="int8")
    folder = export_onnx(tmp_path / "ens", tmp_path / "int8", quantize="int8", int8_mode="dynamic")
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["a.onnx", "b.onnx"]
    clip = esc10_root / "audio" / "002 - Rain" / "1-17367-A.ogg"
    members = np.stack([load_tagger(folder / f"{n}.onnx").tag(clip).probs for n in ("a", "b")])
    assert np.allclose(load_tagger(folder).tag(clip).probs, geometric_mean(members, weights=ens.weights), atol=1e-9)


# --- listening to a live source -----------------------------------------------------------------


def _listen(model, *args, data: bytes = b"", timeout=300) -> subprocess.CompletedProcess:
    """``soundtag listen MODEL --stdin ...`` in its own process, ``data`` through a real pipe."""
    env = dict(os.environ, COLUMNS="300", NO_COLOR="1", TERM="dumb", PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "soundtag.cli", "listen", str(model), "--stdin", *map(str, args)],
        input=data,
        capture_output=True,
        timeout=timeout,
        env=env,
    )


def _listen_process(model, *args, stdout=subprocess.PIPE) -> subprocess.Popen:
    """``soundtag listen MODEL --stdin ...`` running, its standard input a pipe to write to."""
    return subprocess.Popen(
        [sys.executable, "-m", "soundtag.cli", "listen", str(model), "--stdin", *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=dict(os.environ, NO_COLOR="1", TERM="dumb"),
    )


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def long_wav(runs, onnx_models, tmp_path_factory) -> SimpleNamespace:
    """23 s of real clips end to end at the LH model's own rate, as 16-bit WAV (a tail past the
    last whole window), and its samples as the WAV holds them."""
    rate = read_onnx_metadata(onnx_models["lh"])["recipe"]["audio"]["sample_rate"]
    pieces = [sf.read(c.path, dtype="float32")[0] for c in list(runs.data)[::7][:5]]
    resampled = [
        soxr.resample(p, 44100, rate) if p.ndim == 1 else soxr.resample(p.mean(1), 44100, rate) for p in pieces
    ]
    samples = np.concatenate(resampled)[: 23 * rate]
    samples = np.frombuffer(_pcm16(samples), dtype="<i2").astype(np.float32) / 32768
    path = tmp_path_factory.mktemp("listen") / "long.wav"
    sf.write(path, samples, rate, subtype="PCM_16")
    return SimpleNamespace(path=path, rate=rate, samples=samples)


@pytest.mark.slow
def test_a_clip_piped_into_listen_gives_the_windows_and_events_of_tag_timeline(onnx_models, long_wav, soundtag_main):
    model, hop = onnx_models["lh"], 1.5
    code, stdout, stderr = soundtag_main(
        "tag", model, long_wav.path, "--timeline", "--hop", hop, "--format", "json", "--top", "4"
    )
    assert code == 0, stderr
    timeline = json.loads(stdout)[0]["timeline"]
    assert timeline[-1]["end"] == pytest.approx(23.0) and len(timeline) > 10
    # a threshold in the widest gap between the middle half of the windows' best scores, so that
    # events open and close and no score sits on it
    best = np.sort([w["tags"][0]["score"] for w in timeline])
    lo, hi = len(best) // 4, 3 * len(best) // 4
    i = lo + int(np.argmax(np.diff(best[lo - 1 : hi + 1]))) if lo else 1
    threshold = float(best[i - 1] + best[i]) / 2
    code, stdout, _ = soundtag_main(
        "tag", model, long_wav.path, "--timeline", "--hop", hop, "--format", "csv", "--threshold", threshold
    )
    assert code == 0
    expected_events = sorted(
        (float(r["start"]), float(r["end"]), r["label"]) for r in csv.DictReader(stdout.splitlines())
    )
    assert expected_events
    common = ("--windows", "--hop", hop, "--threshold", threshold, "--top", "4", "--output", "jsonl")
    raw = _listen(model, "--format", "s16le", "--rate", long_wav.rate, *common, data=_pcm16(long_wav.samples))
    wav = _listen(model, *common, data=long_wav.path.read_bytes())  # the WAV stream, header first
    flac = io.BytesIO()  # the same 16-bit samples in a container ffmpeg decodes as it streams
    sf.write(flac, long_wav.samples, long_wav.rate, format="FLAC", subtype="PCM_16")
    flac = _listen(model, *common, data=flac.getvalue())
    for proc in (raw, wav, flac):
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
        windows = [x for x in lines if x["type"] == "window"]
        assert [(w["start"], w["end"]) for w in windows] == [(w["start"], w["end"]) for w in timeline]
        for got, want in zip(windows, timeline):
            assert [t["label"] for t in got["tags"]] == [t["label"] for t in want["tags"]]
            assert np.allclose([t["score"] for t in got["tags"]], [t["score"] for t in want["tags"]], atol=2e-6)
        events = sorted((x["start"], x["end"], x["label"]) for x in lines if x["type"] == "event")
        assert [(round(s, 2), round(e, 2), lab) for s, e, lab in events] == expected_events
        assert b"23.0 s of sound" in proc.stderr


@pytest.mark.slow
def test_an_ogg_stream_piped_into_listen_is_tagged_as_the_file_is(onnx_models, long_wav, tmp_path, soundtag_main):
    """A lossy container read as it arrives: the windows of `tag --timeline` on the same Ogg file,
    though ffmpeg's Vorbis decoder (listening) and libvorbis (files) are not the same code."""
    model, hop = onnx_models["lh"], 2.0
    ogg = tmp_path / "long.ogg"
    sf.write(ogg, long_wav.samples, long_wav.rate, format="OGG", subtype="VORBIS")
    code, stdout, stderr = soundtag_main("tag", model, ogg, "--timeline", "--hop", hop, "--format", "json")
    assert code == 0, stderr
    timeline = json.loads(stdout)[0]["timeline"]
    proc = _listen(model, "--windows", "--hop", hop, "--output", "jsonl", "--top", "3", data=ogg.read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    windows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    windows = [w for w in windows if w["type"] == "window"]
    assert [(w["start"], w["end"]) for w in windows] == [(w["start"], w["end"]) for w in timeline]
    for got, want in zip(windows, timeline):
        assert got["tags"][0]["label"] == want["tags"][0]["label"]
        assert got["tags"][0]["score"] == pytest.approx(want["tags"][0]["score"], abs=1e-3)


@pytest.mark.slow
def test_an_hour_of_stream_keeps_the_listeners_memory_flat(onnx_models, long_wav, tmp_path):
    rate = long_wav.rate
    ten_seconds = _pcm16(np.tile(long_wav.samples[: 5 * rate], 2) * np.float32(0.5))
    proc = _listen_process(
        onnx_models["lh"], "--format", "s16le", "--rate", rate, "--threshold", 0.99, stdout=subprocess.DEVNULL
    )

    def rss_kb() -> int:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    rss = {}
    for i in range(360):  # 3600 s of sound, written as fast as the listener takes it
        proc.stdin.write(ten_seconds)
        if i == 30:  # five minutes in: the model, the buffers and ONNX Runtime's arenas are all there
            rss["start"] = rss_kb()
    proc.stdin.flush()
    rss["end"] = rss_kb()
    proc.stdin.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr[-2000:]
    assert "3600.0 s of sound" in stderr
    # what an hour kept in memory would cost: 3600 s x rate x 4 bytes (230 MB at 16 kHz)
    assert rss["end"] - rss["start"] < 16 * 1024, rss


@pytest.mark.slow
def test_listen_explains_bad_input_and_a_closed_output(onnx_models, long_wav):
    model, rate = onnx_models["lh"], long_wav.rate
    two_seconds = _pcm16(long_wav.samples[: 2 * rate])
    flac = io.BytesIO()
    sf.write(flac, long_wav.samples[: 2 * rate], rate, format="FLAC")
    odd = _listen(model, "--format", "s16le", "--rate", rate, data=two_seconds + b"\x01")
    assert odd.returncode == 0 and b"1 byte(s) left out" in odd.stderr and b"2.0 s of sound" in odd.stderr
    for args, data, message in [
        (("--format", "s16le", "--rate", 16), two_seconds, "is not an audio sample rate"),
        (("--format", "s16le"), two_seconds, "give its sample rate with --rate"),
        (("--rate", rate + 1), long_wav.path.read_bytes(), "contradicts the WAV header"),
        (("--format", "wav"), two_seconds, "not WAV"),
        ((), two_seconds, "raw PCM has no header, so give its format and rate"),  # no --format: not a container
        ((), b"", "standard input is empty"),
        (("--rate", rate * 2), flac.getvalue(), "contradicts the stream's header"),
        (("--format", "f32le", "--rate", rate), np.full(4000, np.nan, "<f4").tobytes(), "not a number"),
    ]:
        proc = _listen(model, *args, data=data)
        err = _flat(proc.stderr.decode())
        assert proc.returncode == 2 and _flat(message) in err and "Traceback" not in err, (args, err)
    # a reader that goes away (| head -1): the listener stops quietly
    proc = _listen_process(model, "--format", "s16le", "--rate", rate, "--windows", "--hop", 0.5, "--output", "jsonl")
    proc.stdin.write(_pcm16(long_wav.samples[: 8 * rate]))
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["type"] == "window"
    proc.stdout.close()
    try:
        proc.stdin.write(_pcm16(long_wav.samples))
        proc.stdin.close()
    except BrokenPipeError:
        pass
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "output was closed" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_listen_without_portaudio_says_how_to_get_it_or_pipe_sound_in(onnx_models, tmp_path):
    blocked = (
        "import sys\n"
        "sys.modules['sounddevice'] = None  # as on a machine without it\n"
        "sys.argv = ['soundtag'] + sys.argv[1:]\n"
        "from soundtag.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", blocked, "listen", str(onnx_models["lh"])],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, NO_COLOR="1", TERM="dumb", COLUMNS="300"),
    )
    err = _flat(proc.stderr)
    assert proc.returncode == 2 and "portaudio" in err.lower() and "--stdin" in err and "Traceback" not in err
