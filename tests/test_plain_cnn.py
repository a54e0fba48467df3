"""The plain-CNN baseline of issue 12 (model and recipe) and the robustness benchmark's short
clips (issue 11): the cut, the resumable cache, and the benchmark's smoke mode end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundtag.errors import ParameterError
from soundtag.manifest import read_manifest
from soundtag.models import create_model, list_models
from soundtag.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


# --- the model ------------------------------------------------------------------------------


def test_plain_cnn_is_registered_with_about_055m_parameters():
    assert "plain-cnn" in list_models()
    model = create_model("plain-cnn", num_classes=50)
    n = sum(p.numel() for p in model.parameters())
    # 3x3 convs 1-32-64-128-128-256 without bias (534,816), their BN (1,216), a 256x50 head (12,850).
    assert n == 548_882
    assert abs(n - 550_000) / 550_000 < 0.03


def test_plain_cnn_layers_are_five_conv_bn_relu_blocks_with_four_2x2_max_pools():
    model = create_model("plain-cnn", num_classes=50)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256]
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) for c in convs)
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.kernel_size == 2 for p in pools)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 5
    assert model.drop_rate == 0.3 and model.num_features == 256


def test_plain_cnn_keeps_time_resolution_and_has_timms_surface():
    model = create_model("plain-cnn", num_classes=50).eval()
    x = torch.randn(2, 1, 64, 251)  # the recipe's LH view: 64 mels x 251 frames
    features = model.forward_features(x)
    assert features.shape == (2, 256, 4, 15)  # 251 frames // 16: one frame per ~0.33 s
    pooled = model.forward_head(features, pre_logits=True)
    assert torch.allclose(pooled, features.mean(dim=(2, 3)))
    assert torch.equal(model(x), model(x))  # no dropout at evaluation
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)


def test_plain_cnn_channels_and_dropout_are_keyword_args():
    model = create_model("plain-cnn", num_classes=3, channels=[8, 16, 24], dropout=0.1)
    assert [c.out_channels for c in model.modules() if isinstance(c, torch.nn.Conv2d)] == [8, 16, 24]
    assert model.drop_rate == 0.1 and model.num_features == 24
    assert model(torch.randn(1, 1, 32, 40)).shape == (1, 3)
    with pytest.raises(ParameterError, match=r"channels=\[\]"):
        create_model("plain-cnn", num_classes=3, channels=[])
    with pytest.raises(ParameterError, match="dropout=1.5"):
        create_model("plain-cnn", num_classes=3, dropout=1.5)


def test_plain_cnn_mean_plus_max_pooling_keeps_a_short_event_that_the_mean_dilutes():
    model = create_model("plain-cnn", num_classes=3, channels=[4, 8], time_pooling="mean+max").eval()
    features = torch.zeros(1, 8, 4, 15)
    features[0, :, :, 7] = 1.0  # one frame of 15 active in every mel row
    pooled = model.forward_head(features, pre_logits=True)
    # the mean over mels, then max (1) + mean (1/15) over frames; the plain mean gives only 1/15
    torch.testing.assert_close(pooled, torch.full((1, 8), 1 + 1 / 15))
    plain = create_model("plain-cnn", num_classes=3, channels=[4, 8]).eval()
    torch.testing.assert_close(plain.forward_head(features, pre_logits=True), torch.full((1, 8), 1 / 15))
    assert model(torch.randn(2, 1, 32, 40)).shape == (2, 3)
    with pytest.raises(ParameterError, match="time_pooling='max'"):
        create_model("plain-cnn", num_classes=3, time_pooling="max")


def test_plain_cnn_mean_plus_max_pooling_exports_to_onnx_with_the_same_outputs(tmp_path):
    import onnxruntime as ort

    from soundtag.prediction.export import OPSET

    torch.manual_seed(0)
    model = create_model(
        "plain-cnn", num_classes=3, channels=[4, 8], pool_before_norm=True, time_pooling="mean+max"
    ).eval()
    x = torch.randn(2, 1, 32, 40)
    with torch.no_grad():  # the exporter soundtag's export uses: torch.export, the same opset
        program = torch.onnx.export(model, (x,), input_names=["x"], opset_version=OPSET, dynamo=True, verbose=False)
        expected = model(x).numpy()
    program.save(str(tmp_path / "plain.onnx"))
    session = ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, rtol=1e-4, atol=1e-5)


def _same_weights(pooled_first: torch.nn.Module, pooled_after: torch.nn.Module, scale_sign: float = 1.0):
    """Copy the convolutions, BatchNorms (with made-up running statistics and scales of the given
    sign) and head of ``pooled_after`` into ``pooled_first``, layer by layer in order."""
    gen = torch.Generator().manual_seed(0)
    for kind in (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear):
        for a, b in zip(*[[m for m in net.modules() if isinstance(m, kind)] for net in (pooled_after, pooled_first)]):
            if kind is torch.nn.BatchNorm2d:
                n = a.num_features
                a.running_mean.copy_(torch.randn(n, generator=gen))
                a.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                a.weight.data.copy_(scale_sign * (torch.rand(n, generator=gen) + 0.1))
                a.bias.data.copy_(torch.randn(n, generator=gen))
            b.load_state_dict(a.state_dict())


def test_plain_cnn_pooling_before_norm_is_the_same_map_where_the_norm_scales_are_positive():
    torch.manual_seed(0)
    after = create_model("plain-cnn", num_classes=5, channels=[8, 16, 24]).eval()
    first = create_model("plain-cnn", num_classes=5, channels=[8, 16, 24], pool_before_norm=True).eval()
    kinds = [type(m).__name__ for m in first.features]
    assert kinds[:4] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"] and kinds[-3:] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
    ]
    x = torch.randn(3, 1, 32, 40)
    _same_weights(first, after)
    torch.testing.assert_close(first(x), after(x))
    # A negative scale makes BatchNorm + ReLU decreasing: max-pooling no longer commutes with it.
    _same_weights(first, after, scale_sign=-1.0)
    assert not torch.allclose(first(x), after(x), atol=1e-3)
    # Same parameters either way: checkpoints differ only in their layer indices.
    assert sum(p.numel() for p in first.parameters()) == sum(p.numel() for p in after.parameters())


# --- the recipe -----------------------------------------------------------------------------


def test_plain_cnn_recipe_is_the_reference_baseline():
    r = load_recipe("plain-cnn-lh")
    assert r.description.startswith("Reference baseline: plain 0.55M-parameter CNN")
    assert r.audio.sample_rate == 16000
    assert (r.features.n_mels, r.features.hop_length, r.features.n_fft) == (64, 320, 1024)
    assert (r.view.kind, r.view.duration, r.view.padding, r.view.normalization) == ("lh", 5.0, "center", "global")
    t = r.training
    assert (t.model, t.model_args) == ("plain-cnn", {"channels": [32, 64, 128, 128, 256], "dropout": 0.3})
    assert (t.optimizer, t.lr, t.scheduler, t.batch_size, t.epochs) == ("adamw", 3e-3, "onecycle", 32, 30)
    a = t.augment
    assert a.mixup.enabled and a.mixup.alpha == 1.0
    assert not a.erasing.enabled and not a.reverse.enabled
    assert a.shift.enabled and a.shift.max_fraction == 0.5
    s = a.specaugment
    frames = 1 + r.view_samples // r.features.hop_length  # centred STFT frames of the 5 s view
    assert frames == 251
    # spec_augment draws widths in [0, int(width * size)]: up to 40 frames and 8 mels, once each.
    assert s.enabled and (s.time_masks, s.freq_masks) == (1, 1)
    assert int(s.time_width * frames) == 40 and int(s.freq_width * r.features.n_mels) == 8
    model = create_model(t.model, num_classes=50, **t.model_args)
    assert sum(p.numel() for p in model.parameters()) == 548_882


# --- the short clips of the robustness benchmark --------------------------------------------


def test_loudest_window_matches_brute_force_and_takes_the_earliest_tie(benchmark_module):
    loudest_window = benchmark_module("short_clips").loudest_window
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=int(rng.integers(20, 200))) * rng.uniform(0, 3, size=1)
        w = int(rng.integers(1, 30))
        energies = [np.sum(x[s : s + w] ** 2) for s in range(len(x) - w + 1)]
        start, stop = loudest_window(x, w)
        assert stop - start == w and np.isclose(energies[start], max(energies))
    burst = np.r_[np.zeros(100), 0.5 * np.ones(20), np.zeros(50), np.ones(10), np.zeros(30)]
    assert loudest_window(burst, 10) == (170, 180)  # the louder, shorter burst
    assert loudest_window(np.zeros(50), 10) == (0, 10)  # silence: the head
    assert loudest_window(np.ones(5), 10) == (0, 5)  # shorter than the window: all of it
    with pytest.raises(ParameterError, match="window=0"):
        loudest_window(burst, 0)
    with pytest.raises(ParameterError, match="mono"):
        loudest_window(np.zeros((10, 2)), 4)


def test_cut_clip_picks_the_event_then_resamples(benchmark_module):
    cut_clip = benchmark_module("short_clips").cut_clip
    rate = 16000
    x = np.zeros(5 * rate, np.float32)
    t = np.arange(rate // 4) / rate
    x[3 * rate : 3 * rate + len(t)] = np.sin(2 * np.pi * 440 * t)  # 0.25 s tone at 3 s
    cut = cut_clip(x, rate, seconds=0.5)
    assert cut.shape == (8000,) and np.isclose(np.sum(cut**2), np.sum(x**2))
    low = cut_clip(x, rate, seconds=0.5, sample_rate=8000)
    assert low.shape == (4000,) and low.dtype == np.float32


def test_build_case_writes_flac_once_atomically_and_keeps_folds(tmp_path, benchmark_module):
    short_clips = benchmark_module("short_clips")
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for i in range(6):
        path = src / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.normal(size=(2 * 22050, 2))).astype(np.float32), 22050)  # stereo 2 s
        rows.append(f"{path.name},{'ab'[i % 2]},{1 + i % 3}")
    (src / "data.csv").write_text("path,labels,fold\n" + "\n".join(rows) + "\n")
    source = read_manifest(src / "data.csv")
    case = short_clips.Case("t", "src", 0.5, 8000)
    out = tmp_path / "case"
    path, counts = short_clips.build_case(case, source, out)
    assert counts == {"written": 6, "kept": 0}
    manifest = short_clips.read_case(path, source)
    assert [(c.labels, c.fold) for c in manifest] == [(c.labels, c.fold) for c in source]
    for clip in manifest:
        info = sf.info(clip.path)
        assert (info.format, info.samplerate, info.frames, info.channels) == ("FLAC", 8000, 4000, 1)
    assert not list(out.rglob("*.tmp"))
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}
    (out / "audio" / "clip0.flac").unlink()  # an interrupted build: one file missing
    _, counts = short_clips.build_case(case, source, out)
    assert counts == {"written": 1, "kept": 5}
    assert all(p.stat().st_mtime_ns == m for p, m in written.items() if p.name != "clip0.flac")
    with pytest.raises(ParameterError, match="source manifest"):
        short_clips.build_case(short_clips.CASES["full"], source, out)


def test_smoke_subset_takes_a_handful_of_each_class_in_every_fold(esc50_root, benchmark_module):
    m = benchmark_module("short_clips").pick_subset(read_manifest(esc50_root), classes=10, per_class_per_fold=2)
    assert len(m) == 100
    assert {(c.labels[0], c.fold) for c in m} == {
        (lab, f) for lab in read_manifest(esc50_root).labels[:10] for f in range(1, 6)
    }


@pytest.mark.slow
def test_robustness_benchmark_smoke_runs_end_to_end(data_root, tmp_path):
    doc = REPO / "docs" / "benchmarks.md"
    before = doc.read_bytes() if doc.is_file() else None
    out, own_doc = tmp_path / "out", tmp_path / "bench.md"
    env = os.environ | {"SOUNDTAG_DATA": str(data_root)}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train.py"),
            "robustness",
            "--smoke",
            "--out",
            str(out),
            "--doc",
            str(own_doc),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "robustness.json").read_text())
    assert report["smoke"] and "--smoke" in report["command"] and report["machine"]
    cases = ["esc50-0.5s", "esc50-1s", "esc50-0.5s-8k", "esc10-0.5s"]
    ran = {(r["case"], r["recipe"]) for r in report["rows"]}
    assert {(c, r) for c in cases for r in ("plain-cnn-lh", "esc50-cpu-lh")} <= ran
    # auto runs everywhere (the full-length case too) or is skipped with a reason.
    auto = {r["case"] for r in report["rows"] if r["recipe"] == "auto"}
    skipped = {s["case"] for s in report["skipped"] if s["recipe"] == "auto"}
    assert auto | skipped == set(cases) | {"full"} and not auto & skipped
    assert all(s["why"] for s in report["skipped"])
    for r in report["rows"]:
        assert r["epochs"] == 1 and r["clips"] == 100 and r["clips_scored"] == 20 and r["train_clips"] == 80
        assert 0 <= r["top1"] <= 1 and 0 <= r["map3"] <= 1 and r["train_s"] > 0 and r["features_s"] >= 0
    for c in cases:
        with open(out / "clips" / c / "manifest-smoke.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 100 and {r["fold"] for r in rows} == {"1", "2", "3", "4", "5"}
    rates = {c: sf.info(next((out / "clips" / c / "audio").iterdir())).samplerate for c in cases}
    assert rates == {"esc50-0.5s": 16000, "esc50-1s": 16000, "esc50-0.5s-8k": 8000, "esc10-0.5s": 44100}
    text = own_doc.read_text()
    assert "<!-- train-robustness:start -->" in text and "| esc50-0.5s | plain-cnn-lh |" in text
    assert (doc.read_bytes() if doc.is_file() else None) == before


def test_robustness_runs_in_parts_keep_earlier_rows_and_compare_only_equal_epoch_scales(tmp_path, benchmark_module):
    bench = benchmark_module("train")

    def row(case, recipe, top1, minutes, scale, command):
        return {
            "case": case,
            "recipe": recipe,
            "top1": top1,
            "top1_last_epoch": top1,
            "map3": top1,
            "train_s": 60 * minutes,
            "features_s": 1,
            "epochs": 30,
            "sample_rate": 16000,
            "n_mels": 64,
            "hop_length": 320,
            "view": "lh 5 s",
            "model": "plain-cnn",
            "epochs_scale": scale,
            "command": command,
            "date": "2026-12-01",
            "machine": "m",
        }

    first = {
        "date": "2026-12-01",
        "machine": "m",
        "command": "c1",
        "smoke": False,
        "epochs_scale": 0.5,
        "cases": {"a": {"description": "A", "clips": 10}},
        "skipped": [],
        "rows": [row("a", "plain-cnn-lh", 0.3, 10, 0.5, "c1"), row("a", "auto", 0.6, 4, 0.5, "c1")],
    }
    results = tmp_path / "robustness.json"
    results.write_text(json.dumps(first))
    report = {
        "date": "2026-12-02",
        "machine": "m",
        "command": "c2",
        "smoke": False,
        "epochs_scale": 1.0,
        "cases": {},
        "skipped": [],
        "rows": [],
    }
    earlier = bench._earlier_rows(results, report)
    report["cases"] = dict(earlier["cases"]) | {"b": {"description": "B", "clips": 10}}
    report["rows"] = [
        row("a", "auto", 0.7, 5, 1.0, "c2"),
        row("b", "plain-cnn-lh", 0.5, 20, 1.0, "c2"),
        row("b", "auto", 0.4, 10, 1.0, "c2"),
    ]
    merged = bench._with_earlier(report, earlier)
    assert [(r["case"], r["recipe"], r["epochs_scale"]) for r in merged["rows"]] == [
        ("a", "auto", 1.0),
        ("a", "plain-cnn-lh", 0.5),
        ("a", "auto", 0.5),
        ("b", "plain-cnn-lh", 1.0),
        ("b", "auto", 1.0),
    ]
    assert merged["commands"] == ["c2", "c1"]
    text = "\n".join(bench._robustness_doc(merged))
    assert "- a (at 0.5x epochs): `auto` at or above the baseline in no more wall time: 60.0% vs 30.0%" in text
    assert (
        "- b: `auto` at or above the baseline in no more wall time: 40.0% vs 50.0%, 10.0 vs 20.0 min: not met" in text
    )
    assert "- a: `auto`" not in text, "a full-scale auto row has no full-scale baseline to be judged against"
    assert "| a | auto | 16 kHz, 64 mels, hop 320, lh 5 s | plain-cnn | 30 (0.5x) |" in text
    # the same case, recipe and scale trained again replaces its row
    report["rows"] = [row("a", "auto", 0.65, 4, 0.5, "c3")]
    again = bench._with_earlier(report, earlier)
    assert [r["top1"] for r in again["rows"] if r["case"] == "a" and r["recipe"] == "auto"] == [0.65]
