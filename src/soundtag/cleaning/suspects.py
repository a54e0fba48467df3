"""Suspect training clips: the ones most worth a listen before the next round of training.

Three finders look at a finished run, each from another side:

- the **out-of-fold predictions**: a clip whose top prediction is not its label is
  ``misclassified``; the more confident the wrong answer, the higher it ranks;
- **cleanlab** (confident learning) on the same probabilities: ``label_issue`` for the clips
  ``cleanlab.filter.find_label_issues`` flags, and a label-quality score for every clip
  (``cleanlab.rank.get_label_quality_scores``, the probability of the given label by default);
- the **audio** itself: ``silent``, ``near_silent`` (peak under -40 dBFS), ``clipped`` (over 1% of
  samples at full scale), ``duplicate`` (the same decoded samples as another clip) and ``short``
  (the sound, silence trimmed, under a fifth of its class's median length).

A clip is a suspect when any finder names it. Its score is ``1 - label quality`` plus a fixed
weight per audio reason (:data:`AUDIO_WEIGHTS`), so a confidently wrong label and a broken
recording both come first, and ranking within the label finders stays cleanlab's.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from soundtag._io import atomic_write_text
from soundtag.audio import SILENCE_PEAK, decode, trim
from soundtag.errors import AudioError, DataError, ParameterError
from soundtag.inference.blended import open_run

# Added to ``1 - label quality`` for each audio reason: a silent clip is useless whatever its
# label; a duplicate with another label is a label conflict; clipping and shortness are worth a
# listen but often harmless, so they only break ties among the label finders.
AUDIO_WEIGHTS = {
    "silent": 1.0,
    "near_silent": 0.5,
    "duplicate_conflict": 0.5,
    "duplicate": 0.2,
    "clipped": 0.1,
    "short": 0.1,
    "unreadable": 1.0,
}
REASONS = ("misclassified", "label_issue", "silent", "near_silent", "clipped", "duplicate", "short", "unreadable")
NEAR_SILENT_DB = -40.0  # peak level in dBFS under which a clip is "near_silent"
CLIP_LEVEL = 0.99  # |sample| at or above this counts as clipped
CLIPPED_FRACTION = 0.01  # ESC-50: 55 of 2000 clips exceed it, each audibly clipped
SHORT_FRACTION = 0.2  # ESC-50: 20 of 2000 clips are shorter than this times their class median
TOP_K = 3
COLUMNS = [
    "rank",
    "clip_id",
    "label",
    "manually_verified",
    "fold",
    "blacklisted",
    *[f"{k}{i}" for i in range(1, TOP_K + 1) for k in ("pred", "prob")],
    "label_quality",
    "score",
    "reasons",
    "peak_db",
    "sound_s",
    "duplicate_of",
]
NUMERIC_COLUMNS = [
    "rank",
    "fold",
    "blacklisted",
    "prob1",
    "prob2",
    "prob3",
    "label_quality",
    "score",
    "peak_db",
    "sound_s",
]


@dataclass(frozen=True)
class AudioStats:
    """What the audio finder measures of one clip (at its native rate, channels averaged).

    Attributes
    ----------
    peak_db : peak level in dBFS (-inf for digital silence)
    clipped_fraction : share of samples at or above :data:`CLIP_LEVEL` in magnitude
    sound_s : seconds left after trimming leading and trailing silence
    digest : SHA-1 of the samples quantised to 16 bits, with the rate: equal for equal audio
    """

    peak_db: float
    clipped_fraction: float
    sound_s: float
    digest: str


def audio_stats(path: str | Path, *, trim_db: float = 60.0) -> AudioStats:
    """Measure one clip for the audio finder; raises DataError when it cannot be decoded
    (missing, corrupt or empty: the message is :func:`soundtag.audio.decode`'s)."""
    try:
        data, rate, _ = decode(path)
    except AudioError as exc:  # any decoding failure is the same finding: "unreadable"
        raise DataError(str(exc)) from exc
    samples = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    samples = np.nan_to_num(samples)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    quantised = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    digest = hashlib.sha1(quantised.tobytes() + str(rate).encode()).hexdigest()
    sound = trim(samples, top_db=trim_db).shape[0] if peak >= SILENCE_PEAK else 0
    return AudioStats(
        20 * np.log10(peak) if peak > 0 else -np.inf,
        float(np.mean(np.abs(samples) >= CLIP_LEVEL)) if samples.size else 0.0,
        sound / rate,
        digest,
    )


def audio_flags(
    clip_ids: Sequence[str],
    paths: Sequence[str],
    labels: Sequence[Sequence[str]],
    *,
    trim_db: float = 60.0,
    workers: int | None = None,
) -> pd.DataFrame:
    """Decode every clip and name its audio problems.

    Returns
    -------
    DataFrame indexed like ``clip_ids`` with ``peak_db``, ``clipped_fraction``, ``sound_s``,
    ``duplicate_of`` (the other clips with the same audio, joined by ``;``), ``reasons``
    (a list of names from :data:`REASONS`) and ``weight`` (the score they add).
    """
    workers = workers or min(4, os.cpu_count() or 1)

    def measure(path):
        try:
            return audio_stats(path, trim_db=trim_db)
        except DataError:
            return None

    # libsndfile and numpy release the GIL, so threads decode in parallel without pickling.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        stats = list(pool.map(measure, paths))
    df = pd.DataFrame(
        {
            "clip_id": list(clip_ids),
            "peak_db": [s.peak_db if s else np.nan for s in stats],
            "clipped_fraction": [s.clipped_fraction if s else np.nan for s in stats],
            "sound_s": [s.sound_s if s else np.nan for s in stats],
            "digest": [s.digest if s else None for s in stats],
        }
    )
    first_label = [lab[0] if lab else "" for lab in labels]
    median = df["sound_s"].groupby(pd.Series(first_label)).transform("median")
    same = df.groupby("digest")["clip_id"].agg(list).to_dict()
    label_of = dict(zip(clip_ids, map(tuple, labels)))
    reasons, weights, dupes = [], [], []
    for i, s in enumerate(stats):
        found: list[str] = []
        weight = 0.0
        others: list[str] = []
        if s is None:
            found, weight = ["unreadable"], AUDIO_WEIGHTS["unreadable"]
        else:
            if s.peak_db < 20 * np.log10(SILENCE_PEAK):
                found.append("silent")
            elif s.peak_db < NEAR_SILENT_DB:
                found.append("near_silent")
            if s.clipped_fraction > CLIPPED_FRACTION:
                found.append("clipped")
            if 0 < s.sound_s < SHORT_FRACTION * median.iloc[i]:
                found.append("short")
            others = [c for c in same[s.digest] if c != clip_ids[i]]
            if others:
                found.append("duplicate")
                conflict = any(label_of[c] != label_of[clip_ids[i]] for c in others)
                weight += AUDIO_WEIGHTS["duplicate_conflict" if conflict else "duplicate"]
            weight += sum(AUDIO_WEIGHTS[r] for r in found if r != "duplicate")
        reasons.append(found)
        weights.append(weight)
        dupes.append(";".join(others))
    return df.drop(columns="digest").assign(duplicate_of=dupes, reasons=reasons, weight=weights)


def label_scores(
    given: Sequence[Sequence[str]],
    label_names: Sequence[str],
    probs: np.ndarray,
    *,
    multilabel: bool = False,
    method: str = "self_confidence",
) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's label-quality score (0..1, low is suspect) and issue flag for every clip.

    Parameters
    ----------
    given : each clip's label names
    label_names : the column order of ``probs``
    probs : np.ndarray [shape=(clips, labels)], out-of-fold probabilities
    method : ``self_confidence``, ``normalized_margin`` or ``confidence_weighted_entropy``
    """
    from cleanlab.filter import find_label_issues

    index = {lab: i for i, lab in enumerate(label_names)}
    probs = np.asarray(probs, dtype=np.float64)
    with warnings.catch_warnings():
        # cleanlab warns about classes with few clips; tiny runs have them and the ranking stands.
        warnings.simplefilter("ignore")
        if multilabel:
            from cleanlab.multilabel_classification import get_label_quality_scores

            labels = [[index[lab] for lab in g] for g in given]
            quality = get_label_quality_scores(labels, np.clip(probs, 0, 1), method=method)
            issues = find_label_issues(labels, np.clip(probs, 0, 1), multi_label=True, n_jobs=1)
        else:
            from cleanlab.rank import get_label_quality_scores

            if any(len(g) != 1 for g in given):
                raise DataError(
                    "a single-label run has a clip with no label or several; check the run's manifest.jsonl"
                )
            labels = np.array([index[g[0]] for g in given])
            probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax rows, summed again exactly
            quality = get_label_quality_scores(labels, probs, method=method)
            issues = find_label_issues(labels, probs, n_jobs=1)
    return np.asarray(quality, dtype=np.float64), np.asarray(issues, dtype=bool)


def rank_suspects(
    clip_ids: Sequence[str],
    given: Sequence[Sequence[str]],
    label_names: Sequence[str],
    probs: np.ndarray,
    *,
    multilabel: bool = False,
    audio: pd.DataFrame | None = None,
    method: str = "self_confidence",
    all_clips: bool = False,
) -> pd.DataFrame:
    """Rank clips by how suspect their label or audio is (the pure core of :func:`find_suspects`).

    Parameters
    ----------
    clip_ids, given : the clips and their label names
    label_names : the column order of ``probs``
    probs : np.ndarray [shape=(clips, labels)], out-of-fold probabilities
    audio : :func:`audio_flags` of the same clips, or None to judge by the predictions only
    all_clips : keep every clip, not only those a finder names (for evaluating the ranking)

    Returns
    -------
    DataFrame with the :data:`COLUMNS` that do not need the run (``rank``, ``clip_id``, ``label``,
    ``pred1..3``, ``prob1..3``, ``label_quality``, ``score``, ``reasons`` joined by ``;``,
    ``peak_db``, ``sound_s``, ``duplicate_of``), most suspect first.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.05, 0.95], [0.7, 0.3]])
    >>> df = rank_suspects(["a", "b", "c", "d"], [["x"], ["y"], ["x"], ["x"]], ["x", "y"], p)
    >>> df[["clip_id", "pred1", "reasons"]].iloc[0].tolist()
    ['c', 'y', 'misclassified;label_issue']
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(clip_ids), len(label_names)):
        raise ParameterError(f"probs has shape {probs.shape}; expected ({len(clip_ids)}, {len(label_names)})")
    quality, issues = label_scores(given, label_names, probs, multilabel=multilabel, method=method)
    k = min(TOP_K, len(label_names))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = np.asarray(label_names, dtype=object)
    top_label = names[order[:, 0]]
    misclassified = np.array([top not in g for top, g in zip(top_label, given)])
    if audio is None:
        audio_reasons = [[] for _ in clip_ids]
        weight = np.zeros(len(clip_ids))
    else:
        audio = audio.set_index("clip_id").loc[list(clip_ids)]
        audio_reasons, weight = audio["reasons"].tolist(), audio["weight"].to_numpy()
    reasons = [
        ";".join((["misclassified"] if m else []) + (["label_issue"] if i else []) + list(a))
        for m, i, a in zip(misclassified, issues, audio_reasons)
    ]
    df = pd.DataFrame({"clip_id": list(clip_ids), "label": [",".join(g) for g in given]})
    for j in range(TOP_K):
        df[f"pred{j + 1}"] = names[order[:, j]] if j < k else ""
        df[f"prob{j + 1}"] = np.round(np.take_along_axis(probs, order[:, j : j + 1], 1)[:, 0], 6) if j < k else np.nan
    df["label_quality"] = np.round(quality, 6)
    df["score"] = np.round(1.0 - quality + weight, 6)
    df["reasons"] = reasons
    df["peak_db"] = np.nan if audio is None else np.round(audio["peak_db"].to_numpy(), 2)
    df["sound_s"] = np.nan if audio is None else np.round(audio["sound_s"].to_numpy(), 3)
    df["duplicate_of"] = "" if audio is None else audio["duplicate_of"].to_numpy()
    if not all_clips:
        df = df[df["reasons"] != ""]
    df = df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df


def check_run(run_dir: str | Path) -> Path:
    """Return ``run_dir`` if it is a run whose every fold is finished; else raise DataError."""
    return open_run(run_dir).require_complete().path


def find_suspects(
    run_dir: str | Path,
    *,
    audio: bool = True,
    method: str = "self_confidence",
    all_clips: bool = False,
    workers: int | None = None,
) -> pd.DataFrame:
    """Rank the training clips of a finished run from its out-of-fold predictions and audio.

    Parameters
    ----------
    run_dir : a finished run (every fold trained)
    audio : also decode every clip and flag silent, clipped, duplicate and short ones
    method : cleanlab's label-quality method (see :func:`label_scores`)
    all_clips : keep every clip in the ranking, not only the suspects
    workers : decoding threads for the audio finder

    Returns
    -------
    DataFrame with :data:`COLUMNS`, most suspect first (see :func:`rank_suspects`).
    """
    run = open_run(run_dir).require_complete()
    oof = run.out_of_fold()
    manifest, probs, folds, in_training = oof.manifest, oof.probs, oof.folds, oof.in_training
    given = [c.labels for c in manifest]
    flags = None
    if audio:
        trim_db = run.recipe().audio.trim_db
        flags = audio_flags(
            manifest.ids,
            [c.path for c in manifest],
            given,
            trim_db=60.0 if trim_db is None else trim_db,
            workers=workers,
        )
    df = rank_suspects(
        manifest.ids,
        given,
        manifest.labels,
        probs,
        multilabel=manifest.multilabel,
        audio=flags,
        method=method,
        all_clips=all_clips,
    )
    row = {c.id: i for i, c in enumerate(manifest)}
    at = [row[c] for c in df["clip_id"]]
    df.insert(
        3,
        "manually_verified",
        ["" if manifest[i].manually_verified is None else int(manifest[i].manually_verified) for i in at],
    )
    df.insert(4, "fold", folds[at].astype(int))
    df.insert(5, "blacklisted", (~in_training[at]).astype(int))
    return df[COLUMNS]


def write_suspects(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a suspects table as CSV, atomically."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def read_suspects(path: str | Path) -> pd.DataFrame:
    """Read a ``suspects.csv`` written by :func:`write_suspects`."""
    try:
        # Strings stay strings ("" not NaN, a label named "nan" not a float); numbers are converted below.
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{path}: cannot read suspects ({exc}); run `soundtag suspects RUN` again") from exc
    missing = [c for c in ("clip_id", "label", "score", "reasons") if c not in df]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; run `soundtag suspects RUN` again")
    for col in NUMERIC_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def summarize(
    df: pd.DataFrame,
    label_names: Sequence[str],
    clips_per_label: dict[str, int] | None = None,
    decided: Iterable[str] = (),
) -> pd.DataFrame:
    """Per class: clips, suspects, each finder's count, how many of its suspects have a decision
    (``decided``: the clip ids a lists folder has decided), and the class most often predicted
    instead."""
    decided = set(decided)
    rows = []
    exploded = df.assign(label=df["label"].str.split(",")).explode("label")
    for lab in label_names:
        part = exploded[exploded["label"] == lab]
        reasons = [set(r.split(";")) for r in part["reasons"]]
        # Boolean arrays, not Series.apply: on a class without suspects apply returns no booleans.
        wrong = np.array(["misclassified" in r for r in reasons], dtype=bool)
        confused = part["pred1"][wrong].value_counts()
        rows.append(
            {
                "class": lab,
                "clips": (clips_per_label or {}).get(lab, np.nan),
                "suspects": len(part),
                "misclassified": int(wrong.sum()),
                "label_issue": sum("label_issue" in r for r in reasons),
                "audio": sum(bool(r - {"misclassified", "label_issue", ""}) for r in reasons),
                "decided": int(part["clip_id"].isin(decided).sum()),
                "confused_with": f"{confused.index[0]} ({confused.iloc[0]})" if len(confused) else "",
            }
        )
    return pd.DataFrame(rows)
