"""The ``soundtag`` command line, run as a real subprocess (``python -m soundtag.cli``)."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _all_commands() -> list[list[str]]:
    """Every command of the app, read from it, so that a new command is held to the same rules."""
    import typer.main

    from soundtag.cli import app

    out = []

    def walk(group, prefix: list[str]) -> None:
        for name, cmd in sorted(group.commands.items()):
            if hasattr(cmd, "commands"):  # a group (typer bundles its own click)
                walk(cmd, prefix + [name])
            else:
                out.append(prefix + [name])

    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _all_commands()


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def clips_csv(esc10_root, tmp_path_factory) -> tuple[Path, list[Path]]:
    """A generic CSV (path,label) listing 6 real ESC-10 clips, some not 5 s long."""
    audio = esc10_root / "audio"
    paths = [
        audio / "010 - Fire crackling/4-164661-B.ogg",
        audio / "007 - Helicopter/1-172649-F.ogg",
        audio / "001 - Dog bark/1-100032-A.ogg",
        audio / "002 - Rain/1-17367-A.ogg",
        audio / "004 - Baby cry/1-187207-A.ogg",
        audio / "009 - Rooster/1-26806-A.ogg",
    ]
    assert all(p.is_file() for p in paths)
    folder = tmp_path_factory.mktemp("cli-data")
    out = folder / "six.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for p in paths:
            w.writerow([str(p), p.parent.name.split(" - ", 1)[1]])
    return out, paths


def _summary_row(stdout: str, recipe: str) -> list[str]:
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)]
        if recipe in cells:
            return [c for c in cells if c]
    raise AssertionError(f"no summary row for {recipe} in:\n{stdout}")


# --- help ------------------------------------------------------------------------------------


def test_help_lists_commands(soundtag):
    res = soundtag("--help")
    assert res.returncode == 0, res.stderr
    for name in ("features", "show", "recipes", "data", "train", "evaluate"):
        assert re.search(rf"^\W*{name}\s", res.stdout, re.M), f"{name} missing from --help:\n{res.stdout}"


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_each_command_help_shows_an_example(command, soundtag):
    res = soundtag(*command, "--help")
    assert res.returncode == 0, res.stderr
    example = re.compile(rf"^\W*soundtag {' '.join(command)}\b", re.M)
    assert example.search(res.stdout), f"no example line 'soundtag {' '.join(command)} ...':\n{res.stdout}"


def _example_recipes(help_text: str) -> set[str]:
    lines = [ln for ln in help_text.splitlines() if re.match(r"^\W*soundtag ", ln)]
    return {m.group(1) for ln in lines for m in re.finditer(r"(?:--recipe|-r)\s+([\w.-]+)", ln)}


@pytest.mark.parametrize(
    "command",
    [
        ["features"],
        ["show"],
        ["recipes"],
        ["train"],
    ],
    ids=" ".join,
)
@pytest.mark.slow
def test_help_examples_name_existing_recipes(command, soundtag):
    from soundtag.recipe import list_recipes

    res = soundtag(*command, "--help")
    assert res.returncode == 0
    named = _example_recipes(res.stdout)
    unknown = {r for r in named if r not in list_recipes() and not r.endswith((".yaml", ".yml"))}
    assert not unknown, f"examples in `soundtag {' '.join(command)} --help` name unknown recipes {unknown}"


# --- features -----------------------------------------------------------------------------


@pytest.mark.slow
def test_features_computes_then_caches(clips_csv, tmp_path, soundtag):
    csv_path, paths = clips_csv
    cache = tmp_path / "cache"
    args = ["features", "--data", csv_path, "-r", "esc50-lh", "--cache", cache, "--no-progress", "--workers", "0"]

    first = soundtag(*args)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    assert f"({len(paths)} clips)" in first.stdout
    row = _summary_row(first.stdout, "esc50-lh")
    # recipe, clips, computed, cached, failed, hours, clips/s
    assert row[1:5] == ["6", "6", "0", "0"], row
    assert "fsd2018" not in first.stdout  # -r replaces the default recipes
    stores = [p for p in cache.iterdir() if p.is_dir()]
    assert len(stores) == 1 and stores[0].name.startswith("lh-16000hz-128mels-")
    assert f"store: {stores[0]}" in " ".join(first.stdout.split())
    parts = list((stores[0] / "parts").glob("part-*.npy"))
    assert parts and sum(np.load(p, mmap_mode="r").shape[0] for p in parts) == 6 * (1 + 5 * 16000 // 320)

    second = soundtag(*args)
    assert second.returncode == 0, second.stderr
    row = _summary_row(second.stdout, "esc50-lh")
    assert row[1:5] == ["6", "0", "6", "0"], row


@pytest.mark.slow
def test_features_override_typo_exits_2(clips_csv, tmp_path, soundtag):
    csv_path, _ = clips_csv
    res = soundtag(
        "features",
        "--data",
        csv_path,
        "-r",
        "esc50-x",
        "--cache",
        tmp_path / "c",
        "--no-progress",
        "-o",
        "view.overlpa=0.3",
    )
    assert res.returncode == 2
    assert "view.overlap" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("part-*.npy"))


@pytest.fixture
def mixed_csv(clips_csv, tmp_path) -> Path:
    """Two real clips and three undecodable files (random bytes, zero bytes, a cut Ogg)."""
    _, paths = clips_csv
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "junk.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (bad / "zero.wav").write_bytes(b"")
    (bad / "cut.ogg").write_bytes(paths[0].read_bytes()[:300])
    out = tmp_path / "mixed.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for p in [paths[2], bad / "junk.wav", paths[3], bad / "zero.wav", bad / "cut.ogg"]:
            w.writerow([str(p), "Dog bark" if p == paths[2] else "Rain"])
    return out


@pytest.mark.slow
def test_features_counts_each_undecodable_clip_once_over_recipes(mixed_csv, tmp_path, soundtag):
    res = soundtag(
        "features",
        "--data",
        mixed_csv,
        "-r",
        "esc50-lh",
        "-r",
        "esc50-x",
        "--cache",
        tmp_path / "c",
        "--no-progress",
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr
    for recipe in ("esc50-lh", "esc50-x"):
        # recipe, clips, computed, cached, failed
        assert _summary_row(res.stdout, recipe)[1:5] == ["5", "2", "0", "3"]
    out = _flat(res.stdout)
    assert "3 clip(s) could not be decoded" in out, out
    assert "failures.csv" in out


@pytest.mark.slow
def test_features_shard_defaults_to_the_launchers_rank_and_all_overrides_it(mixed_csv, tmp_path, soundtag, monkeypatch):
    monkeypatch.setenv("RANK", "0")  # as torchrun sets them for the first of two processes
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["features", "--data", mixed_csv, "-r", "esc50-x", "--no-progress", "--workers", "0"]
    mine = soundtag(*args, "--cache", tmp_path / "rank")
    assert mine.returncode == 0, mine.stderr
    # clips 0, 2 and 4 of 5: the two real clips and cut.ogg
    assert _summary_row(mine.stdout, "esc50-x")[1:5] == ["3", "2", "0", "1"]
    assert "1 clip(s) could not be decoded" in _flat(mine.stdout)
    assert [p.name for p in (tmp_path / "rank").rglob("failures*.csv")] == ["failures-shard-0-of-2.csv"]
    every = soundtag(*args, "--cache", tmp_path / "all", "--shard", "all")
    assert every.returncode == 0, every.stderr
    assert _summary_row(every.stdout, "esc50-x")[1:5] == ["5", "2", "0", "3"]
    assert [p.name for p in (tmp_path / "all").rglob("failures*.csv")] == ["failures.csv"]
    for bad in ("2/2", "one/4"):
        res = soundtag(*args, "--cache", tmp_path / "no-cache", "--shard", bad)
        assert res.returncode == 2 and bad in _flat(res.stderr), res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "no-cache").exists()


@pytest.mark.slow
def test_recipes_override_typo_exits_2(soundtag):
    res = soundtag("recipes", "fsd2018-x", "-o", "view.overlpa=0.5")
    assert res.returncode == 2
    assert "view.overlap" in res.stderr and "overlpa" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_recipes_prints_resolved_override(soundtag):
    res = soundtag("recipes", "fsd2018-x", "-o", "view.overlap=0.5")
    assert res.returncode == 0, res.stderr
    assert re.search(r"^\s*overlap: 0\.5\s*$", res.stdout, re.M), res.stdout
    listing = soundtag("recipes")
    assert listing.returncode == 0
    for name in ("esc50-lh", "esc50-x", "fsd2018-lh", "fsd2018-x"):
        assert name in listing.stdout


@pytest.mark.slow
def test_missing_dataset_exits_2_without_traceback(tmp_path, soundtag):
    missing = tmp_path / "no-such-dataset"
    res = soundtag("features", "--data", missing, "-r", "esc50-lh", "--cache", tmp_path / "c", "--no-progress")
    assert res.returncode == 2
    err = _flat(res.stderr)
    assert "no such file or folder" in err
    assert "no-such-dataset" in err
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.slow
def test_console_script_entry_point(tmp_path):
    script = Path(sys.executable).parent / "soundtag"
    if not script.is_file():
        pytest.skip("soundtag console script not installed in this environment")
    env = dict(os.environ, COLUMNS="250")
    ok = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and "features" in ok.stdout
    bad = subprocess.run([str(script), "recipes", "fsd2018-lhh"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2
    assert "fsd2018-lh" in bad.stderr and "Traceback" not in bad.stderr


# --- show ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_show_writes_a_png(clips_csv, tmp_path, soundtag):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    _, paths = clips_csv
    out = tmp_path / "x.png"
    res = soundtag("show", paths[1], "--recipe", "fsd2018-lh", "--out", out)
    assert res.returncode == 0, res.stderr
    assert out.is_file()
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(np.std(img[..., :3])) > 0.01  # not a blank canvas
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_show_missing_clip_exits_2(tmp_path, soundtag):
    res = soundtag("show", tmp_path / "nope.ogg", "--recipe", "fsd2018-lh", "--out", tmp_path / "nope.png")
    assert res.returncode == 2
    assert "no such file" in _flat(res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "nope.png").exists()


@pytest.mark.slow
def test_data_check_reports_missing_audio_unless_told_metadata_only(fsd2018_root, soundtag):
    strict = soundtag("data", "check", fsd2018_root)
    assert strict.returncode == 2 and "9473 problem(s)" in strict.stderr and "missing file" in strict.stderr
    relaxed = soundtag("data", "check", fsd2018_root, "--no-files")
    assert relaxed.returncode == 0, relaxed.stderr
    assert "9473 clips, 41 labels" in relaxed.stdout
