"""The recipe chosen from the data (soundtag.recipe_auto): small synthetic datasets of known
durations and rates, written here with soundfile, and what the rules of the module say
``auto`` must pick for each; the command line (``recipes auto``, ``data check --probe``,
``train --recipe auto``) through ``soundtag.cli.main()``.

Expected values are worked out by hand from the rules in the module's docstring, never by
running the rules.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from soundtag.errors import ParameterError
from soundtag.manifest import read_manifest
from soundtag.manifest.durations import duration_histogram, duration_summary, window_mismatch
from soundtag.models import create_model
from soundtag.recipe import Recipe, load_recipe
from soundtag.recipe_auto import auto_recipe, auto_recipes, choose_model, choose_sample_rate, choose_views
from soundtag.resolve import resolve_recipe

VGG_ONLY = ["alexnet-kernel", "seresnet-kernel", "vgg"]  # the models before plain-cnn existed


def _write_dataset(folder: Path, clips: list[tuple[float, int]], *, classes: int = 4, fmt: str = "WAV") -> Path:
    """A generic CSV (path,labels) of ``clips`` given as (seconds, native rate): quiet tones of
    known length, labels c0..c{classes-1} in turn. Returns the CSV's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (seconds, rate) in enumerate(clips):
        n = int(round(seconds * rate))
        t = np.arange(n) / rate
        wave = (0.1 * np.sin(2 * np.pi * (200 + 50 * (i % classes)) * t)).astype(np.float32)
        name = f"clip{i:03d}.{fmt.lower()}"
        sf.write(folder / name, wave, rate, format=fmt)
        rows.append({"path": name, "labels": f"c{i % classes}"})
    csv_path = folder / "clips.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "labels"])
        w.writeheader()
        w.writerows(rows)
    return csv_path


@pytest.fixture(scope="module")
def short8k(tmp_path_factory) -> Path:
    """40 clips of 0.30-1.00 s (evenly spaced) at 8 kHz: 90th percentile 0.93 s, median 0.65 s."""
    return _write_dataset(tmp_path_factory.mktemp("short8k"), [(d, 8000) for d in np.linspace(0.3, 1.0, 40)])


@pytest.fixture(scope="module")
def long44k(tmp_path_factory) -> Path:
    """20 clips of 30 s at 44.1 kHz (FLAC: silence-like tones stay small)."""
    return _write_dataset(tmp_path_factory.mktemp("long44k"), [(30.0, 44100)] * 20, fmt="FLAC")


@pytest.fixture(scope="module")
def mixed_rates(tmp_path_factory) -> Path:
    """21 clips of 2 s: 10 at 8 kHz, 6 at 16 kHz, 5 at 44.1 kHz; the lower median is 16 kHz."""
    rates = [8000] * 10 + [16000] * 6 + [44100] * 5
    return _write_dataset(tmp_path_factory.mktemp("mixed"), [(2.0, r) for r in rates])


@pytest.fixture(scope="module")
def mostly_short(tmp_path_factory) -> Path:
    """30 clips of 0.5 s and 10 of 4 s at 16 kHz: 90th percentile 4 s, median 0.5 s."""
    return _write_dataset(tmp_path_factory.mktemp("mostly_short"), [(0.5, 16000)] * 30 + [(4.0, 16000)] * 10)


def _auto(csv_path: Path, **kwargs) -> tuple[Recipe, list[str]]:
    kwargs.setdefault("cpu_count", 2)
    kwargs.setdefault("models", VGG_ONLY)
    return auto_recipe(read_manifest(csv_path), **kwargs)


def _mentions(reasons: list[str], *words: str) -> bool:
    return any(all(w in line for w in words) for line in reasons)


# --- what auto picks, dataset by dataset ------------------------------------------------------


def test_short_clips_at_8k(short8k):
    r, reasons = _auto(short8k)
    assert r.name == "auto" and r.view.kind == "lh"
    assert r.audio.sample_rate == 8000
    assert r.view.duration == pytest.approx(0.9)  # p90 0.93 s to the nearest 0.1 s
    assert (r.features.n_fft, r.features.hop_length, r.features.n_mels) == (512, 80, 64)  # 40 ms -> 512; 10 ms
    assert r.features.fmax is None  # the Nyquist rate, 4 kHz
    assert r.training.model == "vgg" and r.training.model_args == {"widths": [16, 32, 64, 128]}
    # 32 training clips x 64 mels x (7200 // 80 = 90 frames): 7.68e8 / 184320 = 4167 -> capped at 75
    assert r.training.epochs == 30  # provisional: training sets them from timed steps
    assert r.view.padding == "center"  # median 0.65 s >= half of 0.9 s
    assert r.view.normalization == "global" and r.view.normalize_over == "sound"
    aug = r.training.augment
    assert not aug.erasing.enabled and aug.mixup.enabled
    assert aug.shift.enabled and aug.shift.relative_to == "sound"
    assert aug.specaugment.enabled and aug.specaugment.relative_to == "sound"
    assert (aug.specaugment.time_masks, aug.specaugment.freq_masks) == (1, 1)
    assert aug.freq_shift.enabled and aug.freq_shift.max_bins == 2
    assert r.validation == "all"
    assert "short8k" in r.description or "clips" in r.description
    assert "40 clips" in r.description
    # the reasons say what was chosen and why, one choice a line
    assert _mentions(reasons, "sample rate 8000 Hz", "100% of clips are 8000 Hz natively")
    assert _mentions(reasons, "LH window 0.9 s", "90th percentile", "0.93 s")
    assert _mentions(reasons, "n_fft 512", "hop 80", "10 ms", "64 mels")
    assert _mentions(reasons, "padding center")
    assert _mentions(reasons, "normalisation global", "sound")
    assert _mentions(reasons, "augmentation", "no random erasing", "2 of the 64 mel bins")
    assert _mentions(reasons, "model vgg", "CPU")
    # the epochs are provisional until training times this machine's steps against the budget
    assert r.training.epochs == 30 and _mentions(reasons, "epochs 30 for now", "times a few real steps")


def test_long_clips_at_44k(long44k):
    r, reasons = _auto(long44k)
    # 44.1 kHz snapped down to at most 16 kHz: a dearer resolution has not earned its cost
    assert r.audio.sample_rate == 16000
    assert r.view.duration == 10.0  # p90 30 s, capped at 10 s
    assert (r.features.n_fft, r.features.hop_length, r.features.n_mels) == (1024, 320, 64)
    assert r.view.padding == "center"
    assert _mentions(reasons, "LH window 10 s", "kept within 0.5-10 s")
    assert _mentions(reasons, "sample rate 16000 Hz", "100% of clips are 44100 Hz natively", "not scored more")
    assert _mentions(reasons, "20 ms", "64 mels")


def test_x_chunk_of_long_clips(long44k):
    r, reasons = _auto(long44k, view="x")
    assert r.name == "auto-x" and r.view.kind == "x"
    assert r.view.duration == 4.0  # half the median (15 s), capped at 4 s
    assert r.view.normalization == "per_feature"
    assert r.features.hop_length == 320  # the LH window (10 s) sets the hop: 20 ms
    assert _mentions(reasons, "X chunk 4 s", "half the median")


def test_x_chunk_never_longer_than_the_window(short8k):
    r, _ = _auto(short8k, view="x")
    assert r.view.duration == 0.5  # half of 0.65 s -> 0.3, floored at 0.5 s


def test_mixed_rates_take_the_lower_median(mixed_rates):
    r, reasons = _auto(mixed_rates)
    assert r.audio.sample_rate == 16000  # 11th of 21 sorted rates
    assert r.view.duration == 2.0
    assert (r.features.n_fft, r.features.hop_length, r.features.n_mels) == (1024, 160, 64)  # window <= 2 s: 10 ms
    assert _mentions(reasons, "sample rate 16000 Hz", "48% of clips are below it natively and are upsampled")


def test_mostly_short_clips_are_repeated(mostly_short):
    r, reasons = _auto(mostly_short)
    assert r.view.duration == 4.0
    assert r.view.padding == "repeat"  # median 0.5 s < half of 4 s
    assert r.features.hop_length == 320  # a 4 s window: 20 ms
    assert _mentions(reasons, "padding repeat", "0.50 s", "repeated")


def test_plain_cnn_is_preferred_on_cpu_when_registered(short8k):
    r, reasons = _auto(short8k, models=[*VGG_ONLY, "plain-cnn"])
    assert r.training.model == "plain-cnn" and r.training.model_args == {"pool_before_norm": True}
    assert _mentions(reasons, "model plain-cnn")
    # Max-pooling ahead of each block's BatchNorm + ReLU: the order the CPU recipes train in.
    model = create_model(r.training.model, num_classes=3, **r.training.model_args)
    assert [type(m).__name__ for m in model.features[:4]] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]


def test_gpu_gets_a_wider_model_and_a_larger_budget(short8k):
    r, reasons = _auto(short8k, device="cuda", models=[*VGG_ONLY, "plain-cnn"])
    assert r.training.model == "vgg" and r.training.model_args == {"widths": [32, 64, 128, 256]}
    assert r.training.epochs == 60  # provisional, as on a CPU: the GPU's steps are timed before training
    assert _mentions(reasons, "GPU")


def test_unverified_clips_make_validation_verified_only(tmp_path):
    folder = tmp_path / "noisy"
    folder.mkdir()
    rows = []
    for i in range(10):
        sf.write(folder / f"c{i}.wav", np.zeros(8000, np.float32), 16000)
        rows.append({"path": f"c{i}.wav", "labels": f"l{i % 2}", "manually_verified": str(int(i < 6))})
    with open(folder / "clips.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "labels", "manually_verified"])
        w.writeheader()
        w.writerows(rows)
    r, reasons = _auto(folder / "clips.csv")
    assert r.validation == "verified_only"
    assert _mentions(reasons, "4 of 10 clips")


# --- overrides, validation, YAML --------------------------------------------------------------


def test_overrides_win(short8k):
    r, reasons = _auto(short8k, overrides=["training.epochs=3", "view.duration=2.5", "audio.sample_rate=16000"])
    assert r.training.epochs == 3 and r.view.duration == 2.5 and r.audio.sample_rate == 16000
    assert reasons[-1] == "overrides applied last: training.epochs=3, view.duration=2.5, audio.sample_rate=16000"


def test_an_override_typo_names_the_nearest_key(short8k):
    with pytest.raises(ParameterError, match=r"view\.duration"):
        _auto(short8k, overrides=["view.duratoin=2"])


def test_round_trips_through_yaml(short8k, long44k, tmp_path):
    for source in (short8k, long44k):
        for view in ("lh", "x"):
            r, _ = _auto(source, view=view)
            path = tmp_path / f"{r.name}.yaml"
            path.write_text(r.to_yaml())
            assert load_recipe(path) == r


def test_the_resolver_dispatches_auto(short8k):
    m = read_manifest(short8k)
    r = resolve_recipe("auto", ["training.epochs=4"], manifest=m).recipe
    assert r.name == "auto" and r.audio.sample_rate == 8000 and r.training.epochs == 4
    assert resolve_recipe("auto-x", manifest=m).recipe.view.kind == "x"
    again = load_recipe(r, ["training.seed=7"])  # a Recipe object takes overrides too
    assert again.training.seed == 7 and again.training.epochs == 4 and r.training.seed == 0


def test_auto_without_a_dataset_is_a_clear_error():
    with pytest.raises(ParameterError, match="--data"):
        load_recipe("auto")
    with pytest.raises(ParameterError, match="--data"):
        resolve_recipe("auto")
    with pytest.raises(ParameterError, match="did you mean 'auto'"):
        load_recipe("autoo")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"view": "y"}, "view='y'"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"cpu_count": 0}, "cpu_count=0"),
    ],
)
def test_bad_arguments_name_the_value(short8k, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        _auto(short8k, **kwargs)


def test_a_dataset_without_readable_headers_is_a_data_error(tmp_path):
    from soundtag.errors import DataError

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"not audio")
    (folder / "clips.csv").write_text("path,labels\na.wav,x\n")
    with pytest.raises(DataError, match="readable header"):
        _auto(folder / "clips.csv")


# --- the rules as pure functions ------------------------------------------------------------------


def test_sample_rate_rule():
    assert choose_sample_rate([8000] * 19 + [44100])[0] == 8000
    assert choose_sample_rate([22050] * 3)[0] == 16000  # snapped down to the 16 kHz cap
    assert choose_sample_rate([48000])[0] == 16000  # at most 16 kHz
    assert "has not scored more" in choose_sample_rate([48000])[1]
    assert "has not scored more" not in choose_sample_rate([16000])[1]
    assert choose_sample_rate([11025])[0] == 8000  # snapped down, never up
    assert choose_sample_rate([6000])[0] == 6000  # below every standard rate: kept
    with pytest.raises(ParameterError, match="empty"):
        choose_sample_rate([])


def test_views_rule_trains_x_only_where_the_median_clip_holds_two_chunks():
    assert choose_views([5.0] * 9, 2.5)[0] == ("lh", "x")
    assert choose_views([4.96] * 9, 2.5)[0] == ("lh", "x")  # rounding to 0.1 s is not a reason to drop X
    views, why = choose_views([0.6] * 9, 0.5)
    assert views == ("lh",) and "would see what LH sees" in why and "0.60 s" in why
    with pytest.raises(ParameterError, match="chunk"):
        choose_views([1.0], 0)


def test_auto_recipes_give_both_views_of_long_clips_and_lh_alone_for_short_ones(short8k, long44k):
    recipes, reasons = auto_recipes(read_manifest(long44k), models=VGG_ONLY)
    assert list(recipes) == ["lh", "x"]
    assert [(r.name, r.view.kind) for r in recipes.values()] == [("auto", "lh"), ("auto-x", "x")]
    assert _mentions(reasons, "views LH + X", "blended out of fold")
    # each line once: the lines both views share are not repeated for X
    assert len(reasons) == len(set(reasons)) and _mentions(reasons, "X chunk 4 s")
    recipes, reasons = auto_recipes(read_manifest(short8k), models=VGG_ONLY)
    assert list(recipes) == ["lh"] and _mentions(reasons, "view LH alone")
    recipes, reasons = auto_recipes(read_manifest(short8k), views=["x"], models=VGG_ONLY)
    assert list(recipes) == ["x"] and _mentions(reasons, "view X alone, as asked")
    with pytest.raises(ParameterError, match="lh, x, or both"):
        auto_recipes(read_manifest(short8k), views=["lh", "lh"])


def test_model_rules():
    assert choose_model(9000, "gpu", VGG_ONLY)[:2] == ("vgg", {})
    assert choose_model(9000, "cpu", VGG_ONLY)[:2] == ("vgg", {"widths": [16, 32, 64, 128]})


def test_duration_distribution_helpers():
    s = duration_summary([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["min"], s["p50"], s["max"]) == (1.0, 3.0, 5.0)
    assert s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)
    rows = dict(duration_histogram([0.2, 0.7, 0.8, 3.0, 40.0]))
    assert rows["0-0.5 s"] == 1 and rows["0.5-1 s"] == 2 and rows["2-5 s"] == 1 and rows[">= 30 s"] == 1
    assert sum(rows.values()) == 5
    assert "shorter than half" in window_mismatch([0.5] * 6 + [5.0] * 4, 5.0)
    assert "longer than twice" in window_mismatch([30.0] * 3, 5.0)
    assert window_mismatch([30.0] * 3, 5.0, kind="x") is None  # X chunks cover long clips
    assert window_mismatch([4.0, 5.0, 6.0], 5.0) is None


# --- the command line ---------------------------------------------------------------------------


def test_cli_recipes_auto_prints_reasons_and_yaml(short8k, soundtag_main):
    code, out, err = soundtag_main("recipes", "auto", "--data", short8k, "-o", "training.epochs=7")
    assert code == 0, err
    assert "# sample rate 8000 Hz" in out and "# LH window 0.9 s" in out
    data = yaml.safe_load(out)  # the reasons are YAML comments
    assert data["name"] == "auto" and data["audio"]["sample_rate"] == 8000
    assert data["training"]["epochs"] == 7


def test_cli_recipes_auto_takes_a_folder(short8k, tmp_path, soundtag_main):
    folder = tmp_path / "classes"
    for i, f in enumerate(sorted(short8k.parent.glob("*.wav"))[:8]):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{i % 2}" / f.name).write_bytes(f.read_bytes())
    code, out, err = soundtag_main("recipes", "auto-x", "--data", folder)
    assert code == 0, err
    assert yaml.safe_load(out)["view"]["kind"] == "x"


def test_cli_recipes_auto_without_data_says_pass_data(soundtag_main):
    code, out, err = soundtag_main("recipes", "auto")
    assert code == 2
    assert "--data" in err and "Traceback" not in err + out


def test_cli_recipes_listing_mentions_auto(soundtag_main):
    code, out, _ = soundtag_main("recipes")
    assert code == 0 and "auto" in out and "esc50-cpu-lh" in out


def test_cli_data_check_prints_durations_and_warns(short8k, soundtag_main):
    code, out, err = soundtag_main("data", "check", short8k, "--probe")
    assert code == 0, err
    assert "durations: min 0.30 s, p10 0.37 s, p50 0.65 s, p90 0.93 s, max 1.00 s" in out
    counts = {m[0]: int(m[1]) for m in re.findall(r"^\s+(\S+(?: \S+)?) s\s+(\d+)", out, re.M)}
    # 0.30 + k * 0.7/39 s: k = 0..11 under 0.5 s, 12..38 under 1 s, and the 1.00 s clip
    assert counts == {"0-0.5": 12, "0.5-1": 27, "1-2": 1, "2-5": 0, "5-10": 0, "10-30": 0, ">= 30": 0}
    assert "esc50-cpu-lh's 5 s window (the default" in out
    assert "warning: 100% of clips are shorter than half the 5 s window" in out


def test_cli_data_check_with_a_recipe(short8k, long44k, soundtag_main):
    code, out, err = soundtag_main("data", "check", short8k, "-r", "auto")
    assert code == 0, err
    assert "auto's 0.9 s window: most clips fit it" in out and "warning" not in out
    code, out, err = soundtag_main("data", "check", long44k, "--probe", "-r", "esc50-cpu-lh")
    assert code == 0, err
    assert "100% of clips are longer than twice the 5 s window" in out


@pytest.mark.slow
@pytest.mark.parametrize("named", [True, False], ids=["--recipe auto", "no recipe named"])
def test_cli_train_auto_prints_reasons_and_saves_the_resolved_recipe(short8k, tmp_path, soundtag_main, named):
    run = tmp_path / "run"
    code, out, err = soundtag_main(
        "train",
        "--data",
        short8k,
        *(["--recipe", "auto"] if named else []),  # auto is the default
        "--out",
        run,
        "--fold",
        "0",
        "--cache",
        tmp_path / "cache",
        "--no-progress",
        "-o",
        "training.epochs=1",
        "-o",
        "training.model=vgg",
        "-o",
        "training.model_args={widths: [8, 16]}",
    )
    assert code == 0, err
    assert "auto recipe: sample rate 8000 Hz" in out and "auto recipe: overrides applied last" in out
    saved = load_recipe(run / "recipe.yaml")
    assert saved.name == "auto" and saved.audio.sample_rate == 8000 and saved.training.epochs == 1
    assert saved.view.duration == pytest.approx(0.9)
    assert saved.training.keep == "last" and "weights of the last epoch (keep: last)" in out
    # the kept weights were named before training: the metrics do not call themselves optimistic
    assert "out-of-fold" in out or "metrics of fold(s)" in out
    assert "optimistic" not in out


def test_a_run_that_keeps_the_best_epoch_says_its_scores_were_picked_on_the_scored_clips():
    from soundtag.reports import metrics_table

    metrics = {"all": {"clips": 10, "map@3": 0.5, "top1": 0.4, "log_loss": 1.0}, "complete": True}
    assert "optimistic" not in metrics_table("runs/r", metrics).title
    picked = metrics_table("runs/r", {**metrics, "selected_on_scored_clips": True}).title
    assert "training.keep: best" in picked and "optimistic" in picked


def test_auto_is_what_features_and_show_resolve_by_default_even_from_one_clip(short8k):
    from soundtag.commands import load_recipes
    from soundtag.manifest import Clip, Manifest
    from soundtag.recipe import with_sibling_views

    clip = read_manifest(short8k)[0]
    one = Manifest.build([Clip(Path(clip.path).name, clip.path)], name="one")
    recipes = load_recipes(with_sibling_views(["auto"]), [], manifest=one)
    assert [(r.name, r.view.kind) for r in recipes] == [("auto", "lh"), ("auto-x", "x")]
    assert recipes[0].audio.sample_rate == 8000


def test_the_data_line_names_channels_where_the_manifest_has_them():
    from soundtag.recipe_auto import DataProfile, _data_line

    p = DataProfile(
        name="d",
        clips=4,
        labels=2,
        multilabel=False,
        folds=None,
        durations=(1.0, 1.0, 2.0),
        rates=(16000, 16000, 8000),
        channels=(1, 1, 2),
    )
    line = _data_line(p)
    assert "channels 1 (67%), 2 (33%)" in line
    assert "native rates 16000 Hz (67%), 8000 Hz (33%)" in line
    assert "1 file(s) without a readable header" in line
    assert p.train_clips == 3  # 5 folds when the data gives none: 4 * 4/5
