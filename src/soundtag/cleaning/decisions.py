"""The decisions of the blacklist loop, kept in a lists folder that training reads.

Layout of a lists folder (default ``cleaning/<dataset name>/``)::

    decisions.csv   every decision in the order it was taken: clip_id, decision, label,
                    reason, round, time (Keep decisions too, so progress, undo and resume work)
    blacklist.csv   clip_id, decision, reason, round, time: the clips to leave out of training
    relabel.csv     clip_id, label, decision, reason, round, time: the label corrections
    rounds.json     one entry per review round: its number, the run it reviewed, when it began

``decisions.csv`` is the record; ``blacklist.csv`` and ``relabel.csv`` are derived from it after
every decision, so they always agree with it (``soundtag train --blacklist/--relabel`` reads them
through :func:`soundtag.manifest.clip_lists.read_clip_list`, which owns their format). Each file
is replaced atomically, and a decision is taken under a thread lock and, across processes, a
``filelock`` lock on ``.lock`` (on every platform), with the log read again from disk, so a review
page and ``soundtag clean --auto`` can share a folder.

Free text (a decision's ``reason``) is written so that a spreadsheet never runs it: a cell that
would begin with ``=``, ``+``, ``-``, ``@``, a tab, a carriage return or a line feed is written
with a single quote in front (OWASP's advice against CSV injection), and the quote is dropped
again when the book reads the lists back. Clip ids and labels are written as they are,
since training matches them exactly.

How decisions combine: within one round the later decision on a clip replaces the earlier one
(the person changed their mind). Across rounds they compose along two axes, because each round
reviews a run trained with the earlier rounds' lists: a relabel sets the clip's label and keeps it
in training; Keep keeps the label the page showed (which includes earlier relabels) and brings a
blacklisted clip back; Blacklist leaves it out of training (an earlier relabel still labels it in
the evaluation).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import filelock

from soundtag._io import atomic_write_json
from soundtag.errors import DataError, ParameterError
from soundtag.manifest.clip_lists import (  # the lists' format: one owner, which training reads through
    BLACKLIST_COLUMNS,
    BLACKLIST_FILE,
    RELABEL_COLUMNS,
    RELABEL_FILE,
    one_line,
    read_rows,
    unquote_text,
    write_rows,
)

DECISIONS = ("blacklist", "keep", "relabel")
LOG_FILE = "decisions.csv"
LOG_COLUMNS = ["clip_id", "decision", "label", "reason", "round", "time"]
LOCK_TIMEOUT = 60.0  # seconds to wait for another process's decision before giving up


@dataclass(frozen=True)
class Decision:
    """One decision on one clip.

    Attributes
    ----------
    clip_id : the clip, as the run's manifest names it
    decision : ``blacklist``, ``keep`` or ``relabel``
    label : the new label(s) of a relabel (several joined by commas for multi-label data), else ""
    reason : why, in a person's words or the finder's (``misclassified; label_issue``)
    round : the review round it was taken in (0 for decisions imported from older lists)
    time : local time, ISO 8601 with the UTC offset
    """

    clip_id: str
    decision: str
    label: str = ""
    reason: str = ""
    round: int = 0
    time: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def default_lists_dir(run_dir: str | Path, base: str | Path = ".") -> Path:
    """The lists folder used when none is given: ``<base>/cleaning/<dataset name of the run>``."""
    from soundtag.inference.blended import open_run

    name = open_run(run_dir).dataset_name()
    return Path(base) / "cleaning" / (name or "dataset")


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


class DecisionBook:
    """The decisions of one dataset, read from and written to a lists folder.

    Parameters
    ----------
    folder : the lists folder; created when missing
    clip_ids : the clips decisions may name (a run's manifest); None accepts any clip
    labels : the labels a relabel may use; None accepts any label

    Examples
    --------
    >>> book = DecisionBook("cleaning/esc10", clip_ids=["a.ogg", "b.ogg"], labels=["dog", "rain"])  # doctest: +SKIP
    >>> book.decide("a.ogg", "relabel", label="rain", reason="it is rain")  # doctest: +SKIP
    >>> book.blacklisted(), book.relabelled()  # doctest: +SKIP
    (set(), {'a.ogg': 'rain'})
    """

    def __init__(
        self, folder: str | Path, *, clip_ids: Iterable[str] | None = None, labels: Sequence[str] | None = None
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clip_ids = None if clip_ids is None else frozenset(clip_ids)
        self.labels = None if labels is None else tuple(labels)
        self.round = 0
        self._lock = threading.Lock()
        # thread_local=False: the thread lock above already serialises this book's threads.
        self._file_lock = filelock.FileLock(self.folder / ".lock", timeout=LOCK_TIMEOUT, thread_local=False)
        with self._locked():
            self._log = self._read_log()
            self._write_derived()

    # --- files ---------------------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.folder / LOG_FILE

    @property
    def blacklist_file(self) -> Path:
        return self.folder / BLACKLIST_FILE

    @property
    def relabel_file(self) -> Path:
        return self.folder / RELABEL_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the thread lock, then the cross-process lock on ``.lock`` (``filelock``)."""
        with self._lock:
            try:
                self._file_lock.acquire()
            except filelock.Timeout:
                raise DataError(
                    f"{self._file_lock.lock_file}: another process has held the decisions "
                    f"lock for over {LOCK_TIMEOUT:g} s; wait for it to finish, or stop it "
                    "and try again"
                ) from None
            try:
                yield
            finally:
                self._file_lock.release()

    def _read_log(self) -> list[Decision]:
        if not self.log_file.is_file():
            # Lists written before this book (by hand, or an older tool) become round-0 decisions.
            return self._import_lists()
        rows = read_rows(self.log_file, required=LOG_COLUMNS)
        log = []
        for line, r in rows:
            if r["decision"] not in DECISIONS:
                raise DataError(
                    f"{self.log_file}: line {line}: unknown decision {r['decision']!r}; "
                    f"expected one of {', '.join(DECISIONS)} (fix or delete the line)"
                )
            try:
                round_no = int(r["round"] or 0)
            except ValueError:
                raise DataError(f"{self.log_file}: line {line}: round {r['round']!r} is not a whole number") from None
            log.append(
                Decision(
                    r["clip_id"],
                    r["decision"],
                    r["label"] or "",
                    unquote_text(r["reason"] or ""),
                    round_no,
                    r["time"] or "",
                )
            )
        return log

    def _import_lists(self) -> list[Decision]:
        log = []
        for path, decision in ((self.blacklist_file, "blacklist"), (self.relabel_file, "relabel")):
            if not path.is_file():
                continue
            for _, r in read_rows(path, required=["clip_id"] + (["label"] if decision == "relabel" else [])):
                label = (r.get("label") or "") if decision == "relabel" else ""
                round_no = r.get("round") or "0"
                log.append(
                    Decision(
                        r["clip_id"],
                        decision,
                        label,
                        unquote_text(r.get("reason") or "imported"),
                        int(round_no) if round_no.isdigit() else 0,
                        r.get("time") or "",
                    )
                )
        return log

    def _write_derived(self) -> None:
        """Write the log, then the blacklist and relabel files folded from it."""
        write_rows(self.log_file, LOG_COLUMNS, [d.to_dict() for d in self._log])
        blacklist, relabel = _fold(self._log)
        write_rows(
            self.blacklist_file, BLACKLIST_COLUMNS, [{k: getattr(d, k) for k in BLACKLIST_COLUMNS} for d in blacklist]
        )
        write_rows(self.relabel_file, RELABEL_COLUMNS, [{k: getattr(d, k) for k in RELABEL_COLUMNS} for d in relabel])

    # --- rounds --------------------------------------------------------------------------
    def start_round(self, run_dir: str | Path) -> int:
        """Open the review round of ``run_dir`` and make it the book's current round.

        A run already reviewed in the latest round continues that round (closing the page and
        opening it again resumes it); any other run begins round ``1 + earlier rounds``.
        """
        run = str(Path(run_dir).resolve())
        with self._locked():
            path = self.folder / "rounds.json"
            rounds = json.loads(path.read_text()) if path.is_file() else []
            if not rounds or rounds[-1]["run"] != run:
                rounds.append({"round": len(rounds) + 1, "run": run, "started": _now()})
                atomic_write_json(path, rounds)
            self.round = int(rounds[-1]["round"])
        return self.round

    # --- decisions -----------------------------------------------------------------------
    def validate(self, clip_id: str, decision: str, label: str | Sequence[str] | None = None) -> str:
        """Check a decision without taking it; return its label as stored (``""`` unless relabel).

        Raises
        ------
        ParameterError
            for a clip not in the run, an unknown decision, or a relabel without a known label.
        """
        if self.clip_ids is not None and clip_id not in self.clip_ids:
            raise ParameterError(
                f"clip {clip_id!r} is not in the run's manifest; decisions can only name the run's clips"
            )
        if decision not in DECISIONS:
            raise ParameterError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        if decision != "relabel":
            if label:
                raise ParameterError(f"a {decision} decision takes no label (got {label!r}); use relabel")
            return ""
        parts = [label] if isinstance(label, str) else list(label or [])
        parts = [p.strip() for part in parts for p in part.split(",") if p.strip()]
        if not parts:
            raise ParameterError(f"relabel of {clip_id!r} needs a label")
        if self.labels is not None:
            unknown = [p for p in parts if p not in self.labels]
            if unknown:
                raise ParameterError(f"unknown label(s) {unknown} for {clip_id!r}; known: {', '.join(self.labels)}")
        return ",".join(dict.fromkeys(parts))

    def decide(
        self,
        clip_id: str,
        decision: str,
        *,
        label: str | Sequence[str] | None = None,
        reason: str = "",
        round: int | None = None,
    ) -> Decision:
        """Take a decision and write every file at once (atomically). Returns the decision.

        Nothing is written when the decision is invalid (see :meth:`validate`).
        """
        stored_label = self.validate(clip_id, decision, label)
        entry = Decision(
            clip_id, decision, stored_label, one_line(reason), self.round if round is None else int(round), _now()
        )
        return self.decide_many([entry])[0]

    def decide_many(self, entries: Sequence[Decision]) -> list[Decision]:
        """Take several decisions in one write (``soundtag clean --auto``).

        Every entry is validated before anything is written, so one bad entry writes none.
        Entries without a time get the current time; reasons are folded onto one line of at
        most :data:`~soundtag.manifest.clip_lists.MAX_REASON` characters, as :meth:`decide` stores them.
        """
        for e in entries:
            self.validate(e.clip_id, e.decision, e.label or None)
        entries = [replace(e, reason=one_line(e.reason), time=e.time or _now()) for e in entries]
        with self._locked():
            before = self._log
            self._log = self._read_log() + list(entries)
            try:
                self._write_derived()
            except BaseException:
                self._log = before
                raise
        return list(entries)

    def undo(self, *, round: int | None = None) -> Decision | None:
        """Remove the latest decision (of ``round`` when given); return it, or None if there is none."""
        with self._locked():
            log = self._read_log()
            idx = next((i for i in range(len(log) - 1, -1, -1) if round is None or log[i].round == round), None)
            if idx is None:
                self._log = log
                return None
            removed = log.pop(idx)
            self._log = log
            self._write_derived()
            return removed

    # --- reading -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the log again from disk (another process may have written it)."""
        with self._locked():
            self._log = self._read_log()

    @property
    def log(self) -> list[Decision]:
        """Every decision, oldest first."""
        return list(self._log)

    def latest(self) -> dict[str, Decision]:
        """The latest decision on each clip that has one (what the review page shows)."""
        return {d.clip_id: d for d in self._log}

    def blacklisted(self) -> set[str]:
        """Clips that ``blacklist.csv`` holds."""
        return {d.clip_id for d in _fold(self._log)[0]}

    def relabelled(self) -> dict[str, str]:
        """Clip -> label(s) that ``relabel.csv`` holds."""
        return {d.clip_id: d.label for d in _fold(self._log)[1]}


def _fold(log: Sequence[Decision]) -> tuple[list[Decision], list[Decision]]:
    """The blacklist rows and relabel rows that ``log`` leads to (see the module docstring)."""
    last_in_round: dict[tuple[str, int], Decision] = {}
    for d in log:  # within a round the later decision replaces the earlier one
        last_in_round.pop((d.clip_id, d.round), None)
        last_in_round[d.clip_id, d.round] = d
    blacklist: dict[str, Decision] = {}
    relabel: dict[str, Decision] = {}
    for d in sorted(last_in_round.values(), key=lambda d: d.round):  # stable: log order within a round
        if d.decision == "blacklist":
            blacklist.pop(d.clip_id, None)
            blacklist[d.clip_id] = d
        else:
            blacklist.pop(d.clip_id, None)
            if d.decision == "relabel":
                relabel.pop(d.clip_id, None)
                relabel[d.clip_id] = d
    return list(blacklist.values()), list(relabel.values())


def retrain_command(run_dir: str | Path, lists_dir: str | Path) -> str:
    """The ``soundtag train`` command that retrains ``run_dir``'s recipe with a lists folder's
    blacklist and relabels (the next round of the blacklist loop)."""
    from soundtag.inference.blended import BlendedRun, open_run

    run = open_run(run_dir)
    folder = Path(lists_dir)
    lists = f"--blacklist {folder / BLACKLIST_FILE} --relabel {folder / RELABEL_FILE}"
    if not isinstance(run, BlendedRun):
        return f"soundtag train --data {run.data_source() or 'DATA'} --recipe {run.recipe_file()} {lists}"
    if run.ensemble.plan_file.is_file():  # the default's views: trained again the same way
        return f"soundtag train --data {run.data_source() or 'DATA'} {lists}"
    # a blend of runs made by hand: each run again, then the blend
    steps = [
        f"soundtag train --data {member.data_source() or 'DATA'} --recipe {member.recipe_file()} {lists} "
        f"--out {member.path}-r2"
        for member in run.runs()
    ]
    steps.append(f"soundtag ensemble {' '.join(f'{m.path}-r2' for m in run.runs())} --out {run.path}-r2")
    return " && ".join(steps)
