"""``soundtag data list / get / check`` through the command line's ``main()``, on the local copy
of the real datasets (``SOUNDTAG_DATA``) with every network access made to fail."""

from __future__ import annotations

import csv
import json

import pytest
import soundfile as sf

from soundtag import datasets
from soundtag.manifest import Manifest


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def offline(data_root, monkeypatch):
    """SOUNDTAG_DATA names the local copy, and any download would fail (a proxy nobody runs)."""
    monkeypatch.setenv("SOUNDTAG_DATA", str(data_root))
    for var in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return data_root


def test_data_list_names_every_registered_dataset(soundtag_main):
    status, out, err = soundtag_main("data", "list")
    assert status == 0 and err == ""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    names = [ln.split(":", 1)[0] for ln in lines]
    assert names == datasets.list_datasets() and {"esc50", "esc10", "fsdkaggle2018"} <= set(names)
    by_name = dict(ln.split(": ", 1) for ln in lines)
    assert "400" in by_name["esc10"] and "2000" in by_name["esc50"] and "41 labels" in by_name["fsdkaggle2018"]


def test_data_get_answers_with_the_local_copy_and_downloads_nothing(offline, soundtag_main, tmp_path):
    for name in ("esc10", "esc50", "fsdkaggle2018"):
        status, out, err = soundtag_main("data", "get", name, "--to", tmp_path / "downloads")
        assert status == 0, err
        assert _flat(out) == f"{name}: {offline / name}"
    assert not (tmp_path / "downloads").exists()


def test_data_get_of_an_unknown_name_exits_2_with_the_nearest(offline, soundtag_main, tmp_path):
    status, out, err = soundtag_main("data", "get", "esc5", "--to", tmp_path / "downloads")
    assert status == 2 and out == ""
    assert "unknown dataset 'esc5'" in _flat(err) and "esc50" in err and "Traceback" not in err
    assert not (tmp_path / "downloads").exists()


def test_data_check_of_a_registered_name_counts_what_its_csv_holds(offline, soundtag_main, esc10_root):
    with open(esc10_root / "esc10.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    folds = sorted({int(r["fold"]) for r in rows})
    status, out, err = soundtag_main("data", "check", "esc10")
    assert status == 0, err
    assert _flat(out) == (
        f"esc10: {len(rows)} clips, {len({r['category'] for r in rows})} labels, single-label, folds {folds}"
    )


def test_data_check_probe_save_writes_the_manifest_with_every_clips_header(
    offline, soundtag_main, esc10_root, tmp_path
):
    saved = tmp_path / "out" / "esc10.jsonl"
    saved.parent.mkdir()
    status, out, err = soundtag_main("data", "check", esc10_root, "--probe", "--save", saved)
    assert status == 0, err
    with open(esc10_root / "esc10.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    infos = {r["filename"].removeprefix("audio/"): sf.info(str(esc10_root / r["filename"])) for r in rows}
    hours = sum(i.duration for i in infos.values()) / 3600
    assert _flat(out).startswith(f"esc10: 400 clips, 10 labels, single-label, folds [1, 2, 3, 4, 5], {hours:.2f} h")
    assert "wrote" in out and saved.is_file()

    back = Manifest.from_jsonl(saved)
    assert len(back) == len(rows) and sorted(back.ids) == sorted(infos)
    for clip in back:
        info = infos[clip.id]
        assert clip.duration == pytest.approx(info.duration, abs=1e-9) and clip.sample_rate == info.samplerate
    by_file = {r["filename"].removeprefix("audio/"): r for r in rows}
    assert all(c.labels == (by_file[c.id]["category"],) and c.fold == int(by_file[c.id]["fold"]) for c in back)
    header = json.loads(saved.read_text().splitlines()[0])
    assert header["name"] == "esc10" and header["labels"] == list(back.labels) and header["multilabel"] is False

    # the saved manifest is itself a dataset `data check` reads, with the durations kept
    status, out, err = soundtag_main("data", "check", saved, "--probe")
    assert status == 0, err
    assert f"esc10: 400 clips, 10 labels, single-label, folds [1, 2, 3, 4, 5], {hours:.2f} h" in _flat(out)
