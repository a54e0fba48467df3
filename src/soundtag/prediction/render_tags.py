"""Tagging results as a terminal table, JSON or CSV (``soundtag tag``)."""

from __future__ import annotations

import csv
import io
import json

from soundtag.prediction.stream import events_of
from soundtag.prediction.tagger import ClipTags, top_k


def _seconds(t: float) -> str:
    return f"{t:.2f}"


def to_json(results: list[ClipTags], labels: list[str], k: int, timeline: bool) -> str:
    """A list of ``{"file", "tags": [{"label", "score"}], "timeline": [...]}`` objects."""
    out = []
    for r in results:
        item = {"file": r.path, "tags": [{"label": lab, "score": round(p, 6)} for lab, p in top_k(r.probs, labels, k)]}
        if r.notes:
            item["notes"] = r.notes
        if timeline:
            item["timeline"] = [
                {
                    "start": round(s, 3),
                    "end": round(e, 3),
                    "tags": [{"label": lab, "score": round(p, 6)} for lab, p in top_k(pr, labels, k)],
                }
                for s, e, pr in r.timeline
            ]
        out.append(item)
    return json.dumps(out, indent=2) + "\n"


def to_csv(results: list[ClipTags], labels: list[str], k: int, timeline: bool) -> str:
    """``file,start,end,rank,label,score``: one row per label shown (start/end empty for whole files)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "start", "end", "rank", "label", "score"])
    for r in results:
        spans = [(s, e, p) for s, e, p in r.timeline] if timeline else [(None, None, r.probs)]
        for s, e, probs in spans:
            for rank, (lab, p) in enumerate(top_k(probs, labels, k), start=1):
                w.writerow(
                    [r.path, "" if s is None else _seconds(s), "" if e is None else _seconds(e), rank, lab, f"{p:.6f}"]
                )
    return buf.getvalue()


def to_events_csv(results: list[ClipTags], labels: list[str], threshold: float, timeline: bool) -> str:
    """``file,start,end,label,probability``: a row per label at or above ``threshold``.

    With ``timeline``, the windows where a label stays at or above it merge into one event
    (its start, its end, the highest probability in it), in time order; otherwise one row per
    label of the whole file, start and end empty.
    """
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "start", "end", "label", "probability"])
    for r in results:
        if not timeline:
            for lab, p in top_k(r.probs, labels, len(labels)):
                if p >= threshold:
                    w.writerow([r.path, "", "", lab, f"{p:.6f}"])
            continue
        events = [(ev.start, ev.end, ev.label, ev.probability) for ev in events_of(r.timeline, labels, threshold)]
        for s, e, lab, p in sorted(events, key=lambda ev: (ev[0], -ev[3])):
            w.writerow([r.path, _seconds(s), _seconds(e), lab, f"{p:.6f}"])
    return buf.getvalue()


def table(results: list[ClipTags], labels: list[str], k: int, timeline: bool):
    """A rich table: a row per file (and per window with ``timeline``)."""
    from rich.table import Table
    from rich.text import Text  # plain text: a file name may hold [brackets]

    t = Table(title=f"top {k} labels")
    t.add_column("file", overflow="fold")
    if timeline:
        t.add_column("time (s)", no_wrap=True)
    t.add_column("labels (probability)")
    for r in results:
        shown = "  ".join(f"{lab} ({p:.2f})" for lab, p in top_k(r.probs, labels, k))
        t.add_row(Text(r.path), *(["whole"] if timeline else []), Text(shown))
        for s, e, probs in r.timeline if timeline else []:
            t.add_row(
                "",
                f"{_seconds(s)}-{_seconds(e)}",
                Text("  ".join(f"{lab} ({p:.2f})" for lab, p in top_k(probs, labels, k))),
            )
    return t
