"""Scaling out: DDP training in two real processes (gloo on the CPU), rank-sharded samplers,
sharded feature extraction and folds trained as separate jobs, all on real ESC-10 clips."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soundtag import evaluation
from soundtag.errors import DataError, ParameterError
from soundtag.features import FeatureStore, clip_key, extract_features
from soundtag.manifest import Manifest, read_manifest
from soundtag.recipe import load_recipe
from soundtag.training.data import EpochSampler, ShardSampler
from soundtag.training.merge import merge_folds
from soundtag.training.run import train
from soundtag.training.splits import label_matrix


@pytest.fixture(scope="module")
def subset(subset_csv) -> Path:
    """Two folds of 4 classes x 5 clips."""
    return subset_csv


@pytest.fixture(scope="module")
def one_epoch(fast) -> list[str]:
    """The tiny runs' recipe, one epoch: it keeps the two-process runs to seconds."""
    return [o for o in fast if not o.startswith("training.epochs")] + ["training.epochs=1"]


def _cli(*args: str, env_extra: dict | None = None, launcher: list[str] | None = None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        if not env_extra or var not in env_extra:
            env.pop(var, None)
    cmd = (launcher or [sys.executable]) + ["-m", "soundtag.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _recipe_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("-o", o)]


def _fold_loss(run: Path, k: int) -> tuple[float, list[str]]:
    """Log loss of a fold's out-of-fold predictions, over all of its clips."""
    manifest = Manifest.from_jsonl(run / "manifest.jsonl")
    done = json.loads((run / f"fold-{k}" / "done.json").read_text())
    probs = np.load(run / f"fold-{k}" / "oof.npy")
    row = {c.id: i for i, c in enumerate(manifest)}
    targets = label_matrix(manifest)[[row[c] for c in done["clips"]]]
    return evaluation.log_loss(targets, probs), done["clips"]


@pytest.mark.slow
@pytest.mark.parametrize("device_data", ["on", "off"])
def test_two_process_ddp_fold_predicts_every_clip_once_and_gathers_the_metric(subset, tmp_path, one_epoch, device_data):
    # fp32: the gathered metric is compared with the out-of-fold predictions to 1e-4, closer than
    # bf16 autocast (auto on CPUs with native bf16) rounds; the other DDP tests run as auto says
    # (the device path, for data this small). Both paths are run here: features held on the
    # device, and the streaming DataLoaders over the memory-mapped store.
    one_epoch = [*one_epoch, "training.precision=32", f"training.device_data={device_data}"]
    recipe = load_recipe("esc50-lh", one_epoch)
    manifest = read_manifest(subset)
    cache = tmp_path / "cache"
    extract_features(manifest, recipe, cache_dir=cache, workers=0, progress=False)

    run = tmp_path / "ddp"
    proc = _cli(
        "train",
        "--data",
        str(subset),
        "--recipe",
        "esc50-lh",
        *_recipe_args(one_epoch),
        "--out",
        str(run),
        "--cache",
        str(cache),
        "--fold",
        "0",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--no-progress",
        launcher=_torchrun(2),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    assert "Starting with 2 processes" in proc.stdout + proc.stderr

    done = json.loads((run / "fold-0" / "done.json").read_text())
    assert done["processes"] == 2
    assert done["features_on_device"] is (device_data == "on")
    fold_clips = sorted(c.id for c in manifest if c.fold == 1)
    assert sorted(done["clips"]) == fold_clips and len(set(done["clips"])) == len(done["clips"])
    assert np.load(run / "fold-0" / "oof.npy").shape == (len(fold_clips), len(manifest.labels))
    # Checkpoints come from rank 0 alone: one best and one last, no versioned copies.
    assert sorted(p.name for p in (run / "fold-0").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]

    # The monitored val_loss is the loss over every validation clip (gathered from both ranks):
    # it equals the loss of the best checkpoint's out-of-fold predictions over the whole fold,
    # which the loss over either rank's half would not.
    loss, clips = _fold_loss(run, 0)
    assert done["best_score"] == pytest.approx(loss, abs=1e-4)
    halves = [evaluation.log_loss(*_half(run, clips, manifest, r)) for r in (0, 1)]
    assert all(abs(h - loss) > 1e-4 for h in halves)

    # Same coverage as a single-process run of the same fold.
    single = train(manifest, recipe, tmp_path / "single", cache_dir=cache, folds=[0], progress=False)
    single_done = json.loads((single.run_dir / "fold-0" / "done.json").read_text())
    assert sorted(single_done["clips"]) == sorted(done["clips"])
    assert single_done["processes"] == 1
    assert single_done["features_on_device"] is (device_data == "on")


def _half(run: Path, clips: list[str], manifest: Manifest, rank: int):
    probs = np.load(run / "fold-0" / "oof.npy")
    row = {c.id: i for i, c in enumerate(manifest)}
    targets = label_matrix(manifest)[[row[c] for c in clips]]
    # The validation loader's order is the fold's clip order; rank r saw rows r, r + 2, ...
    return targets[rank::2], probs[rank::2]


def test_samplers_split_one_epoch_between_ranks():
    classes = np.repeat(np.arange(4), [10, 3, 7, 5])
    full = list(EpochSampler(classes, "oversample", seed=3))  # outside torch.distributed: rank 0 of 1
    assert full == list(EpochSampler(classes, "oversample", seed=3, rank=0, world_size=1))
    assert len(full) == 4 * 10
    shards = []
    for rank in (0, 1, 2):
        sampler = EpochSampler(classes, "oversample", seed=3, rank=rank, world_size=3)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == len(full) // 3
    # disjoint parts of the same balanced epoch, equal in size so every rank steps alike
    positions = [list(range(r, len(full), 3))[: len(full) // 3] for r in range(3)]
    for shard, pos in zip(shards, positions):
        assert shard == [full[p] for p in pos]
    eval_shards = []
    for rank in (0, 1, 2):
        eval_shards.append(list(ShardSampler(11, rank=rank, world_size=3)))
        assert len(ShardSampler(11, rank=rank, world_size=3)) == len(eval_shards[-1])
    assert sorted(sum(eval_shards, [])) == list(range(11))  # every clip once, no padding
    assert list(ShardSampler(11)) == list(range(11))
    for bad in ({"rank": 3, "world_size": 3}, {"rank": -1}, {"world_size": 0}):
        with pytest.raises(ParameterError, match="rank"):
            ShardSampler(11, **bad)
        with pytest.raises(ParameterError, match="rank"):
            EpochSampler(classes, "none", **bad)


def _torchrun(n: int) -> list[str]:
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(port)]


@pytest.mark.slow
def test_sharded_extraction_in_two_processes_fills_one_store(subset, tmp_path, one_epoch):
    # Two processes started by torchrun: each takes the shard of its rank, at the same time.
    cache = tmp_path / "cache"
    proc = _cli(
        "features",
        "--data",
        str(subset),
        "--recipe",
        "esc50-lh",
        *_recipe_args(one_epoch),
        "--cache",
        str(cache),
        "--workers",
        "0",
        "--no-progress",
        launcher=_torchrun(2),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = load_recipe("esc50-lh", one_epoch)
    manifest = read_manifest(subset)
    store = FeatureStore.open(cache, recipe)
    assert set(store.entries) == {clip_key(c.path) for c in manifest}
    assert sorted(p.name for p in store.path.glob("failures*.csv")) == [
        "failures-shard-0-of-2.csv",
        "failures-shard-1-of-2.csv",
    ]
    # The same arrays as one unsharded extraction.
    whole, summary = extract_features(manifest, recipe, cache_dir=tmp_path / "whole", workers=0, progress=False)
    assert summary.computed == len(manifest)
    for key in list(whole.entries)[:5]:
        np.testing.assert_array_equal(store.get(key), whole.get(key))
    # Nothing is left to compute afterwards.
    _, again = extract_features(manifest, recipe, cache_dir=cache, workers=0, progress=False)
    assert (again.computed, again.cached) == (0, len(manifest))


def test_processes_started_together_need_the_features_first(subset, tmp_path, monkeypatch, one_epoch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    recipe = load_recipe("esc50-lh", one_epoch)
    with pytest.raises(DataError, match="soundtag features"):
        train(read_manifest(subset), recipe, tmp_path / "run", cache_dir=tmp_path / "empty", progress=False)
    assert not (tmp_path / "run" / "run.json").exists(), "a rank other than 0 must not write the run files"


@pytest.mark.slow
def test_folds_trained_as_jobs_merge_into_one_run(subset, tmp_path, one_epoch):
    cache = tmp_path / "cache"
    for k in (0, 1):
        proc = _cli(
            "train",
            "--data",
            str(subset),
            "--recipe",
            "esc50-lh",
            *_recipe_args(one_epoch),
            "--cache",
            str(cache),
            "--fold",
            str(k),
            "--out",
            str(tmp_path / f"job-{k}"),
            "--no-progress",
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        job = json.loads((tmp_path / f"job-{k}" / "metrics.json").read_text())
        assert job["folds"] == [k] and job["complete"] is False  # scored on its own fold, and says so
        assert not (tmp_path / f"job-{k}" / "oof.csv").exists()  # half a run has no full oof.csv
    proc = _cli("merge-folds", str(tmp_path / "job-0"), str(tmp_path / "job-1"), "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["all"]["clips"] == len(read_manifest(subset)) and metrics["complete"] is True
    # the fold files are the jobs' own (hard links where possible), not retrained
    assert (run / "fold-1" / "oof.npy").read_bytes() == (tmp_path / "job-1" / "fold-1" / "oof.npy").read_bytes()

    # a job of another run (other recipe) is refused
    other = tmp_path / "other"
    proc = _cli(
        "train",
        "--data",
        str(subset),
        "--recipe",
        "esc50-lh",
        *_recipe_args(one_epoch),
        "-o",
        "training.seed=7",
        "--cache",
        str(cache),
        "--fold",
        "1",
        "--out",
        str(other),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with pytest.raises(DataError, match="not folds of one run"):
        merge_folds([tmp_path / "job-0", other], tmp_path / "bad")
    with pytest.raises(DataError, match="both"):
        merge_folds([tmp_path / "job-1", run], tmp_path / "twice")


@pytest.mark.slow
def test_lightning_starts_the_second_process_itself_for_every_fold(subset, tmp_path, one_epoch):
    # Without torchrun, `--devices 2` has Lightning start a second copy of the command, which
    # finds its rank in the environment and must neither refuse the existing run directory
    # nor write files; both folds train in two processes and rank 0 evaluates.
    run = tmp_path / "run"
    proc = _cli(
        "train",
        "--data",
        str(subset),
        "--recipe",
        "esc50-lh",
        *_recipe_args(one_epoch),
        "--out",
        str(run),
        "--cache",
        str(tmp_path / "cache"),
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads((run / f"fold-{k}" / "done.json").read_text())["processes"] for k in (0, 1)] == [2, 2]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["all"]["clips"] == len(read_manifest(subset))
    assert proc.stdout.count("out-of-fold metrics") == 1  # one report, from the first process


# --- the shard policy of the library ----------------------------------------------------------


def test_parse_shard_reads_i_of_n_and_names_a_bad_value():
    from soundtag.distributed import parse_shard

    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4) and parse_shard(" 7 / 8 ") == (7, 8)
    assert parse_shard("all") == parse_shard("ALL") == (0, 1) == parse_shard("0/1")
    for bad in ("4/4", "-1/4", "1/0", "3", "a/b", "1/2/3", ""):
        with pytest.raises(ParameterError) as err:
            parse_shard(bad)
        assert repr(bad) in str(err.value) and "i/n" in str(err.value)


def test_resolve_shard_takes_the_launchers_rank_only_for_several_processes():
    from soundtag.distributed import launch_rank, resolve_shard

    torchrun = {"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "2"}
    srun = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4"}
    assert launch_rank(torchrun) == (2, 3) and launch_rank(srun) == (1, 4)
    assert resolve_shard(None, torchrun) == (2, 3) and resolve_shard(None, srun) == (1, 4)
    assert resolve_shard(None, {}) == (0, 1)
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) == (0, 1)  # torchrun with one process
    for explicit in ("all", (0, 1), "0/1"):
        assert resolve_shard(explicit, torchrun) == (0, 1)
    assert resolve_shard("1/2", torchrun) == resolve_shard((1, 2), torchrun) == (1, 2)
    assert resolve_shard((np.int64(1), np.int64(2))) == (1, 2)
    for bad in ((2, 2), (-1, 3), (0.5, 2), 3):
        with pytest.raises(ParameterError, match="shard"):
            resolve_shard(bad)


def test_extract_features_takes_its_shard_from_the_launcher_unless_told_all(subset, tmp_path, monkeypatch):
    recipe = load_recipe("esc50-x")
    five = set(read_manifest(subset).ids[:5])
    manifest = read_manifest(subset).filter(lambda c: c.id in five)
    assert len(manifest) == 5
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    store, summary = extract_features(manifest, recipe, cache_dir=tmp_path / "c", workers=0, progress=False)
    assert (summary.clips, summary.computed) == (2, 2)
    assert set(store.entries) == {clip_key(c.path) for c in list(manifest)[1::2]}
    assert summary.failures_csv.name == "failures-shard-1-of-2.csv"
    store, summary = extract_features(
        manifest, recipe, cache_dir=tmp_path / "c", workers=0, progress=False, shard="all"
    )
    assert (summary.clips, summary.computed, summary.cached) == (5, 3, 2)
    assert set(store.entries) == {clip_key(c.path) for c in manifest}
    assert summary.failures_csv.name == "failures.csv"
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    _, summary = extract_features(manifest, recipe, cache_dir=tmp_path / "c", workers=0, progress=False)
    assert (summary.clips, summary.cached) == (5, 5) and summary.failures_csv.name == "failures.csv"
    _, summary = extract_features(manifest, recipe, cache_dir=tmp_path / "c", workers=0, progress=False, shard=(0, 3))
    assert (summary.clips, summary.cached) == (2, 2) and summary.failures_csv.name == "failures-shard-0-of-3.csv"
    with pytest.raises(ParameterError, match="3/3"):
        extract_features(manifest, recipe, cache_dir=tmp_path / "c", workers=0, progress=False, shard="3/3")


@pytest.mark.slow
def test_loss_masking_under_ddp_reaches_each_processs_loss_and_spares_verified_clips(subset, tmp_path, one_epoch):
    """Two DDP processes, one epoch: with every clip verified, masking trains exactly as the plain
    loss does (verified clips are never masked; this also shows the runs are repeatable), and
    with half of them unverified the same run ends with other weights (the flags reach the loss
    in each process), both predicting every clip of the fold once."""
    import csv

    import torch

    with open(subset, newline="") as fh:
        rows = list(csv.DictReader(fh))
    base = [*one_epoch, "training.precision=32", "training.noise.mask_fraction=0.5"]
    cache = tmp_path / "cache"  # processes started together need the features first
    extract_features(read_manifest(subset), load_recipe("esc50-lh", base), cache_dir=cache, workers=0, progress=False)
    weights = {}
    for name, strategy, verified in (
        ("plain", "none", lambda i: 1),
        ("verified", "mask", lambda i: 1),
        ("half", "mask", lambda i: i % 2),
    ):
        data = tmp_path / f"{name}.csv"
        with open(data, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[*rows[0], "manually_verified"])
            writer.writeheader()
            writer.writerows({**row, "manually_verified": verified(i)} for i, row in enumerate(rows))
        run = tmp_path / name
        proc = _cli(
            "train",
            "--data",
            str(data),
            "--recipe",
            "esc50-lh",
            *_recipe_args([*base, f"training.noise.strategy={strategy}"]),
            "--out",
            str(run),
            "--cache",
            str(cache),
            "--fold",
            "0",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--no-progress",
            launcher=_torchrun(2),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        done = json.loads((run / "fold-0" / "done.json").read_text())
        assert done["processes"] == 2
        assert sorted(done["clips"]) == sorted(c.id for c in read_manifest(data) if c.fold == 1)
        weights[name] = torch.load(run / "fold-0" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(w, weights["verified"][k]) for k, w in weights["plain"].items()), (
        "a fully verified run must not be touched by masking"
    )
    assert any(
        not torch.equal(weights["verified"][k], weights["half"][k])
        for k in weights["verified"]
        if weights["verified"][k].is_floating_point()
    )


def test_the_primary_process_is_rank_0_by_the_launcher_and_by_the_process_group(monkeypatch, tmp_path):
    import torch.distributed as dist

    from soundtag.distributed import group_rank, is_primary_process

    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert group_rank() == (0, 1) and is_primary_process()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not is_primary_process()  # the launcher says so before any process group exists
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert group_rank() == (0, 1) and is_primary_process()
    finally:
        dist.destroy_process_group()
