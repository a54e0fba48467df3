"""Self-verification (CP-JKU, 2nd place in FSDKaggle2018): which unverified labels to believe.

One round's decision, from a run's out-of-fold posteriors: an unverified clip is *accepted*
when the posterior of its own label reaches ``threshold`` (a number, or ``"auto"``: the level
the model reaches on 80% of the verified clips; at most ``per_class`` a class, the most
confident first), *relabelled* when the model is at least ``relabel_threshold`` sure of
another label (the same cap, counted for the new label), and *dropped* otherwise. Verified clips
are always kept as they are.

:func:`self_verify` runs the rounds (``soundtag self-verify RUN``): round ``r`` decides from the
out-of-fold posteriors of round ``r - 1``'s run (round 0 is ``RUN``, trained on the noisy labels),
writes its decisions as a lists folder of the blacklist loop (``decisions.csv`` with a reason
per clip, ``blacklist.csv`` of the dropped clips, ``relabel.csv``), and trains an ordinary run
with them. Every round decides on the original labels again, so a clip dropped in one round can
be accepted in the next by a better model. Layout (default ``RUN-self-verify/``)::

    round-1/lists/   decisions.csv, blacklist.csv, relabel.csv, verdicts.json
    round-1/run/     the run trained without round 1's dropped clips
    round-2/...
    report.json, report.csv   per round: unverified clips accepted, relabelled, dropped

A round's lists appear all at once (written aside, then renamed), and its run resumes like any
run, so a killed ``self-verify`` started again goes on where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from soundtag.errors import DataError, ParameterError

__all__ = ["RoundReport", "Verdicts", "self_verify", "verify_labels"]

VERDICTS_FILE = "verdicts.json"
REPORT_COLUMNS = [
    "round",
    "run",
    "threshold",
    "unverified",
    "accepted",
    "relabelled",
    "dropped",
    "accepted_correct",
    "relabelled_correct",
    "dropped_wrong",
    "flipped",
    "top1",
    "map3",
]


@dataclass(frozen=True)
class Verdicts:
    """One round's decision over a run's clips (indices into its manifest).

    Attributes
    ----------
    accepted : unverified clips whose label the model confirms
    relabelled : unverified clips given another label, with ``new_labels`` (class indices)
    dropped : unverified clips left out of the next round
    new_labels : the label each of ``relabelled`` gets
    threshold : the acceptance threshold used (``"auto"`` resolved to a number)
    """

    accepted: np.ndarray
    relabelled: np.ndarray
    dropped: np.ndarray
    new_labels: np.ndarray
    threshold: float = 0.95


def _capped(
    candidates: np.ndarray, classes: np.ndarray, confidence: np.ndarray, per_class: int | None, used: np.ndarray
) -> np.ndarray:
    """``candidates`` kept under the per-class cap, most confident first (ties: earlier clip);
    ``used`` counts what each class already took and is updated."""
    keep = []
    for i in candidates[np.argsort(-confidence[candidates], kind="stable")]:
        c = classes[i]
        if per_class is None or used[c] < per_class:
            used[c] += 1
            keep.append(i)
    return np.array(sorted(keep), dtype=int)


# "auto": the own-label posterior that 80% of the verified clips reach. A fixed 0.95 suits models as
# confident as CP-JKU's; one trained with mixup spreads its posteriors (a clean ESC-50 fold-1 model of
# esc50-cpu-lh gives only 19% of its clips 0.95), so the checked labels say what "sure" means instead.
AUTO_QUANTILE = 0.2


def resolve_threshold(threshold: float | str, own: np.ndarray, verified: np.ndarray) -> float:
    """The acceptance threshold: ``threshold`` itself, or for ``"auto"`` the :data:`AUTO_QUANTILE`
    quantile of the verified clips' posteriors of their own label (the level the model reaches on
    80% of the labels a person checked).

    >>> resolve_threshold("auto", np.array([0.9, 0.5, 0.7, 0.3, 0.8, 0.1]), np.array([1, 1, 1, 1, 1, 0], bool))
    0.46
    """
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ParameterError(f"threshold={threshold!r}: give a number in (0, 1] or 'auto'")
        if not verified.any():
            raise ParameterError(
                "threshold='auto' is set from the verified clips' posteriors, and no clip is "
                "marked verified (manifest field manually_verified); give a number, e.g. 0.95"
            )
        return round(float(np.quantile(own[verified], AUTO_QUANTILE)), 6)
    if not 0 < threshold <= 1:
        raise ParameterError(f"threshold={threshold} must be in (0, 1] or 'auto'")
    return float(threshold)


def verify_labels(
    probs: np.ndarray,
    targets: np.ndarray,
    verified: np.ndarray,
    *,
    threshold: float | str = 0.95,
    per_class: int | None = None,
    relabel_threshold: float | None = None,
) -> Verdicts:
    """Decide one round of self-verification for single-label data.

    Parameters
    ----------
    probs : ``(clips, classes)`` out-of-fold posteriors
    targets : ``(clips, classes)`` one-hot given labels
    verified : ``(clips,)`` True where a person checked the label
    threshold : the posterior of the given label an unverified clip needs to be accepted, or
        ``"auto"`` (see :func:`resolve_threshold`)
    per_class : at most this many accepted (and, apart, relabelled) clips a class; None: no cap
    relabel_threshold : the posterior another label needs for a relabel; None: never relabel

    Examples
    --------
    >>> probs = np.array([[0.97, 0.03], [0.60, 0.40], [0.02, 0.98], [0.99, 0.01]])
    >>> targets = np.eye(2)[[0, 0, 0, 1]]
    >>> v = verify_labels(probs, targets, np.zeros(4, bool), threshold=0.95, relabel_threshold=0.95)
    >>> v.accepted.tolist(), v.relabelled.tolist(), v.new_labels.tolist(), v.dropped.tolist()
    ([0], [2, 3], [1, 0], [1])
    """
    probs, targets, verified = np.asarray(probs, float), np.asarray(targets), np.asarray(verified, bool)
    if probs.shape != targets.shape or probs.ndim != 2 or len(verified) != len(probs):
        raise ParameterError(
            f"probs {probs.shape}, targets {targets.shape} and verified ({len(verified)},) "
            "must describe the same clips and classes"
        )
    if (targets.sum(axis=1) != 1).any():
        raise ParameterError("self-verification takes single-label data: every clip needs exactly one label")
    if relabel_threshold is not None and not 0 < relabel_threshold <= 1:
        raise ParameterError(f"relabel_threshold={relabel_threshold} must be in (0, 1]")
    if per_class is not None and per_class < 0:
        raise ParameterError(f"per_class={per_class} must be at least 0")
    given = targets.argmax(axis=1)
    own = probs[np.arange(len(probs)), given]
    threshold = resolve_threshold(threshold, own, verified)
    unverified = np.flatnonzero(~verified)
    accepted = _capped(unverified[own[unverified] >= threshold], given, own, per_class, np.zeros(probs.shape[1], int))
    rest = np.setdiff1d(unverified, accepted)
    others = probs.copy()
    others[np.arange(len(probs)), given] = -np.inf
    best_other, best_conf = others.argmax(axis=1), others.max(axis=1)
    relabelled = np.array([], dtype=int)
    if relabel_threshold is not None:
        sure = rest[best_conf[rest] >= relabel_threshold]
        relabelled = _capped(sure, best_other, best_conf, per_class, np.zeros(probs.shape[1], int))
    dropped = np.setdiff1d(rest, relabelled)
    return Verdicts(accepted, relabelled, dropped, best_other[relabelled], threshold)


@dataclass
class RoundReport:
    """What one round decided, and what its run scored out of fold (on the labels it trained
    with). With a ``truth`` (a benchmark's clean labels): how many accepted clips carried their
    true label, how many relabels found it, how many dropped clips were wrong, and how many
    unverified clips were wrong in all (``flipped``)."""

    round: int
    run: str
    unverified: int
    accepted: int
    relabelled: int
    dropped: int
    accepted_correct: int | None = None
    relabelled_correct: int | None = None
    dropped_wrong: int | None = None
    flipped: int | None = None
    top1: float | None = None
    map3: float | None = None
    threshold: float | None = None
    lists: str = field(default="", repr=False)


def self_verify(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    rounds: int = 3,
    threshold: float | str = 0.95,
    per_class: int | None = None,
    relabel_threshold: float | None = None,
    truth: dict[str, str] | None = None,
    progress: bool = True,
    hardware=None,
) -> list[RoundReport]:
    """Run ``rounds`` rounds of self-verification from a finished run (see the module's text).

    Parameters
    ----------
    run_dir : a finished run trained on the noisy labels (round 0)
    out_dir : where the rounds go; default ``<run_dir>-self-verify`` beside it
    rounds, threshold, per_class, relabel_threshold : as :func:`verify_labels`, each round
    truth : clip id -> true label, to count how many decisions were right (benchmarks)
    progress : progress bars of the training runs
    hardware : :class:`soundtag.training.Hardware` of the runs

    Returns
    -------
    one :class:`RoundReport` per round, also written to ``report.json`` and ``report.csv``
    """
    from soundtag._io import atomic_write_json, atomic_write_text
    from soundtag.resolve import resolve_recipe
    from soundtag.runs import EnsembleDir, RunDir
    from soundtag.training import Hardware, train  # the public API: the rounds are ordinary runs

    if rounds < 1:
        raise ParameterError(f"rounds={rounds} must be at least 1")
    if EnsembleDir(run_dir).is_ensemble():
        raise ParameterError(
            f"{run_dir} blends several runs; self-verification retrains one recipe: give one of them "
            f"(such as {EnsembleDir(run_dir).view_dir('lh')})"
        )
    base = RunDir(run_dir).require_complete()
    oof = base.out_of_fold()
    manifest = oof.manifest
    if manifest.multilabel:
        raise DataError(f"{base.path}: self-verification takes single-label data; this run is multi-label")
    labels = list(manifest.labels)
    targets = np.eye(len(labels))[[labels.index(c.labels[0]) for c in manifest]]
    # Clips a person checked; where the manifest marks none, every label is on trial.
    verified = np.array([bool(c.manually_verified) for c in manifest])
    left_out = [c.id for c, kept in zip(manifest, oof.in_training) if not kept]
    given = {c.id: c.labels[0] for c in manifest}
    if truth is not None and set(given) - set(truth):
        missing = sorted(set(given) - set(truth))
        raise ParameterError(f"truth has no label for {len(missing)} clip(s) of {base.path}, e.g. {missing[0]}")
    out = Path(out_dir) if out_dir is not None else base.path.with_name(base.path.name + "-self-verify")
    info = base.info()
    reports: list[RoundReport] = []
    previous = base
    for r in range(1, rounds + 1):
        round_dir = out / f"round-{r}"
        lists = round_dir / "lists"
        if (lists / VERDICTS_FILE).is_file():
            made = json.loads((lists / VERDICTS_FILE).read_text())
            settings = {"threshold": threshold, "per_class": per_class, "relabel_threshold": relabel_threshold}
            if {k: made.get(k) for k in settings} != settings:
                raise ParameterError(
                    f"{round_dir} was decided with { ({k: made.get(k) for k in settings}) }, not "
                    f"{settings}; give another --out to run rounds with these settings"
                )
        else:
            probs = _probs_in_order(previous, manifest.ids)
            verdicts = verify_labels(
                probs, targets, verified, threshold=threshold, per_class=per_class, relabel_threshold=relabel_threshold
            )
            _write_lists(
                lists,
                r,
                manifest,
                probs,
                targets,
                verified,
                verdicts,
                left_out,
                previous.path,
                threshold=threshold,
                per_class=per_class,
                relabel_threshold=relabel_threshold,
            )
        run = RunDir(round_dir / "run")
        if run.path.exists() and not run.is_run():
            shutil.rmtree(run.path)  # killed before its run.json: nothing of it was finished
        if not (run.is_run() and not run.unfinished_folds() and run.metrics_file.is_file()):
            recipe = resolve_recipe(
                base.recipe_file(), blacklist=lists / "blacklist.csv", relabel=lists / "relabel.csv"
            ).recipe
            train(
                manifest,
                recipe,
                run.path,
                cache_dir=info["cache_dir"],
                progress=progress,
                resume=run.is_run(),
                data_source=info.get("data"),
                hardware=hardware or Hardware(),
            )
        reports.append(_round_report(r, run, lists, given, truth))
        rows = [asdict(x) for x in reports]
        atomic_write_json(out / "report.json", rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / "report.csv", buf.getvalue())
        previous = run
    return reports


def _probs_in_order(run, ids: list[str]) -> np.ndarray:
    oof = run.out_of_fold()
    row = {c.id: i for i, c in enumerate(oof.manifest)}
    missing = [i for i in ids if i not in row]
    if missing:
        raise DataError(
            f"{run.path}: no out-of-fold prediction for {len(missing)} clip(s) of the first run, "
            f"e.g. {missing[0]}; the rounds must train on the same clips"
        )
    return oof.probs[[row[i] for i in ids]]


def _write_lists(
    lists: Path,
    round_no: int,
    manifest,
    probs,
    targets,
    verified,
    verdicts: Verdicts,
    left_out: list[str],
    source: Path,
    *,
    threshold: float | str,
    per_class: int | None,
    relabel_threshold: float | None,
) -> None:
    """The round's decisions as a lists folder, written aside and renamed into place whole."""
    from soundtag.cleaning.decisions import Decision, DecisionBook

    labels = manifest.labels
    given = targets.argmax(axis=1)
    tmp = lists.with_name(lists.name + ".tmp")
    if tmp.exists():  # left by a killed run: its decisions are recomputed the same way
        shutil.rmtree(tmp)
    book = DecisionBook(tmp, clip_ids=manifest.ids, labels=labels)
    book.start_round(source)
    tag = f"self-verify round {round_no}"
    used = verdicts.threshold  # the number, where the setting is "auto"

    def own(i):
        return f"p({labels[given[i]]})={probs[i, given[i]]:.2f}"

    entries = [
        Decision(manifest[i].id, "keep", "", f"{tag}: {own(i)} >= {used:g}", round_no) for i in verdicts.accepted
    ]
    entries += [
        Decision(manifest[i].id, "relabel", labels[new], f"{tag}: p({labels[new]})={probs[i, new]:.2f}", round_no)
        for i, new in zip(verdicts.relabelled, verdicts.new_labels)
    ]
    for i in verdicts.dropped:
        why = (
            f"{own(i)} >= {used:g}, but its class had its {per_class} accepted"
            if probs[i, given[i]] >= used
            else f"{own(i)} < {used:g}"
        )
        entries.append(Decision(manifest[i].id, "blacklist", "", f"{tag}: {why}", round_no))
    dropped_ids = {manifest[i].id for i in verdicts.dropped}
    entries += [
        Decision(c, "blacklist", "", f"{tag}: left out of {source.name}'s training", round_no)
        for c in left_out
        if c not in dropped_ids
    ]
    if entries:
        book.decide_many(entries)
    ids = manifest.ids
    (tmp / VERDICTS_FILE).write_text(
        json.dumps(
            {
                "round": round_no,
                "from_run": str(source),
                "threshold": threshold,
                "threshold_used": used,
                "per_class": per_class,
                "relabel_threshold": relabel_threshold,
                "verified": int(verified.sum()),
                "unverified": int((~verified).sum()),
                "accepted": [ids[i] for i in verdicts.accepted],
                "dropped": [ids[i] for i in verdicts.dropped],
                "relabelled": {ids[i]: labels[new] for i, new in zip(verdicts.relabelled, verdicts.new_labels)},
            },
            indent=1,
        )
    )
    if lists.exists():  # a lists folder without its verdicts: an older, unfinished write
        shutil.rmtree(lists)
    tmp.rename(lists)


def _round_report(round_no: int, run, lists: Path, given: dict[str, str], truth: dict[str, str] | None) -> RoundReport:
    v = json.loads((lists / VERDICTS_FILE).read_text())
    metrics = json.loads(run.metrics_file.read_text()).get("all", {}) if run.metrics_file.is_file() else {}
    report = RoundReport(
        round_no,
        str(run.path),
        v["unverified"],
        len(v["accepted"]),
        len(v["relabelled"]),
        len(v["dropped"]),
        top1=metrics.get("top1"),
        map3=metrics.get("map@3"),
        threshold=v.get("threshold_used", v["threshold"]),
        lists=str(lists),
    )
    if truth is not None:  # judged against the labels the round decided on, before its relabels
        unverified = v["accepted"] + v["dropped"] + list(v["relabelled"])
        flipped = {c for c in unverified if truth[c] != given[c]}
        report.accepted_correct = sum(truth[c] == given[c] for c in v["accepted"])
        report.relabelled_correct = sum(truth[c] == label for c, label in v["relabelled"].items())
        report.dropped_wrong = sum(c in flipped for c in v["dropped"])
        report.flipped = len(flipped)
    return report
