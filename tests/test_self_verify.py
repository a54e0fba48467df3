"""``soundtag self-verify``: rounds of decide-then-retrain on real clips, and their resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from soundtag.errors import DataError, ParameterError
from soundtag.recipe import load_recipe
from soundtag.runs import RunDir
from soundtag.training import train

pytestmark = pytest.mark.slow


def _half_verified_csv(esc10_root, path: Path, write_subset_csv) -> Path:
    """The 40-clip ESC-10 subset with every other clip marked manually verified."""
    write_subset_csv(esc10_root, path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["manually_verified"] = "1" if i % 2 == 0 else "0"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "labels", "fold", "manually_verified"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def noisy_run(esc10_root, tmp_path, write_subset_csv, fast, feature_cache):
    from soundtag.manifest import read_manifest

    manifest = read_manifest(_half_verified_csv(esc10_root, tmp_path / "subset.csv", write_subset_csv))
    run = tmp_path / "round-0"
    train(
        manifest,
        load_recipe("esc50-lh", fast),
        run,
        cache_dir=feature_cache,
        progress=False,
        data_source=str(tmp_path / "subset.csv"),
    )
    return run


def _oof(run: Path) -> dict[str, np.ndarray]:
    oof = RunDir(run).out_of_fold()
    return {c.id: oof.probs[i] for i, c in enumerate(oof.manifest)}


def test_rounds_decide_from_the_previous_run_and_train_without_the_dropped(noisy_run, tmp_path, read_csv_rows):
    from soundtag.cleaning import self_verify

    manifest = RunDir(noisy_run).manifest()
    labels = list(manifest.labels)
    # A threshold near the posteriors of a barely trained net, so that the rounds both keep and drop.
    probs0 = _oof(noisy_run)
    own = sorted(probs0[c.id][labels.index(c.labels[0])] for c in manifest if not c.manually_verified)
    threshold = float(own[len(own) // 2])
    reports = self_verify(
        noisy_run,
        tmp_path / "sv",
        rounds=2,
        threshold=threshold,
        progress=False,
        truth={c.id: c.labels[0] for c in manifest},
    )
    assert [r.round for r in reports] == [1, 2]
    previous = noisy_run
    for r in reports:
        verdicts = json.loads((Path(r.lists) / "verdicts.json").read_text())
        probs = _oof(previous)
        unverified = {c.id for c in manifest if not c.manually_verified}
        decided = verdicts["accepted"] + verdicts["dropped"] + list(verdicts["relabelled"])
        assert sorted(decided) == sorted(unverified), "every unverified clip gets exactly one verdict"
        for c in manifest:
            if c.id in verdicts["accepted"]:
                assert probs[c.id][labels.index(c.labels[0])] >= threshold
            if c.id in verdicts["dropped"]:
                assert probs[c.id][labels.index(c.labels[0])] < threshold
        assert r.accepted == len(verdicts["accepted"]) and r.dropped == len(verdicts["dropped"]) > 0
        # The dropped clips are the lists' blacklist, with the reason, and the round's run left them out.
        _, rows = read_csv_rows(Path(r.lists) / "blacklist.csv")
        assert {row["clip_id"] for row in rows} == set(verdicts["dropped"])
        assert all(f"self-verify round {r.round}" in row["reason"] and "<" in row["reason"] for row in rows)
        plan = RunDir(r.run).fold_plan()
        assert {c for c, (_, kept) in plan.items() if not kept} == set(verdicts["dropped"])
        assert 0 <= r.top1 <= 1
        # The labels here are clean: every accepted label is right, no dropped one was wrong.
        assert r.accepted_correct == r.accepted and r.dropped_wrong == 0 == r.flipped
        previous = Path(r.run)
    _, report = read_csv_rows(tmp_path / "sv" / "report.csv")
    assert [int(row["round"]) for row in report] == [1, 2]
    # The same folder with other settings would mix two experiments: refused, nothing retrained.
    with pytest.raises(ParameterError, match="give another --out"):
        self_verify(noisy_run, tmp_path / "sv", rounds=2, threshold=0.5, progress=False)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_self_verify_resumes_without_redoing_finished_rounds(noisy_run, tmp_path, stop):
    out = tmp_path / "sv"
    args = [
        sys.executable,
        "-m",
        "soundtag.cli",
        "self-verify",
        str(noisy_run),
        "--rounds",
        "2",
        "--threshold",
        "0.3",
        "--out",
        str(out),
        "--no-progress",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.time() + 300
    while not (out / "round-2" / "run" / "fold-0").exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.time() < deadline, "round 2 never started"
        time.sleep(0.05)
    if stop == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        proc.send_signal(signal.SIGTERM)
        said = proc.communicate(timeout=120)[0].decode()
        assert proc.returncode == 128 + signal.SIGTERM, said[-2000:]
        assert "stopped by SIGTERM: finished rounds and folds are kept" in said, said[-2000:]
        assert "run the same command again to go on: soundtag self-verify" in said, said[-2000:]
    assert (out / "round-1" / "run" / "metrics.json").is_file()
    assert not (out / "round-2" / "run" / "metrics.json").exists()
    round1 = {p: p.stat().st_mtime_ns for p in (out / "round-1").rglob("*") if p.is_file()}

    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "round-1").rglob("*") if p.is_file()} == round1, (
        "round 1 was redone"
    )
    assert (out / "round-2" / "run" / "metrics.json").is_file()
    assert "kept" in done.stdout and "round" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report] == [1, 2]


def test_self_verify_refuses_what_it_cannot_do(noisy_run, tmp_path):
    from soundtag.cleaning import self_verify

    with pytest.raises(ParameterError, match="rounds"):
        self_verify(noisy_run, tmp_path / "a", rounds=0)
    with pytest.raises(ParameterError, match="truth has no label"):
        self_verify(noisy_run, tmp_path / "b", rounds=1, truth={})
    with pytest.raises(DataError, match="not a soundtag run"):
        self_verify(tmp_path, tmp_path / "c")


def test_the_benchmark_gives_esc50_fsdkaggle2018s_shape_of_noise(esc50_root, benchmark_module):
    from soundtag.manifest import read_manifest

    bench = benchmark_module("label_noise")
    clean = read_manifest(esc50_root)
    noisy, flips, unverified = bench.fsd2018_noise(clean, 0.6, 1 / 3, seed=0)
    before = {c.id: c for c in clean}
    trained_on = [c for c in noisy if c.fold != 1]
    assert len(unverified) == round(0.6 * len(trained_on)) == 960
    assert len(flips) == round(len(unverified) / 3) == 320 and set(flips) <= unverified
    for c in noisy:
        if c.fold == 1:  # the scored fold: verified and untouched
            assert c.manually_verified and c.labels == before[c.id].labels
        assert c.manually_verified == (c.id not in unverified)
        if c.id in flips:
            true, given = flips[c.id]
            assert true == before[c.id].labels[0] != given == c.labels[0]
        else:
            assert c.labels == before[c.id].labels
    again = bench.fsd2018_noise(clean, 0.6, 1 / 3, seed=0)
    assert again[1] == flips and again[2] == unverified
    assert bench.fsd2018_noise(clean, 0.6, 1 / 3, seed=1)[1] != flips
    assert bench.precision_recall({"a", "b"}, {"b", "c", "d", "e"}) == (0.5, 0.25)
    assert bench.precision_recall(set(), {"b"}) == (None, 0.0)
