"""Manifests: every layout read, every problem reported at once, on the real metadata."""

from __future__ import annotations

import csv
import glob
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from soundtag.errors import DataError, ParameterError
from soundtag.manifest import Clip, Manifest, ManifestError, detect_layout, get_layout, read_manifest


def tiny_wav(path: Path, seconds: float = 0.2, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    return path


def test_esc50_layout(esc50_root):
    m = read_manifest(esc50_root)
    assert detect_layout(esc50_root) == "esc50"
    with open(esc50_root / "meta" / "esc50.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(m) == len(rows) == 2000
    by_target = {int(r["target"]): r["category"] for r in rows}
    assert list(m.labels) == [by_target[t] for t in sorted(by_target)]
    assert Counter(c.fold for c in m) == {k: 400 for k in range(1, 6)}
    assert all(c.group == r["src_file"] and c.labels == (r["category"],) for c, r in zip(m, rows))
    assert [c.fold for c in m] == [int(r["fold"]) for r in rows]
    assert all(Path(c.path).is_absolute() and Path(c.path).is_file() for c in m)


def test_esc10_original_layout(esc10_root):
    m = read_manifest(esc10_root)
    assert detect_layout(esc10_root) == "esc10"
    files = glob.glob(str(esc10_root / "audio" / "* - *" / "*.ogg"))
    assert len(m) == len(files) == 400 and len(set(m.ids)) == 400
    assert len(m.labels) == 10 and set(m.label_counts().values()) == {40}
    with open(esc10_root / "esc10.csv", newline="") as fh:
        official = {Path(r["filename"]).name: int(r["fold"]) for r in csv.DictReader(fh)}
    assert all(official[Path(c.path).name] == c.fold for c in m)


def test_fsdkaggle2018_real_train_csv(fsd2018_root):
    m = read_manifest(fsd2018_root, check_files=False)
    with open(fsd2018_root / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(m) == len(rows) == 9473
    assert set(m.labels) == {r["label"] for r in rows} and len(m.labels) == 41
    assert [c.manually_verified for c in m] == [r["manually_verified"] == "1" for r in rows]
    with pytest.raises(ManifestError) as err:  # the audio is not shipped: every row is reported
        read_manifest(fsd2018_root)
    assert len(err.value.problems) == 9473
    assert all("missing file" in p.message for p in err.value.problems)


def test_fsdkaggle2018_problems_are_reported_together_with_rows(fsd2018_root, tmp_path):
    with open(fsd2018_root / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:4]
    rows.append({"fname": "typo.wav", "label": "Hi_hat", "manually_verified": "0"})
    rows.append(dict(rows[0]))  # duplicated fname
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["fname", "label", "manually_verified"])
        w.writeheader()
        w.writerows(rows)
    for r in rows[:3] + rows[4:5]:
        tiny_wav(tmp_path / "audio_train" / r["fname"])  # rows[3] stays missing
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path)
    text = str(err.value)
    assert "row 6 (typo.wav): unknown label 'Hi_hat'" in text and "'Hi-hat'" in text
    assert f"row 7 ({rows[0]['fname']}): duplicated id" in text
    assert f"row 5 ({rows[3]['fname']}): missing file" in text
    assert len(err.value.problems) == 3


def test_generic_csv_and_its_errors(tmp_path):
    tiny_wav(tmp_path / "a.wav")
    tiny_wav(tmp_path / "sub" / "b.wav")
    (tmp_path / "clips.csv").write_text("path,labels,fold\na.wav,dog,1\nsub/b.wav,\"dog,cat\",2\n")
    m = read_manifest(tmp_path / "clips.csv")
    assert detect_layout(tmp_path / "clips.csv") == "csv"
    assert m.multilabel and m.labels == ("cat", "dog")
    assert m[1].path == str(tmp_path / "sub" / "b.wav") and m[1].labels == ("dog", "cat") and m[1].fold == 2

    (tmp_path / "bad.csv").write_text("path,lables\na.wav,dog\n")
    with pytest.raises(ManifestError, match="'labels'"):
        read_manifest(tmp_path / "bad.csv", layout="csv")
    (tmp_path / "empty_label.csv").write_text("path,labels\na.wav,\n")
    with pytest.raises(ManifestError, match="row 2 .*empty label"):
        read_manifest(tmp_path / "empty_label.csv")


def test_folder_tree_multilabel_csv_and_jsonl_round_trip(tmp_path):
    for cls in ("bird", "car"):
        for i in range(2):
            tiny_wav(tmp_path / "tree" / cls / f"{i}.wav")
    tree = read_manifest(tmp_path / "tree")
    assert detect_layout(tmp_path / "tree") == "folders"
    assert tree.labels == ("bird", "car") and len(tree) == 4

    audio = tmp_path / "fsd50k_audio"
    for name in ("101", "102"):
        tiny_wav(audio / f"{name}.wav")
    (tmp_path / "dev.csv").write_text('fname,labels,mids,split\n101,"Bark,Dog",/m/a,train\n102,Meow,/m/b,val\n')
    ml = read_manifest(tmp_path / "dev.csv", audio_dir=audio)
    assert detect_layout(tmp_path / "dev.csv") == "multilabel-csv"
    assert ml.multilabel and ml[0].id == "101.wav" and ml[0].labels == ("Bark", "Dog")
    assert [c.fold for c in ml] == [0, 1]

    saved = tree.to_jsonl(tmp_path / "tree.jsonl")
    again = read_manifest(saved)
    assert again.clips == tree.clips and again.labels == tree.labels


def test_layout_errors_name_what_to_do(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        detect_layout(tmp_path / "nope")
    with pytest.raises(ParameterError, match="esc50"):
        get_layout("esc5O")


def test_filter_returns_a_new_manifest(esc10_root):
    m = read_manifest(esc10_root)
    first = m.filter(lambda c: c.fold == 1)
    assert len(first) == 80 and len(m) == 400


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(list("abcdefg")), min_size=1, max_size=30))
def test_problems_report_exactly_the_repeated_ids(ids):
    m = Manifest.build([Clip(id=i, path="/x", labels=("l",)) for i in ids])
    dup = [p for p in m.problems(check_files=False) if "duplicated id" in p.message]
    assert len(dup) == len(ids) - len(set(ids))
