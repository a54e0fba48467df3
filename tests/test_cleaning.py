"""The blacklist loop's library and commands: suspects, the decision book, clean --auto, retraining.

One tiny real run (two folds, two epochs) over 40 ESC-10 clips plus five dirty clips made from
real ones (near-silent, clipped, short, silent, and a duplicate with another label) is trained
once per session by the ``dirty_run`` fixture (tests/conftest.py), shared with tests/test_review.py.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from soundtag.cleaning import DecisionBook, auto_clean, find_suspects, rank_suspects, read_suspects, write_suspects
from soundtag.cleaning.decisions import LOG_COLUMNS
from soundtag.cleaning.suspects import COLUMNS, label_scores
from soundtag.errors import DataError, ParameterError
from soundtag.manifest import Manifest
from soundtag.manifest.clip_lists import BLACKLIST_COLUMNS, RELABEL_COLUMNS, apply_relabel, read_clip_list


@pytest.fixture(scope="module")
def run_dir(dirty_run) -> Path:
    return dirty_run


@pytest.fixture(scope="module")
def run_manifest(run_dir) -> Manifest:
    return Manifest.from_jsonl(run_dir / "manifest.jsonl")


# --- ranking with known answers ------------------------------------------------------------


def test_rank_suspects_orders_known_cases():
    labels = ["a", "b", "c"]
    given = [[labels[i % 3]] for i in range(30)]
    probs = np.full((30, 3), 0.1)
    for i in range(30):
        probs[i, i % 3] = 0.8
    probs[5] = [0.05, 0.9, 0.05]  # labelled c, confidently predicted b
    probs[12] = [0.55, 0.4, 0.05]  # labelled a, right but unsure: no reason to list it
    probs[13] = [0.1, 0.35, 0.55]  # labelled b, mildly predicted c
    ids = [f"clip{i}" for i in range(30)]
    df = rank_suspects(ids, given, labels, probs)
    assert df["clip_id"].tolist()[:2] == ["clip5", "clip13"]
    first = df.iloc[0]
    assert (first["label"], first["pred1"], first["prob1"], first["pred2"]) == ("c", "b", 0.9, "a")
    assert "misclassified" in first["reasons"].split(";") and first["score"] == pytest.approx(0.95)
    assert "clip12" not in set(df["clip_id"]) and "clip0" not in set(df["clip_id"])
    assert df["rank"].tolist() == list(range(1, len(df) + 1))

    everything = rank_suspects(ids, given, labels, probs, all_clips=True)
    assert len(everything) == 30 and everything["score"].is_monotonic_decreasing
    # self_confidence: the label quality is the probability of the given label
    quality = dict(zip(everything["clip_id"], everything["label_quality"]))
    assert quality["clip5"] == pytest.approx(0.05) and quality["clip0"] == pytest.approx(0.8)

    audio = pd.DataFrame(
        {
            "clip_id": ids,
            "peak_db": -3.0,
            "sound_s": 5.0,
            "duplicate_of": "",
            "reasons": [["silent"] if i == 0 else [] for i in range(30)],
            "weight": [1.0 if i == 0 else 0.0 for i in range(30)],
        }
    )
    with_audio = rank_suspects(ids, given, labels, probs, audio=audio)
    assert with_audio.iloc[0]["clip_id"] == "clip0" and with_audio.iloc[0]["reasons"] == "silent"
    assert with_audio.iloc[0]["score"] == pytest.approx(1 - 0.8 + 1.0)

    with pytest.raises(ParameterError, match="shape"):
        rank_suspects(ids[:3], given[:3], labels, probs)


def test_multilabel_ranking_and_the_per_class_summary():
    from soundtag.cleaning import summarize

    labels = ["a", "b", "c"]
    given = [[labels[i % 3]] + ([labels[(i + 1) % 3]] if i % 4 == 0 else []) for i in range(40)]
    probs = np.array([[0.9 if lab in g else 0.05 for lab in labels] for g in given])
    probs[7] = [0.95, 0.02, 0.03]  # labelled b only, sounds like a
    df = rank_suspects([f"clip{i}" for i in range(40)], given, labels, probs, multilabel=True)
    assert df["clip_id"].tolist() == ["clip7"] and df.iloc[0]["pred1"] == "a"
    assert set(df.iloc[0]["reasons"].split(";")) == {"misclassified", "label_issue"}
    summary = summarize(df, labels, {"a": 17, "b": 17, "c": 16}).set_index("class")
    assert summary.loc["b"].tolist() == [17, 1, 1, 1, 0, 0, "a (1)"]
    assert summary.loc["a"].tolist() == [17, 0, 0, 0, 0, 0, ""], "a class without suspects is a row of zeros"
    decided = summarize(df, labels, decided={"clip7", "clip8"}).set_index("class")["decided"]
    assert decided.to_dict() == {"a": 0, "b": 1, "c": 0}, "only suspects count, in each of their classes"


# --- suspects of a real run ----------------------------------------------------------------


@pytest.mark.slow
def test_find_suspects_on_a_real_run(run_dir, run_manifest, tmp_path, read_csv_rows, dirty_clips):
    df = find_suspects(run_dir)
    assert list(df.columns) == COLUMNS
    reasons = {c: set(r.split(";")) for c, r in zip(df["clip_id"], df["reasons"])}
    for clip, reason in dirty_clips.items():
        assert reason in reasons.get(clip, set()), (clip, reasons.get(clip))
    dup = next(c for c in run_manifest.ids if c.startswith("audio/dup-"))
    original = dup.replace("dup-", "")
    by_id = df.set_index("clip_id")
    assert by_id.loc[dup, "duplicate_of"] == original and by_id.loc[original, "duplicate_of"] == dup
    assert by_id.loc["audio/quiet.wav", "peak_db"] == pytest.approx(-55, abs=0.5)
    assert by_id.loc["audio/short.wav", "sound_s"] < 0.5
    assert df.iloc[0]["clip_id"] == "audio/silent.wav"  # silent outweighs every label finding here
    real = [c for c in run_manifest.ids if c not in dirty_clips and c not in (dup, original)]
    assert not any({"silent", "near_silent", "duplicate"} & reasons.get(c, set()) for c in real)
    assert "near_silent" not in reasons.get(original, set())

    # The prediction side agrees with the run's own oof.csv, clip by clip.
    _, oof = read_csv_rows(run_dir / "oof.csv")
    labels = run_manifest.labels
    for row in oof:
        p = np.array([float(row[lab]) for lab in labels])
        wrong = labels[int(np.argmax(p))] != row["labels"]
        assert wrong == ("misclassified" in reasons.get(row["clip_id"], set())), row["clip_id"]
        if row["clip_id"] in by_id.index:
            s = by_id.loc[row["clip_id"]]
            top = np.argsort(-p, kind="stable")[:3]
            assert [s["pred1"], s["pred2"], s["pred3"]] == [labels[j] for j in top]
            assert [s["prob1"], s["prob2"], s["prob3"]] == pytest.approx(p[top], abs=1e-5)
            assert s["label_quality"] == pytest.approx(p[labels.index(row["labels"])], abs=1e-5)
    assert df["score"].is_monotonic_decreasing and df["rank"].tolist() == list(range(1, len(df) + 1))

    path = write_suspects(df, tmp_path / "suspects.csv")
    back = read_suspects(path)
    assert back["clip_id"].tolist() == df["clip_id"].tolist()
    assert back["reasons"].tolist() == df["reasons"].tolist()
    assert back["score"].to_numpy() == pytest.approx(df["score"].to_numpy())
    assert not list(tmp_path.glob(".*.tmp"))

    no_audio = find_suspects(run_dir, audio=False)
    assert not any("silent" in r or "clipped" in r for r in no_audio["reasons"])


@pytest.mark.slow
def test_suspects_refuses_a_run_that_is_not_finished(run_dir, tmp_path, soundtag):
    with pytest.raises(DataError, match="does not exist"):
        find_suspects(tmp_path / "nowhere")
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    shutil.copy(run_dir / "manifest.jsonl", not_a_run)
    with pytest.raises(DataError, match="not a soundtag run"):
        find_suspects(not_a_run)
    # a run with its first fold finished and the others not
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("fold-[1-9]*", "oof.csv"))
    with pytest.raises(DataError, match=r"fold\(s\) \[1.*not finished.*--resume"):
        find_suspects(unfinished)
    out = soundtag("suspects", unfinished)
    assert out.returncode == 2 and "not finished" in out.stderr and "Traceback" not in out.stderr


# --- the decision book ---------------------------------------------------------------------


@pytest.mark.slow
def test_decision_book_writes_the_lists_training_reads(run_dir, run_manifest, tmp_path, read_csv_rows, snapshot):
    folder = tmp_path / "lists"
    book = DecisionBook(folder, clip_ids=run_manifest.ids, labels=run_manifest.labels)
    assert book.start_round(run_dir) == 1
    a, b, c = run_manifest.ids[:3]
    new_label = next(lab for lab in run_manifest.labels if lab not in run_manifest[1].labels)
    book.decide(a, "blacklist", reason="silent")
    book.decide(b, "relabel", label=new_label, reason="it is another sound")
    book.decide(c, "keep")
    header, rows = read_csv_rows(folder / "blacklist.csv")
    assert header == BLACKLIST_COLUMNS and [(r["clip_id"], r["decision"], r["reason"], r["round"]) for r in rows] == [
        (a, "blacklist", "silent", "1")
    ]
    header, rows = read_csv_rows(folder / "relabel.csv")
    assert header == RELABEL_COLUMNS and [(r["clip_id"], r["label"]) for r in rows] == [(b, new_label)]
    header, rows = read_csv_rows(folder / "decisions.csv")
    assert header == LOG_COLUMNS and [r["decision"] for r in rows] == ["blacklist", "relabel", "keep"]

    # Training reads these very files: the blacklist by clip_id, the relabels with their label.
    assert read_clip_list(folder / "blacklist.csv", run_manifest, what="blacklist") == {a: ""}
    relabels = read_clip_list(folder / "relabel.csv", run_manifest, what="relabel")
    assert relabels == {b: new_label}
    assert apply_relabel(run_manifest, relabels, "relabel.csv")[1].labels == (new_label,)

    before = snapshot(folder)
    for args, kwargs, match in [
        ((a + ".missing", "blacklist"), {}, "not in the run"),
        (("/etc/passwd", "keep"), {}, "not in the run"),
        ((b, "relabel"), {"label": "Cat"}, "unknown label"),
        ((b, "relabel"), {}, "needs a label"),
        ((b, "keep"), {"label": new_label}, "takes no label"),
        ((b, "delete"), {}, "not one of"),
    ]:
        with pytest.raises(ParameterError, match=match):
            book.decide(*args, **kwargs)
    assert snapshot(folder) == before, "a refused decision writes nothing"

    book.decide(a, "keep")  # the same round: the later decision replaces the earlier one
    assert book.blacklisted() == set() and book.latest()[a].decision == "keep"
    assert book.undo().clip_id == a and book.blacklisted() == {a}
    assert book.undo().decision == "keep" and book.undo().clip_id == b
    assert book.relabelled() == {} and read_csv_rows(folder / "relabel.csv")[1] == []
    assert [r["clip_id"] for r in read_csv_rows(folder / "decisions.csv")[1]] == [a]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_decisions_resume_and_compose_across_rounds(run_dir, run_manifest, tmp_path, read_csv_rows):
    folder = tmp_path / "lists"
    x, y = run_manifest.ids[:2]
    label = next(lab for lab in run_manifest.labels if lab not in run_manifest[0].labels)
    book = DecisionBook(folder, clip_ids=run_manifest.ids, labels=run_manifest.labels)
    book.start_round(run_dir)
    book.decide(x, "relabel", label=label)
    book.decide(y, "blacklist")

    again = DecisionBook(folder, clip_ids=run_manifest.ids, labels=run_manifest.labels)
    assert again.latest() == book.latest()
    assert again.start_round(run_dir) == 1, "reopening the same run resumes its round"
    next_run = tmp_path / "round-2-run"
    next_run.mkdir()
    assert again.start_round(next_run) == 2
    assert [r["round"] for r in json.loads((folder / "rounds.json").read_text())] == [1, 2]

    # Round 2 reviews a run trained with round 1's lists: Keep keeps the label shown (the
    # relabel) and brings a blacklisted clip back.
    again.decide(x, "keep")
    again.decide(y, "keep")
    assert again.relabelled() == {x: label} and again.blacklisted() == set()
    assert again.undo(round=2).clip_id == y and again.blacklisted() == {y}
    assert again.undo(round=2).clip_id == x and again.undo(round=2) is None
    assert len(again.log) == 2

    # Lists written by hand before any review become round-0 decisions.
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / "blacklist.csv").write_text(f"clip_id,reason\n{x},hiss\n")
    imported = DecisionBook(hand, clip_ids=run_manifest.ids)
    assert imported.blacklisted() == {x} and imported.latest()[x].reason == "hiss"
    assert read_csv_rows(hand / "decisions.csv")[1][0]["round"] == "0"
    (hand / "decisions.csv").write_text("clip_id,decision\nfoo,maybe\n")
    with pytest.raises(DataError, match="decisions.csv.*missing column"):
        DecisionBook(hand)


@pytest.mark.slow
def test_auto_clean_applies_cleanlab_within_the_limit(run_dir, run_manifest, tmp_path, read_csv_rows):
    from soundtag.runs import RunDir

    oof = RunDir(run_dir).out_of_fold()
    manifest, probs = oof.manifest, oof.probs
    quality, issues = label_scores([c.labels for c in manifest], manifest.labels, probs)
    flagged = [manifest[i].id for i in np.argsort(quality, kind="stable") if issues[i]]
    assert len(flagged) > 5, "the tiny run is expected to get many clips wrong"
    folder = tmp_path / "lists"
    person = DecisionBook(folder, clip_ids=manifest.ids)
    person.start_round(run_dir)
    person.decide(flagged[0], "keep", reason="listened: it is fine")

    limit = math.floor(0.1 * len(manifest))
    taken = auto_clean(run_dir, folder, max_fraction=0.1)
    assert [d.clip_id for d in taken] == flagged[1 : 1 + limit], "worst label quality first, the person's clip left"
    assert all(d.decision == "blacklist" and d.round == 1 and "cleanlab" in d.reason for d in taken)
    assert [r["clip_id"] for r in read_csv_rows(folder / "blacklist.csv")[1]] == [d.clip_id for d in taken]
    more = auto_clean(run_dir, folder, max_fraction=0.1)
    assert not {d.clip_id for d in more} & {d.clip_id for d in taken}, "no clip is decided twice"

    relabelled = auto_clean(run_dir, tmp_path / "other", max_fraction=0.05, relabel_above=1e-6)
    row = {c.id: i for i, c in enumerate(manifest)}
    top = {d.clip_id: manifest.labels[int(np.argmax(probs[row[d.clip_id]]))] for d in relabelled}
    assert any(d.decision == "relabel" for d in relabelled)
    for d in relabelled:  # relabel to the top prediction, unless that is the clip's own label
        given = manifest[row[d.clip_id]].labels
        assert (d.decision, d.label) == (
            ("relabel", top[d.clip_id]) if top[d.clip_id] not in given else ("blacklist", "")
        )
    for bad in (0, 1.5):
        with pytest.raises(ParameterError, match="max_fraction"):
            auto_clean(run_dir, folder, max_fraction=bad)


# --- the loop from the command line ----------------------------------------------------------


@pytest.mark.slow
def test_the_loop_from_the_command_line(run_dir, run_manifest, tmp_path, soundtag, read_csv_rows, fast):
    """suspects -> clean --auto (+ a relabel) -> train --blacklist --relabel, as the README shows."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)  # suspects.csv is written into the run: keep the shared one as it is
    lists = tmp_path / "lists"
    out = soundtag("suspects", run, "--lists", lists, "--top", 12)
    assert out.returncode == 0, out.stderr
    assert "suspects per class" in out.stdout and all(lab in out.stdout for lab in run_manifest.labels)
    assert len(read_suspects(run / "suspects.csv")) == 12

    out = soundtag("clean", run, "--auto", "--max-fraction", 0.1, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    default = tmp_path / "cleaning" / "dirty"  # cleaning/<dataset name>/ under the current folder
    assert "lists: cleaning/dirty" in out.stdout and "--blacklist" in out.stdout
    blacklisted = [r["clip_id"] for r in read_csv_rows(default / "blacklist.csv")[1]]
    assert 0 < len(blacklisted) <= math.floor(0.1 * len(run_manifest))
    keep = next(c for c in run_manifest if c.id not in blacklisted)
    new_label = next(lab for lab in run_manifest.labels if lab not in keep.labels)
    DecisionBook(default).decide(keep.id, "relabel", label=new_label)

    data = json.loads((run / "run.json").read_text())["data"]
    retrain = tmp_path / "retrain"
    overrides = sum((["-o", o] for o in fast if not o.startswith("training.epochs")), [])
    out = soundtag(
        "train",
        "--data",
        data,
        "-r",
        "esc50-lh",
        "--out",
        retrain,
        "--cache",
        run_dir.parent / "cache",
        "--blacklist",
        default / "blacklist.csv",
        "--relabel",
        default / "relabel.csv",
        "--no-progress",
        "-o",
        "training.epochs=1",
        *overrides,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    folds = {r["clip_id"]: r["in_training"] for r in read_csv_rows(retrain / "folds.csv")[1]}
    assert {c for c, t in folds.items() if t == "False"} == set(blacklisted)
    assert Manifest.from_jsonl(retrain / "manifest.jsonl")[run_manifest.ids.index(keep.id)].labels == (new_label,)
    oof = {r["clip_id"]: r for r in read_csv_rows(retrain / "oof.csv")[1]}
    assert set(oof) == set(run_manifest.ids), "blacklisted clips stay in the evaluation"
    assert {c for c, r in oof.items() if r["blacklisted"] == "1"} == set(blacklisted)
