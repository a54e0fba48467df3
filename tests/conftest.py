"""Shared fixtures: the real audio data, found through SOUNDTAG_DATA (see the README), and the
helpers and tiny real runs that several test modules use.

Test modules never import each other: what they share lives here and reaches them as fixtures
(a fixture named like the helper it returns, so ``soundtag(...)`` reads the same everywhere).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

#: Recipe overrides for tiny real runs: two epochs of a two-layer VGG on 32 mel bins.
FAST = [
    "training.epochs=2",
    "training.batch_size=8",
    "training.model_args={widths: [8, 16]}",
    "training.model=vgg",
    "features.n_mels=32",
]


#: Session fixtures that train: a test using one, directly or through another fixture, is slow
#: even when it forgets its @pytest.mark.slow (make test-fast must stay quick).
TRAINING_FIXTURES = {"dirty_run"}


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _data_root() -> Path | None:
    root = os.environ.get("SOUNDTAG_DATA")
    path = Path(root) if root else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if root is None:
        pytest.skip(
            "real audio data not found: set SOUNDTAG_DATA to the folder holding esc50/, "
            "esc10/ and fsdkaggle2018/ (in CI: ../shared/data)"
        )
    return root


@pytest.fixture(scope="session")
def esc50_root(data_root: Path) -> Path:
    return data_root / "esc50"


@pytest.fixture(scope="session")
def esc10_root(data_root: Path) -> Path:
    return data_root / "esc10"


@pytest.fixture(scope="session")
def fsd2018_root(data_root: Path) -> Path:
    return data_root / "fsdkaggle2018"


# --- helpers, as fixtures ---------------------------------------------------------------------


def _soundtag(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """Run ``soundtag ARGS`` the way the console script does (``soundtag.cli:main``)."""
    env = dict(
        os.environ,
        COLUMNS="250",
        PYTHONIOENCODING="utf-8",
        NO_COLOR="1",
        TERM="dumb",
        PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return subprocess.run(
        [sys.executable, "-m", "soundtag.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def soundtag():
    """``soundtag(*args, cwd=None, timeout=120)``: the command line as a real subprocess."""
    return _soundtag


@pytest.fixture
def soundtag_main(monkeypatch, capsys):
    """``soundtag_main(*args) -> (exit status, stdout, stderr)``: the command line through
    ``soundtag.cli.main()`` in this process, much quicker than :func:`soundtag`'s subprocess
    (set the environment with ``monkeypatch`` first)."""

    def run(*args) -> tuple[int, str, str]:
        from soundtag import cli

        monkeypatch.setenv("COLUMNS", "400")  # consoles made from now on keep a message on one line
        monkeypatch.setattr(sys, "argv", ["soundtag", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            cli.main()
        out, err = capsys.readouterr()
        return done.value.code or 0, out, err

    return run


def _write_subset_csv(esc10_root: Path, path: Path, classes=4, per_class_per_fold=5, folds=(1, 2)) -> Path:
    """A CSV (path,labels,fold) of the first ``classes`` ESC-10 classes, ``per_class_per_fold``
    real clips of each per fold, ESC-10's five folds folded onto ``folds``."""
    from soundtag.manifest import read_manifest

    m = read_manifest(esc10_root)
    wanted = m.labels[:classes]
    rows, taken = [], Counter()
    for c in m:
        lab = c.labels[0]
        fold = 1 + (c.fold - 1) % len(folds)
        if lab in wanted and taken[lab, fold] < per_class_per_fold:
            taken[lab, fold] += 1
            rows.append({"path": c.path, "labels": lab, "fold": fold})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "labels", "fold"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def write_subset_csv():
    """``write_subset_csv(esc10_root, path, classes=4, per_class_per_fold=5, folds=(1, 2))``."""
    return _write_subset_csv


@pytest.fixture(scope="session")
def fast() -> list[str]:
    """The tiny-run recipe overrides (a fresh list each session; do not mutate it)."""
    return list(FAST)


def _benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, loaded once (benchmarks/ is not a package)."""
    import importlib.util
    import sys

    key = f"soundtag_benchmarks_{name}"
    if key not in sys.modules:
        repo = Path(__file__).resolve().parents[1]
        spec = importlib.util.spec_from_file_location(key, repo / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # before running it: its dataclasses look their module up
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]


@pytest.fixture(scope="session")
def benchmark_module():
    """``benchmark_module("train")``: a script of benchmarks/ as a module, loaded once."""
    return _benchmark


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="session")
def read_csv_rows():
    """``read_csv_rows(path) -> (header, rows as dicts)``."""
    return _read_csv_rows


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="session")
def snapshot():
    """``snapshot(folder) -> {file name: bytes}`` of the files directly in ``folder``."""
    return _snapshot


# --- tiny real data and runs shared by several modules ------------------------------------------


@pytest.fixture(scope="session")
def subset_csv(esc10_root, tmp_path_factory) -> Path:
    """The default subset (4 ESC-10 classes x 5 clips x 2 folds = 40 real clips), written once."""
    return _write_subset_csv(esc10_root, tmp_path_factory.mktemp("esc10-subset") / "subset.csv")


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the session's tiny runs (stores are keyed by their feature config,
    so runs with different features share it safely); tests that count computed clips use
    their own."""
    return tmp_path_factory.mktemp("feature-cache")


#: The clips of the dirty dataset made from real ones, and the check each must trip.
DIRTY = {
    "audio/quiet.wav": "near_silent",
    "audio/clipped.wav": "clipped",
    "audio/short.wav": "short",
    "audio/silent.wav": "silent",
}


def _make_dirty_dataset(esc10_root: Path, folder: Path) -> Path:
    """Copy 5 clips per class and fold of 4 ESC-10 classes, add dirty clips made from them, and
    write ``dirty.csv`` (relative paths, so clip ids are ``audio/<file>``). Returns the CSV."""
    import soundfile as sf

    from soundtag.manifest import read_manifest

    m = read_manifest(esc10_root)
    classes = m.labels[:4]  # Dog bark, Rain, Sea waves, Baby cry
    audio = folder / "audio"
    audio.mkdir(parents=True)
    rows, taken, by_class = [], Counter(), defaultdict(list)
    for c in m:
        lab, fold = c.labels[0], 1 + (c.fold - 1) % 2
        if lab in classes and taken[lab, fold] < 5:
            taken[lab, fold] += 1
            shutil.copy(c.path, audio / Path(c.path).name)
            rows.append([f"audio/{Path(c.path).name}", lab, fold])
            by_class[lab].append(audio / Path(c.path).name)

    def normalised(path):
        x, rate = sf.read(path, dtype="float32")
        return x / np.abs(x).max(), rate

    x, rate = normalised(by_class[classes[0]][0])
    sf.write(audio / "quiet.wav", x * 10 ** (-55 / 20), rate, subtype="PCM_16")  # peak -55 dBFS
    rows.append(["audio/quiet.wav", classes[0], 1])
    x, rate = normalised(by_class[classes[1]][0])
    sf.write(audio / "clipped.wav", np.clip(10 * x, -1, 1), rate, subtype="PCM_16")  # rain, 20 dB too loud
    rows.append(["audio/clipped.wav", classes[1], 2])
    x, rate = normalised(by_class[classes[2]][0])
    short = np.zeros(5 * rate, dtype=np.float32)
    short[: int(0.3 * rate)] = x[: int(0.3 * rate)]  # 0.3 s of sea waves, then digital silence
    sf.write(audio / "short.wav", short, rate, subtype="PCM_16")
    rows.append(["audio/short.wav", classes[2], 1])
    sf.write(audio / "silent.wav", np.zeros(5 * rate, dtype=np.float32), rate, subtype="PCM_16")
    rows.append(["audio/silent.wav", classes[1], 1])
    original = by_class[classes[3]][0]  # a baby cry, copied byte for byte and labelled dog bark
    shutil.copy(original, audio / f"dup-{original.name}")
    rows.append([f"audio/dup-{original.name}", classes[0], 2])
    out = folder / "dirty.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "labels", "fold"])
        w.writerows(rows)
    return out


@pytest.fixture(scope="session")
def dirty_clips() -> dict[str, str]:
    """The dirty clips of :func:`dirty_run`'s dataset and the reason each must be found for."""
    return dict(DIRTY)


@pytest.fixture(scope="session")
def dirty_run(esc10_root, tmp_path_factory) -> Path:
    """A finished tiny run (two folds, two epochs, about 15 s) over 40 real ESC-10 clips plus
    five dirty ones made from them (near-silent, clipped, short, silent, and a duplicate with
    another label), trained once per session. Its ``cache`` is beside it; treat it as
    read-only (copy it to change it)."""
    from soundtag.manifest import read_manifest
    from soundtag.recipe import load_recipe
    from soundtag.training import train

    folder = tmp_path_factory.mktemp("dirty")
    csv_path = _make_dirty_dataset(esc10_root, folder)
    train(
        read_manifest(csv_path),
        load_recipe("esc50-lh", FAST),
        folder / "run",
        cache_dir=folder / "cache",
        progress=False,
        data_source=str(csv_path),
    )
    return folder / "run"
