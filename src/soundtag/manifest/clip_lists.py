"""The clip lists of the blacklist loop: ``blacklist.csv`` and ``relabel.csv``, one owner for
their format, read by training (``--blacklist``, ``--relabel``) and written by the review page,
``clean --auto`` and self-verification (:mod:`soundtag.cleaning.decisions`).

A list is a CSV with a ``clip_id`` column (``fname`` and ``id`` are read too) and, for relabels, a
``label`` column (several labels comma-separated). Free text (a decision's ``reason``) is
written so that a spreadsheet never runs it: a cell that would begin with ``=``, ``+``, ``-``,
``@``, a tab, a carriage return or a line feed gets a single quote in front (OWASP's advice
against CSV injection), dropped again when read back. Clip ids and labels are written as they
are, since training matches them exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Iterable, Sequence

from soundtag._io import atomic_write_text
from soundtag.errors import DataError
from soundtag.manifest.core import Manifest

__all__ = [
    "BLACKLIST_COLUMNS",
    "BLACKLIST_FILE",
    "RELABEL_COLUMNS",
    "RELABEL_FILE",
    "apply_relabel",
    "one_line",
    "quote_text",
    "read_clip_list",
    "read_rows",
    "unquote_text",
    "write_rows",
]

BLACKLIST_FILE, RELABEL_FILE = "blacklist.csv", "relabel.csv"
BLACKLIST_COLUMNS = ["clip_id", "decision", "reason", "round", "time"]
RELABEL_COLUMNS = ["clip_id", "label", "decision", "reason", "round", "time"]
MAX_REASON = 500  # characters; a reason is a note for people, not a document
# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
FREE_TEXT_COLUMNS = ("reason",)


def read_clip_list(path: str | Path, manifest: Manifest, *, what: str) -> dict[str, str]:
    """Read a blacklist or relabel CSV: ``clip_id`` (or ``fname``/``id``) and an optional second
    column (``label`` for relabels). Unknown clips are an error naming the row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    id_col = next((c for c in ("clip_id", "fname", "id") if c in rows[0]), None)
    if id_col is None:
        raise DataError(f"{path}: needs a clip_id column; found {list(rows[0])}")
    known = set(manifest.ids)
    bad = [f"row {i} ({r[id_col]})" for i, r in enumerate(rows, start=2) if r[id_col] not in known]
    if bad:
        raise DataError(
            f"{path}: {len(bad)} {what} row(s) name clips that are not in the dataset: {', '.join(bad[:10])}"
        )
    return {r[id_col]: (r.get("label") or "") for r in rows}


def apply_relabel(manifest: Manifest, relabel: dict[str, str], source: str) -> Manifest:
    unknown = sorted(
        {lab for labs in relabel.values() for lab in labs.split(",") if lab and lab not in manifest.labels}
    )
    if unknown:
        raise DataError(f"{source}: unknown label(s) {unknown}; known: {', '.join(manifest.labels)}")
    return manifest.map(
        lambda c: dataclasses.replace(c, labels=tuple(relabel[c.id].split(","))) if relabel.get(c.id) else c
    )


def read_rows(path: Path, *, required: Sequence[str]) -> list[tuple[int, dict]]:
    """Rows of a CSV with their line numbers; a missing column is an error naming the file."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [(reader.line_num, r) for r in reader]
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    missing = [c for c in required if c not in header]
    if missing and (rows or header):
        raise DataError(
            f"{path}: missing column(s) {missing}; found {header}. Fix the header or move the "
            "file away to start a new list"
        )
    return rows


def one_line(text: str) -> str:
    """Free text as one line: whitespace runs (tabs, line breaks) become one space, at most
    ``MAX_REASON`` characters. (The csv module leaves a lone carriage return unquoted, and a
    reader then splits the row there.)"""
    return " ".join(str(text).split())[:MAX_REASON]


def quote_text(text: str) -> str:
    """Free text as a CSV cell that no spreadsheet runs as a formula.

    Text that begins with ``=``, ``+``, ``-``, ``@``, a tab, a carriage return or a line feed
    gets a single quote in front (OWASP's advice against CSV injection). Text that already
    begins with a quote followed by one of those, or by another quote, gets one too, so
    :func:`unquote_text` gives back every text exactly.

    Examples
    --------
    >>> quote_text("=1+2"), quote_text("-3 dB"), quote_text("dog barks")
    ("'=1+2", "'-3 dB", 'dog barks')
    """
    if text.startswith(FORMULA_START) or (text[:1] == "'" and text[1:2] in (*FORMULA_START, "'")):
        return "'" + text
    return text


def unquote_text(cell: str) -> str:
    """The text that :func:`quote_text` wrote as ``cell``."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in (*FORMULA_START, "'") else cell


def write_rows(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    """Write a list atomically: free-text cells on one line and through :func:`quote_text`, ids
    and labels as they are."""
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    out.writeheader()
    out.writerows(
        {k: quote_text(one_line(v)) if k in FREE_TEXT_COLUMNS and isinstance(v, str) else v for k, v in row.items()}
        for row in rows
    )
    atomic_write_text(path, buf.getvalue())
