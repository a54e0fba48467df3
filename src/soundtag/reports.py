"""Tables of results, as the command line prints them and a notebook shows them.

Each function takes what a library call returned and gives a :class:`rich.table.Table`
(``rich.print(table)``, or the table itself as the last line of a notebook cell); none of
them computes anything the library has not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from rich.table import Table
from rich.text import Text

SUBSETS = ("all", "verified", "not_blacklisted", "blacklisted")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]], *, left: Iterable[str] = ()) -> Table:
    """A table whose cells are ``str(value)``, never read as markup (clip ids and file names may
    hold ``[brackets]``); the ``left`` columns are left-aligned (text), the others right-aligned."""
    left = set(left)
    out = Table(title=title)
    for col in columns:
        out.add_column(col, justify="left" if col in left else "right", no_wrap=col in left)
    for row in rows:
        out.add_row(*(Text(str(v)) for v in row))
    return out


def metrics_table(run_dir: str | Path, metrics: dict) -> Table:
    """A run's metrics (:func:`soundtag.training.evaluate_run`): one row per subset of clips.

    A subset without clips is left out, and ``not_blacklisted`` too when nothing is blacklisted
    (it is then ``all``). The title says when only some folds are finished.
    """
    complete = metrics.get("complete", True)
    scope = "out-of-fold metrics" if complete else f"metrics of fold(s) {metrics.get('folds')} only"
    if metrics.get("selected_on_scored_clips"):
        scope += " (training.keep: best, each fold's epoch picked on the clips scored here: optimistic)"
    any_blacklisted = metrics.get("blacklisted", {}).get("clips", 0) > 0
    rows = []
    for name in SUBSETS:
        m = metrics.get(name, {})
        if not m.get("clips") or (name == "not_blacklisted" and not any_blacklisted):
            continue
        last = m.get("lwlrap", m.get("log_loss"))
        rows.append((name, m["clips"], f"{m['map@3']:.4f}", f"{m['top1']:.4f}", f"{last:.4f}"))
    return table(
        f"{scope}: {run_dir}", ("subset", "clips", "MAP@3", "top-1", "log loss / lwlrap"), rows, left=("subset",)
    )


def ensemble_table(result) -> Table:
    """Each run's weight and out-of-fold metrics, then the blend's (:func:`~soundtag.prediction.ensemble_runs`)."""
    metric = "lwlrap" if "lwlrap" in result.blend_metrics else "log_loss"

    def cells(m):
        return f"{m['map@3']:.4f}", f"{m['top1']:.4f}", f"{m[metric]:.4f}"

    def name(run: Path) -> str:  # a run inside the ensemble (a view of the default) by its folder's name
        inside = Path(run).absolute().is_relative_to(Path(result.out_dir).absolute())
        return Path(run).absolute().relative_to(Path(result.out_dir).absolute()).as_posix() if inside else str(run)

    rows = [(name(r), f"{w:.3f}", *cells(m)) for r, w, m in zip(result.runs, result.weights, result.run_metrics)]
    rows.append(("blend", "1.000", *cells(result.blend_metrics)))
    if result.equal_weight_metrics and result.weighting == "fitted":  # nothing fitted on the clips it scores
        rows.append(("blend, equal weights", "", *cells(result.equal_weight_metrics)))
    how = f"weights fitted on {result.fitted_on} training clips" if result.weighting == "fitted" else "equal weights"
    return table(
        f"ensemble: out-of-fold, {how}",
        ("run", "weight", "MAP@3", "top-1", metric.replace("_", " ")),
        rows,
        left=("run",),
    )


def features_table(dataset: str, clips: int, summaries: Sequence) -> Table:
    """One row per recipe of an extraction (:class:`~soundtag.features.ExtractionSummary`)."""
    rows = [
        (s.recipe, s.clips, s.computed, s.cached, len(s.failures), f"{s.hours:.2f}", f"{s.clips_per_second:.0f}")
        for s in summaries
    ]
    return table(
        f"features: {dataset} ({clips} clips)",
        ("recipe", "clips", "computed", "cached", "failed", "hours", "clips/s"),
        rows,
        left=("recipe",),
    )


def suspects_tables(run_dir: str | Path, suspects, per_class) -> tuple[Table, Table]:
    """The per-class summary (:func:`~soundtag.cleaning.summarize`) and the ten most suspect clips."""
    by_class = table(
        f"suspects per class: {run_dir}",
        ("class", "clips", "suspects", "misclassified", "label issue", "audio", "decided", "most confused with"),
        (
            (
                r["class"],
                r["clips"],
                r["suspects"],
                r["misclassified"],
                r["label_issue"],
                r["audio"],
                r["decided"],
                r["confused_with"],
            )
            for r in per_class.to_dict("records")
        ),
        left=("class", "most confused with"),
    )
    head = table(
        "most suspect",
        ("rank", "clip", "label", "predicted", "score", "reasons"),
        (
            (r.rank, r.clip_id, r.label, f"{r.pred1} {r.prob1:.2f}", f"{r.score:.3f}", r.reasons)
            for r in suspects.head(10).itertuples(index=False)
        ),
        left=("clip", "label", "predicted", "reasons"),
    )
    return by_class, head


def decisions_table(title: str, decisions: Sequence) -> Table:
    """Decisions (:class:`~soundtag.cleaning.Decision`) with their reasons."""
    return table(
        title,
        ("clip", "decision", "reason"),
        ((d.clip_id, d.decision + (f" -> {d.label}" if d.label else ""), d.reason) for d in decisions),
        left=("clip", "decision", "reason"),
    )
