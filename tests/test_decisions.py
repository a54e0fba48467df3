"""The lists folder of the blacklist loop: free text that no spreadsheet runs, ids and labels
that round-trip exactly, and a lock that holds across processes (filelock)."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soundtag.cleaning.decisions import Decision, DecisionBook
from soundtag.errors import DataError
from soundtag.manifest import Clip, Manifest
from soundtag.manifest.clip_lists import FORMULA_START, quote_text, read_clip_list, unquote_text

# Ids and labels that a spreadsheet would take for formulas: they must still be written as they are.
IDS = ["=cmd.wav", "-1.wav", "@a.wav", "+b.wav", "plain.wav", "'q.wav"]
LABELS = ["dog", "-hat", "=sum"]
FORMULAS = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1", "'=already quoted", "\n@x"]


def _cells(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("text", FORMULAS + ["", "'", "''", "'s fine", "dog barks", "3 - 2", "a=b"])
def test_quote_text_round_trips_and_never_starts_a_formula(text):
    cell = quote_text(text)
    assert unquote_text(cell) == text
    assert not cell.startswith(FORMULA_START)
    if text.startswith(FORMULA_START):
        assert cell == "'" + text  # OWASP: one single quote in front, nothing else changed
    elif not text.startswith("'"):
        assert cell == text


def test_reasons_are_neutralised_in_every_list_while_ids_and_labels_round_trip(tmp_path):
    folder = tmp_path / "lists"
    book = DecisionBook(folder, clip_ids=IDS, labels=LABELS)
    taken = [
        book.decide(IDS[0], "blacklist", reason=FORMULAS[0]),
        book.decide(IDS[1], "relabel", label="-hat", reason=FORMULAS[1]),
        book.decide(IDS[2], "relabel", label=["=sum", "-hat"], reason=FORMULAS[2]),
        book.decide(IDS[3], "blacklist", reason=FORMULAS[3]),
    ]
    # As from `soundtag clean --auto`: a reason is folded onto one line there too, so a tab or a
    # line break can neither start a cell nor split a row (a lone \r is not quoted by csv).
    taken += book.decide_many(
        [
            Decision(IDS[4], "keep", reason=FORMULAS[4]),
            Decision(IDS[5], "keep", reason=FORMULAS[5]),
            Decision(IDS[5], "blacklist", reason=FORMULAS[6]),
            Decision(IDS[4], "blacklist", reason=FORMULAS[7] + "\r\nsecond line"),
        ]
    )
    assert [d.reason for d in taken[4:]] == ["=1", "=1", "'=already quoted", "@x second line"]

    log = _cells(folder / "decisions.csv")
    assert [r["clip_id"] for r in log] == [d.clip_id for d in taken]  # one row per decision
    assert [r["reason"] for r in log] == ["'" + d.reason for d in taken]  # OWASP: a quote in front
    assert [r["label"] for r in log] == ["", "-hat", "=sum,-hat", "", "", "", "", ""]
    latest = {d.clip_id: d for d in taken}
    for name in ("blacklist.csv", "relabel.csv"):
        rows = _cells(folder / name)
        assert rows, name
        for row in rows:
            assert not row["reason"].startswith(FORMULA_START), (name, row)
            assert row["reason"] == "'" + latest[row["clip_id"]].reason, (name, row)

    # Training reads the ids and labels exactly as the page named them.
    manifest = Manifest.build([Clip(id=i, path=f"/x/{i}", labels=("dog",)) for i in IDS], labels=LABELS)
    assert set(read_clip_list(folder / "blacklist.csv", manifest, what="blacklist")) == {IDS[0], IDS[3], IDS[4], IDS[5]}
    assert read_clip_list(folder / "relabel.csv", manifest, what="relabel") == {IDS[1]: "-hat", IDS[2]: "=sum,-hat"}

    # A book opened again reads every reason back as it was given.
    again = DecisionBook(folder, clip_ids=IDS, labels=LABELS)
    assert [d.reason for d in again.log] == [d.reason for d in taken]
    # ...and writing again does not quote twice.
    again.decide(IDS[4], "keep", reason="fine")
    assert [r["reason"] for r in _cells(folder / "decisions.csv")] == [r["reason"] for r in log] + ["fine"]


# --- the lock across processes ---------------------------------------------------------------

# Each process imports only the decisions module (a spawned multiprocessing child would import
# this test module, and with it torch), waits for the go file, then decides as fast as it can.
_DECIDER = """
import os, sys, time
from soundtag.cleaning.decisions import DecisionBook
folder, go, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
book = DecisionBook(folder)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
for k in range(n):
    book.decide(f"{name}-{k}.wav", "blacklist", reason=f"by {name}")
"""


@pytest.mark.slow
def test_processes_deciding_at_once_lose_no_decision(tmp_path):
    """Four processes take 25 decisions each on one folder: every one lands once in each file."""
    folder, go = tmp_path / "lists", tmp_path / "go"
    DecisionBook(folder)
    names, n = [f"p{k}" for k in range(4)], 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DECIDER, str(folder), str(go), name, str(n)], stdout=subprocess.PIPE, text=True
        )
        for name in names
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    assert [p.wait(120) for p in procs] == [0] * len(procs)
    wanted = sorted(f"{name}-{k}.wav" for name in names for k in range(n))
    assert sorted(r["clip_id"] for r in _cells(folder / "decisions.csv")) == wanted
    assert sorted(r["clip_id"] for r in _cells(folder / "blacklist.csv")) == wanted


def test_a_lock_held_by_another_process_is_waited_for_then_reported(tmp_path, monkeypatch):
    folder = tmp_path / "lists"
    book = DecisionBook(folder, clip_ids=["a.wav"])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, filelock\n"
            f"lock = filelock.FileLock({str(folder / '.lock')!r}); lock.acquire()\n"
            "print('held', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(book._file_lock, "timeout", 0.3)
        before = (folder / "decisions.csv").read_bytes()
        started = time.monotonic()
        with pytest.raises(DataError, match=r"\.lock: another process has held the decisions lock"):
            book.decide("a.wav", "blacklist", reason="waits")
        assert time.monotonic() - started >= 0.3
        assert (folder / "decisions.csv").read_bytes() == before  # nothing written without the lock
    finally:
        holder.communicate("\n", timeout=30)
    assert book.decide("a.wav", "blacklist", reason="now").reason == "now"
    assert [r["clip_id"] for r in _cells(folder / "blacklist.csv")] == ["a.wav"]
