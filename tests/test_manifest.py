"""Manifests: the real ESC-50 / ESC-10 / FSDKaggle2018 metadata, small layouts made in tmp_path,
and the bookkeeping of Manifest (problems, filter, jsonl).

Expectations come from the datasets' own CSV files (read here with the csv module), from
counting files with glob, or from the numbers stated in /work/shared/data/README.md; never from
running soundtag.
"""

from __future__ import annotations

import csv
import glob
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from soundtag.errors import DataError, ParameterError
from soundtag.manifest import (
    FSDKAGGLE2018_LABELS,
    Clip,
    Manifest,
    ManifestError,
    detect_layout,
    get_layout,
    read_manifest,
)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _tiny_wav(path: Path, sr: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(80, 0.1, dtype=np.float32), sr)
    return path


# --- ESC-50 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def esc50(esc50_root):
    return read_manifest(esc50_root)


@pytest.fixture(scope="module")
def esc50_rows(esc50_root):
    return _rows(esc50_root / "meta" / "esc50.csv")


def test_esc50_is_detected(esc50_root):
    assert detect_layout(esc50_root) == "esc50"


def test_esc50_counts_labels_and_folds(esc50, esc50_rows):
    # README: 2000 clips, 50 classes x 40, folds 1-5.
    assert len(esc50_rows) == 2000
    assert len(esc50) == len(esc50_rows) == 2000
    assert len(esc50.labels) == 50 and len(set(esc50.labels)) == 50
    assert not esc50.multilabel
    assert Counter(esc50.label_counts().values()) == {40: 50}
    folds = Counter(c.fold for c in esc50)
    assert set(folds) == {1, 2, 3, 4, 5}
    assert all(n == 400 for n in folds.values())
    assert folds == Counter(int(r["fold"]) for r in esc50_rows)


def test_esc50_vocabulary_follows_target(esc50, esc50_rows):
    by_target = {int(r["target"]): r["category"] for r in esc50_rows}
    assert sorted(by_target) == list(range(50))
    assert list(esc50.labels) == [by_target[t] for t in range(50)]
    # and not simply the alphabetical order
    assert list(esc50.labels) != sorted(esc50.labels)


def test_esc50_clips_match_the_csv(esc50, esc50_rows, esc50_root):
    by_name = {r["filename"]: r for r in esc50_rows}
    assert [c.id for c in esc50] == [r["filename"] for r in esc50_rows]
    for clip in esc50:
        row = by_name[clip.id]
        assert clip.labels == (row["category"],)
        assert clip.fold == int(row["fold"])
        assert clip.group == row["src_file"]
        p = Path(clip.path)
        assert p.is_absolute() and p.is_file(), clip.path
        assert p.name == row["filename"]
        assert p.parent.resolve() == (esc50_root / "audio").resolve()


def test_esc50_source_groups_do_not_leak_across_folds(esc50, esc50_rows):
    # The groups carry exactly the folds that the CSV gives each src_file.
    csv_folds: dict[str, set] = defaultdict(set)
    for r in esc50_rows:
        csv_folds[r["src_file"]].add(int(r["fold"]))
    got: dict[str, set] = defaultdict(set)
    for c in esc50:
        got[c.group].add(c.fold)
    assert got == csv_folds
    # Within a class, fragments of one source recording always share a fold (the ESC-50
    # promise). NB: the official metadata reuses a few src_file ids across two *different*
    # classes in different folds (e.g. clock_tick / clock_alarm), so "a src_file never spans
    # two folds" is not true of the real data; the class-wise form is.
    per_class: dict[tuple, set] = defaultdict(set)
    for c in esc50:
        per_class[(c.group, c.labels)].add(c.fold)
    assert all(len(f) == 1 for f in per_class.values()), {k: v for k, v in per_class.items() if len(v) > 1}
    for group, folds in got.items():
        if len(folds) > 1:  # a cross-fold src_file only joins clips of different classes
            labels_by_fold = {f: {c.labels for c in esc50 if c.group == group and c.fold == f} for f in folds}
            seen = [lab for labs in labels_by_fold.values() for lab in labs]
            assert len(seen) == len(set(seen)), (group, labels_by_fold)


def _write_esc50_like(root: Path, rows: list[tuple], present: set[str]) -> Path:
    (root / "meta").mkdir(parents=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    for name in present:
        _tiny_wav(root / "audio" / name)
    return root


def test_esc50_esc10_only_reports_the_csv_row_of_a_missing_file(tmp_path):
    rows = [
        ("1-1-A-0.wav", 1, 0, "dog", "False", "1", "A"),  # CSV row 2, skipped
        ("1-2-A-1.wav", 1, 1, "rooster", "True", "2", "A"),  # row 3
        ("1-3-A-1.wav", 1, 1, "rooster", "True", "3", "A"),
    ]  # row 4, file missing
    root = _write_esc50_like(tmp_path / "esc", rows, {"1-1-A-0.wav", "1-2-A-1.wav"})
    with pytest.raises(ManifestError) as err:
        read_manifest(root, esc10_only=True)
    (problem,) = err.value.problems
    assert "1-3-A-1.wav" in problem.where and "missing file" in problem.message
    assert problem.where.startswith("row 4 "), problem.where


# --- ESC-10, original release layout ------------------------------------------------------


@pytest.fixture(scope="module")
def esc10(esc10_root):
    return read_manifest(esc10_root)


def test_esc10_is_detected(esc10_root):
    assert detect_layout(esc10_root) == "esc10"


def test_esc10_counts(esc10, esc10_root):
    files = glob.glob(str(esc10_root / "audio" / "* - *" / "*.ogg"))
    assert len(files) == 400
    assert len(esc10) == 400
    assert len(esc10.labels) == 10
    assert esc10.label_counts() == Counter({lab: 40 for lab in esc10.labels})
    assert len(set(esc10.ids)) == len(esc10)
    assert sorted(os.path.realpath(c.path) for c in esc10) == sorted(os.path.realpath(f) for f in files)


def test_esc10_folds_groups_and_labels_match_its_csv(esc10, esc10_root):
    rows = _rows(esc10_root / "esc10.csv")
    by_name = {Path(r["filename"]).name: r for r in rows}
    assert len(by_name) == len(rows) == 400
    for clip in esc10:
        row = by_name[Path(clip.path).name]
        assert clip.fold == int(row["fold"]), clip.id
        assert clip.labels == (row["category"],), clip.id
        assert clip.group == row["src_file"], clip.id
        assert Path(clip.path).is_absolute() and Path(clip.path).is_file()
    by_target = {int(r["target"]): r["category"] for r in rows}
    assert list(esc10.labels) == [by_target[t] for t in sorted(by_target)]
    assert Counter(c.fold for c in esc10) == Counter(int(r["fold"]) for r in rows)


# --- FSDKaggle2018 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsd_rows(fsd2018_root):
    return _rows(fsd2018_root / "train.csv")


def test_fsdkaggle2018_train_csv_without_audio(fsd2018_root, fsd_rows):
    m = read_manifest(fsd2018_root, check_files=False)
    assert len(fsd_rows) == 9473 and len(m) == 9473
    csv_labels = {r["label"] for r in fsd_rows}
    assert len(csv_labels) == 41
    assert set(m.labels) == csv_labels and len(m.labels) == 41
    assert not m.multilabel
    assert m.ids == [r["fname"] for r in fsd_rows]
    for clip, row in zip(m, fsd_rows):
        assert clip.labels == (row["label"],)
        assert clip.manually_verified is (row["manually_verified"] == "1")
        assert Path(clip.path).is_absolute()
        assert Path(clip.path).parent.name == "audio_train"
    verified = sum(r["manually_verified"] == "1" for r in fsd_rows)
    assert sum(bool(c.manually_verified) for c in m) == verified
    assert 0.35 < verified / len(fsd_rows) < 0.45  # README: "about 40% of rows"


def test_fsdkaggle2018_reports_every_missing_file_at_once(fsd2018_root, fsd_rows):
    with pytest.raises(ManifestError) as err:
        read_manifest(fsd2018_root)  # check_files=True: no audio_train/ here
    problems = err.value.problems
    assert len(problems) == len(fsd_rows) == 9473
    assert all("missing file" in p.message for p in problems)
    assert [p.where for p in problems] == [f"row {i} ({r['fname']})" for i, r in enumerate(fsd_rows, start=2)]
    assert f"{len(fsd_rows)} problem(s)" in str(err.value)
    assert isinstance(err.value, DataError)


def test_fsdkaggle2018_small_copy_lists_every_problem_with_its_row(tmp_path, fsd_rows):
    root = tmp_path / "fsd"
    picked = fsd_rows[:4]
    good, missing = picked[:3], picked[3]
    typo = {"fname": "typo0001.wav", "label": "Hi_hat", "manually_verified": "0"}
    dup = dict(good[0], label=good[1]["label"])
    table = good + [typo, missing, dup]
    root.mkdir()
    with open(root / "train.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["fname", "label", "manually_verified"])
        w.writeheader()
        w.writerows(table)
    for r in good + [typo]:
        _tiny_wav(root / "audio_train" / r["fname"])
    row_of = {id(r): i for i, r in enumerate(table, start=2)}  # header is row 1

    assert detect_layout(root) == "fsdkaggle2018"
    with pytest.raises(ManifestError) as err:
        read_manifest(root)
    problems = err.value.problems
    assert len(problems) == 3, [str(p) for p in problems]

    (unknown,) = [p for p in problems if "unknown label" in p.message]
    assert unknown.where.startswith(f"row {row_of[id(typo)]} ")
    assert "'Hi_hat'" in unknown.message and "'Hi-hat'" in unknown.hint

    (dupl,) = [p for p in problems if "duplicated id" in p.message]
    assert dupl.where.startswith(f"row {row_of[id(dup)]} ")
    assert repr(good[0]["fname"]) in dupl.message
    assert f"row {row_of[id(good[0])]}" in dupl.message  # where it was first seen

    (miss,) = [p for p in problems if "missing file" in p.message]
    assert miss.where.startswith(f"row {row_of[id(missing)]} ")
    assert missing["fname"] in miss.message

    text = str(err.value)
    assert "Hi_hat" in text and "duplicated" in text and missing["fname"] in text


# --- generic CSV ----------------------------------------------------------------------------


def test_generic_csv_resolves_paths_and_splits_labels(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _tiny_wav(data / "a.wav")
    _tiny_wav(data / "sub" / "b.wav")
    elsewhere = _tiny_wav(tmp_path / "other" / "c.wav")
    csv_path = data / "list.csv"
    csv_path.write_text(f'path,labels,fold\na.wav,dog,1\nsub/b.wav,"dog, bark",2\n{elsewhere},cat,3\n')
    monkeypatch.chdir(tmp_path / "other")  # relative paths are the CSV's, not the cwd's
    assert detect_layout(csv_path) == "csv"
    m = read_manifest(csv_path)
    assert [Path(c.path) for c in m] == [data / "a.wav", data / "sub" / "b.wav", elsewhere]
    assert all(Path(c.path).is_absolute() and Path(c.path).is_file() for c in m)
    assert [c.labels for c in m] == [("dog",), ("dog", "bark"), ("cat",)]
    assert [c.fold for c in m] == [1, 2, 3]
    assert m.multilabel is True
    assert set(m.labels) == {"dog", "bark", "cat"}


def test_generic_csv_single_label_is_not_multilabel(tmp_path):
    _tiny_wav(tmp_path / "a.wav")
    _tiny_wav(tmp_path / "b.wav")
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("path,labels,fold\na.wav,dog,1\nb.wav,cat,2\n")
    m = read_manifest(csv_path)
    assert m.multilabel is False and set(m.labels) == {"dog", "cat"}


def test_generic_csv_misspelt_column_is_named_with_a_suggestion(tmp_path):
    _tiny_wav(tmp_path / "a.wav")
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("path,lables,fold\na.wav,dog,1\n")
    with pytest.raises(DataError) as err:
        read_manifest(csv_path)
    text = str(err.value)
    assert "'labels'" in text  # the column it needs
    assert "lables" in text and "did you mean" in text  # the nearest column it found
    assert str(csv_path) in text


def test_generic_csv_that_cannot_be_read_names_the_file(tmp_path):
    csv_path = tmp_path / "binary.csv"
    csv_path.write_bytes(b"path,labels\n\xff\xfe\x00\x81garbage\n")
    with pytest.raises(DataError) as err:
        read_manifest(csv_path, layout="csv")
    assert str(csv_path) in str(err.value)


def test_generic_csv_empty_label_is_reported_with_its_row(tmp_path):
    _tiny_wav(tmp_path / "a.wav")
    _tiny_wav(tmp_path / "b.wav")
    csv_path = tmp_path / "x.csv"
    lines = ["path,labels,fold", "a.wav,dog,1", "b.wav,,2"]
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(csv_path)
    (problem,) = err.value.problems
    assert "empty label" in problem.message
    assert problem.where.startswith(f"row {lines.index('b.wav,,2') + 1} ")  # editor line number


def test_generic_csv_short_row_is_a_reported_problem(tmp_path):
    _tiny_wav(tmp_path / "a.wav")
    csv_path = tmp_path / "short.csv"
    csv_path.write_text("labels,path\ndog,a.wav\ncat\n")
    with pytest.raises(DataError) as err:
        read_manifest(csv_path)
    assert "row 3" in str(err.value)


# --- folders, multi-label CSV, jsonl --------------------------------------------------------


def test_folder_per_class_tree(tmp_path):
    root = tmp_path / "tree"
    for rel in ["dog/d1.wav", "dog/d2.flac", "cat/deep/c1.wav", ".hidden/h.wav"]:
        _tiny_wav(root / rel)
    (root / "dog" / "notes.txt").write_text("not audio")
    assert detect_layout(root) == "folders"
    m = read_manifest(root)
    expected = sorted(
        Path(p).relative_to(root).as_posix()
        for p in glob.glob(str(root / "*" / "**" / "*"), recursive=True)
        if Path(p).suffix in (".wav", ".flac") and not Path(p).relative_to(root).parts[0].startswith(".")
    )
    assert sorted(m.ids) == expected == ["cat/deep/c1.wav", "dog/d1.wav", "dog/d2.flac"]
    for c in m:
        assert c.labels == (c.id.split("/")[0],)
        assert Path(c.path).is_absolute() and Path(c.path).is_file()
    assert set(m.labels) == {"cat", "dog"} and not m.multilabel


def test_multilabel_csv_fsd50k_style(tmp_path):
    root = tmp_path / "fsd50k"
    _tiny_wav(root / "101.wav")
    _tiny_wav(root / "102.wav")
    _tiny_wav(root / "103.flac")
    csv_path = root / "dev.csv"
    csv_path.write_text(
        "fname,labels,mids,split\n"
        '101,"Bark,Dog","/m/05tny_,/m/0bt9lr",train\n'
        "102,Meow,/m/07qrkrw,val\n"
        "103.flac,Dog,/m/0bt9lr,val\n"
    )
    assert detect_layout(csv_path) == "multilabel-csv"
    m = read_manifest(csv_path)
    assert m.ids == ["101.wav", "102.wav", "103.flac"]
    assert [Path(c.path) for c in m] == [root / "101.wav", root / "102.wav", root / "103.flac"]
    assert [c.labels for c in m] == [("Bark", "Dog"), ("Meow",), ("Dog",)]
    assert [c.fold for c in m] == [0, 1, 1]
    assert m.multilabel is True
    assert set(m.labels) == {"Bark", "Dog", "Meow"}


def test_multilabel_csv_uses_vocabulary_csv_order(tmp_path):
    root = tmp_path / "fsd50k"
    _tiny_wav(root / "1.wav")
    (root / "vocabulary.csv").write_text("0,Meow,/m/a\n1,Dog,/m/b\n2,Bark,/m/c\n")
    csv_path = root / "dev.csv"
    csv_path.write_text('fname,labels,mids,split\n1,"Dog,Bark","/m/b,/m/c",train\n')
    m = read_manifest(csv_path)
    assert m.labels == ("Meow", "Dog", "Bark")


def test_jsonl_round_trip(tmp_path, esc10):
    small = esc10.filter(lambda c: c.fold == 2)
    out = small.to_jsonl(tmp_path / "m.jsonl")
    assert detect_layout(out) == "jsonl"
    back = read_manifest(out)
    assert back.clips == small.clips
    assert back.labels == small.labels
    assert back.multilabel == small.multilabel and back.name == small.name
    assert back == small


def test_jsonl_round_trip_multilabel(tmp_path):
    clips = [
        Clip(
            id="a",
            path=str(_tiny_wav(tmp_path / "a.wav")),
            labels=("x", "y"),
            fold=3,
            manually_verified=True,
            group="g1",
            duration=0.01,
            sample_rate=8000,
        ),
        Clip(id="b", path=str(_tiny_wav(tmp_path / "b.wav")), labels=("y",)),
    ]
    m = Manifest.build(clips, labels=["y", "x"], name="tiny")
    back = read_manifest(m.to_jsonl(tmp_path / "tiny.jsonl"))
    assert back.clips == m.clips and back.labels == ("y", "x") and back.multilabel


# --- layouts ----------------------------------------------------------------------------------


def test_detect_layout_of_a_missing_path(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(DataError) as err:
        detect_layout(missing)
    assert str(missing) in str(err.value)


def test_get_layout_suggests_the_nearest_name():
    with pytest.raises(ParameterError) as err:
        get_layout("esc5O")
    assert "'esc50'" in str(err.value)
    assert isinstance(err.value, ValueError)
    assert get_layout("esc50").name == "esc50"


# --- Manifest bookkeeping -------------------------------------------------------------------


def test_filter_returns_a_new_manifest(esc50):
    ids_before, len_before = list(esc50.ids), len(esc50)
    fold1 = esc50.filter(lambda c: c.fold == 1)
    assert fold1 is not esc50
    assert len(fold1) == 400 and all(c.fold == 1 for c in fold1)
    assert len(esc50) == len_before == 2000 and esc50.ids == ids_before
    assert fold1.labels == esc50.labels and fold1.name == esc50.name
    assert fold1.ids == [c.id for c in esc50 if c.fold == 1]


def test_fsdkaggle2018_label_constant_matches_the_real_csv(fsd_rows):
    assert set(FSDKAGGLE2018_LABELS) == {r["label"] for r in fsd_rows}
    assert list(FSDKAGGLE2018_LABELS) == sorted(FSDKAGGLE2018_LABELS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=30))
def test_problems_report_exactly_the_duplicated_ids(ids):
    m = Manifest.build([Clip(id=i, path=f"/nowhere/{i}", labels=("x",)) for i in ids])
    problems = m.problems(check_files=False)
    dups = [p for p in problems if "duplicated id" in p.message]
    assert len(dups) == len(problems)  # no other problem: labels are known and present
    counts = Counter(ids)
    assert len(dups) == sum(n - 1 for n in counts.values())
    expected = []
    first: dict[str, int] = {}
    for row, i in enumerate(ids, start=1):
        if i in first:
            expected.append((row, i, first[i]))
        else:
            first[i] = row
    assert len(dups) == len(expected)
    for p, (row, i, first_row) in zip(dups, expected):
        assert p.where == f"row {row} ({i})"
        assert repr(i) in p.message and p.message.endswith(f"first seen in row {first_row}")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["x", "y", "z", ""]), max_size=20))
def test_problems_report_unknown_and_empty_labels(rows):
    clips = [Clip(id=f"c{k}", path="/nowhere", labels=(lab,) if lab else ()) for k, lab in enumerate(rows)]
    m = Manifest.build(clips, labels=["x", "y"])
    problems = m.problems(check_files=False)
    empty = [p.where for p in problems if p.message == "empty label"]
    unknown = [p.where for p in problems if p.message.startswith("unknown label")]
    assert empty == [f"row {k + 1} (c{k})" for k, lab in enumerate(rows) if lab == ""]
    assert unknown == [f"row {k + 1} (c{k})" for k, lab in enumerate(rows) if lab == "z"]
    assert len(problems) == len(empty) + len(unknown)


def test_filter_keeps_source_rows_for_later_problems(tmp_path):
    rows = [
        ("1-1-A-0.wav", 1, 0, "dog", "True", "1", "A"),  # row 2
        ("2-2-A-0.wav", 2, 0, "dog", "True", "2", "A"),  # row 3
        ("2-3-A-1.wav", 2, 1, "rooster", "True", "3", "A"),
    ]  # row 4, file missing
    root = _write_esc50_like(tmp_path / "esc", rows, {"1-1-A-0.wav", "2-2-A-0.wav"})
    fold2 = read_manifest(root, check_files=False).filter(lambda c: c.fold == 2)
    (problem,) = fold2.problems()
    assert problem.where == "row 4 (2-3-A-1.wav)" and "missing file" in problem.message


# --- every problem at once, parse errors included ---------------------------------------------


def _four_problem_csv(tmp_path: Path) -> Path:
    """A CSV with a duplicated id (row 3), a missing file (4), an empty label (5), fold=x (6)."""
    for name in ("a.wav", "b.wav", "c.wav"):
        _tiny_wav(tmp_path / name)
    csv_path = tmp_path / "clips.csv"
    csv_path.write_text("path,labels,fold\na.wav,dog,1\na.wav,dog,2\ngone.wav,cat,1\nb.wav,,1\nc.wav,cat,x\n")
    return csv_path


def test_a_bad_fold_is_reported_with_every_other_problem_in_row_order(tmp_path):
    csv_path = _four_problem_csv(tmp_path)
    with pytest.raises(ManifestError) as err:
        read_manifest(csv_path)
    problems = err.value.problems
    assert [(p.where, p.message.split(" ")[0]) for p in problems] == [
        ("row 3 (a.wav)", "duplicated"),
        ("row 4 (gone.wav)", "missing"),
        ("row 5 (b.wav)", "empty"),
        ("row 6 (c.wav)", "fold='x'"),
    ]
    assert str(tmp_path / "gone.wav") in problems[1].message
    assert "4 problem(s)" in str(err.value) and str(csv_path) in str(err.value)
    # Without the file check the three others remain.
    with pytest.raises(ManifestError) as err:
        read_manifest(csv_path, check_files=False)
    assert [p.where for p in err.value.problems] == ["row 3 (a.wav)", "row 5 (b.wav)", "row 6 (c.wav)"]


def test_data_check_reports_all_four_problems_and_exits_non_zero(tmp_path, soundtag_main):
    csv_path = _four_problem_csv(tmp_path)
    status, out, err = soundtag_main("data", "check", csv_path)
    assert status == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(lines) == 4, err
    assert "row 3 (a.wav): duplicated id 'a.wav', first seen in row 2" in lines[0]
    assert "row 4 (gone.wav): missing file" in lines[1]
    assert "row 5 (b.wav): empty label" in lines[2]
    assert "row 6 (c.wav): fold='x' is not an integer" in lines[3]


def test_rows_after_a_skipped_row_keep_their_numbers(tmp_path):
    _tiny_wav(tmp_path / "a.wav")
    csv_path = tmp_path / "clips.csv"
    csv_path.write_text(
        "path,labels,fold,manually_verified\n"
        "a.wav,dog,1,1\n"
        ",dog,y,maybe\n"  # row 3: no path, and two bad cells
        "gone.wav,dog,2,0\n"
    )  # row 4: the clip after the skipped row
    with pytest.raises(ManifestError) as err:
        read_manifest(csv_path)
    assert [(p.where, p.message) for p in err.value.problems] == [
        ("row 3", "fold='y' is not an integer"),
        ("row 3", "manually_verified='maybe' is not 0/1/true/false"),
        ("row 3", "empty path"),
        ("row 4 (gone.wav)", f"missing file {tmp_path / 'gone.wav'}"),
    ]


def test_esc50_short_row_and_bad_fold_are_problems_not_a_crash(tmp_path):
    rows = [
        ("1-1-A-0.wav", 1, 0, "dog", "True", "1", "A"),  # row 2
        ("1-2-A-0.wav", "one", 0, "dog", "True", "2", "A"),  # row 3: fold
        ("1-3-A-0.wav", 1),  # row 4: no target, no category
        ("1-4-A-0.wav", 1, 0, "dog", "True", "4", "A"),
    ]  # row 5: file missing
    root = _write_esc50_like(tmp_path / "esc", rows, {"1-1-A-0.wav", "1-2-A-0.wav", "1-3-A-0.wav"})
    with pytest.raises(ManifestError) as err:
        read_manifest(root)
    assert [(p.where, p.message.split(" is ")[0]) for p in err.value.problems] == [
        ("row 3 (1-2-A-0.wav)", "fold='one'"),
        ("row 4 (1-3-A-0.wav)", "target=None"),
        ("row 5 (1-4-A-0.wav)", f"missing file {root / 'audio' / '1-4-A-0.wav'}"),
    ]


def test_multilabel_csv_unknown_split_is_reported_with_the_rest(tmp_path):
    _tiny_wav(tmp_path / "a.wav")
    csv_path = tmp_path / "dev.csv"
    csv_path.write_text('fname,labels,split\na,"Bark,Dog",train\nb,Dog,valid\n')
    with pytest.raises(ManifestError) as err:
        read_manifest(csv_path)
    assert [(p.where, p.message.split(" ")[0]) for p in err.value.problems] == [
        ("row 3 (b.wav)", "split='valid'"),
        ("row 3 (b.wav)", "missing"),
    ]


# --- decoding every file (data check --decode) -----------------------------------------------


@pytest.fixture
def broken_clips(esc10_root, tmp_path) -> tuple[Path, dict[str, str]]:
    """A CSV of two real ESC-10 clips (Ogg, and as FLAC) and four broken files made from them.

    Returns the CSV and, per broken file, the words its problem must hold.
    """
    dog, rain = (
        esc10_root / "audio" / "001 - Dog bark" / "1-100032-A.ogg",
        esc10_root / "audio" / "002 - Rain" / "1-17367-A.ogg",
    )
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "dog.ogg").write_bytes(dog.read_bytes())
    samples, rate = sf.read(rain, dtype="float32")
    sf.write(folder / "rain.flac", samples, rate)
    flac = (folder / "rain.flac").read_bytes()
    (folder / "cut.flac").write_bytes(flac[: len(flac) // 2])  # its header promises all 5 s
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("this is not audio\n" * 20)
    sf.write(folder / "nothing.wav", np.zeros((0, 1), dtype=np.float32), 8000)  # a header, no samples
    names = ["dog.ogg", "rain.flac", "cut.flac", "empty.wav", "notes.wav", "nothing.wav"]
    csv_path = folder / "clips.csv"
    csv_path.write_text("path,labels\n" + "".join(f"{n},{'dog' if n == 'dog.ogg' else 'rain'}\n" for n in names))
    expected = {
        "cut.flac": "cannot decode",
        "empty.wav": "the file is empty (0 bytes)",
        "notes.wav": "Format not recognised",
        "nothing.wav": "holds no audio samples",
    }
    return csv_path, expected


def test_header_probe_passes_files_that_do_not_decode(broken_clips):
    csv_path, expected = broken_clips
    m = read_manifest(csv_path).with_probed_audio()
    by_id = {c.id: c for c in m}
    # The cut file's header still promises every frame of the clip it was cut from.
    assert by_id["cut.flac"].duration == by_id["rain.flac"].duration == sf.info(csv_path.parent / "rain.flac").duration
    assert by_id["empty.wav"].duration is None and by_id["notes.wav"].duration is None


def test_decode_problems_name_every_broken_file_and_only_those(broken_clips):
    csv_path, expected = broken_clips
    problems = read_manifest(csv_path).decode_problems(workers=2)
    assert [p.where for p in problems] == [
        "row 4 (cut.flac)",
        "row 5 (empty.wav)",
        "row 6 (notes.wav)",
        "row 7 (nothing.wav)",
    ]
    for p, (name, words) in zip(problems, expected.items()):
        assert str(csv_path.parent / name) in p.message and words in p.message, p


@pytest.mark.slow
def test_every_real_esc10_clip_decodes(esc10):
    assert esc10.decode_problems() == []
    with pytest.raises(ParameterError, match="workers=0"):
        esc10.decode_problems(workers=0)


def test_data_check_decode_exits_non_zero_naming_each_file(broken_clips, soundtag_main, tmp_path):
    csv_path, expected = broken_clips
    status, out, err = soundtag_main("data", "check", csv_path, "--probe")
    assert status == 0 and "6 clips" in out and "2 file(s) have no readable header" in out, out
    saved = tmp_path / "saved.jsonl"
    status, out, err = soundtag_main("data", "check", csv_path, "--decode", "--save", saved)
    assert status == 2 and not saved.exists()
    lines = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(lines) == len(expected), err
    for line, name in zip(lines, expected):
        assert f"cannot decode {csv_path.parent / name}" in line
    # The two good files alone pass.
    good = csv_path.with_name("good.csv")
    good.write_text("path,labels\ndog.ogg,dog\nrain.flac,rain\n")
    status, out, err = soundtag_main("data", "check", good, "--decode")
    assert status == 0 and err == "" and "2 clips" in out, out
