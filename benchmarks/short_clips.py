"""Short-clip datasets cut from real audio, for the robustness benchmark (``benchmarks/train.py robustness``).

Every clip of ESC-50 (16 kHz FLAC) or ESC-10 (the original 44.1 kHz Ogg) is cut to its loudest
window (0.5 s or 1 s, by the RMS energy of a window sliding one sample at a time), optionally
resampled, and written once as FLAC into a cache folder with a CSV manifest
(``path,labels,fold``) that keeps the dataset's own folds. A file already written is not
written again, and every file (clip or manifest) is written atomically, so an interrupted
build resumes where it stopped and never leaves half a file that looks whole.

The cutting is a pure function (:func:`loudest_window`); the writer is apart from it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from soundtag import audio
from soundtag._io import atomic_path, atomic_write_text
from soundtag.errors import ParameterError
from soundtag.manifest import Manifest, read_manifest


@dataclass(frozen=True)
class Case:
    """One short-clip case: the source dataset, the window cut from each clip, the output rate."""

    name: str
    source: str  # folder under SOUNDTAG_DATA: esc50 or esc10
    seconds: float | None  # None: the clips as they are (the full-length reference)
    sample_rate: int | None = None  # None: keep the source's rate
    description: str = ""


CASES = {
    c.name: c
    for c in (
        Case("esc50-0.5s", "esc50", 0.5, None, "ESC-50, each clip cut to its loudest 0.5 s, 16 kHz"),
        Case("esc50-1s", "esc50", 1.0, None, "ESC-50, each clip cut to its loudest 1 s, 16 kHz"),
        Case("esc50-0.5s-8k", "esc50", 0.5, 8000, "ESC-50, loudest 0.5 s resampled to 8 kHz"),
        Case("esc10-0.5s", "esc10", 0.5, None, "ESC-10 (original 44.1 kHz Ogg), loudest 0.5 s, 44.1 kHz"),
        Case("full", "esc50", None, None, "ESC-50 as it is: 5 s clips, 16 kHz"),
    )
}


def loudest_window(samples: np.ndarray, window: int) -> tuple[int, int]:
    """Start and stop of the ``window`` consecutive samples with the most energy.

    Parameters
    ----------
    samples : mono signal ``(n,)``
    window : length of the window in samples (positive)

    Returns
    -------
    ``(start, stop)`` with ``stop - start == min(window, n)``; the earliest of equal windows
    (so a silent clip gives its head). A clip not longer than ``window`` is returned whole.

    Examples
    --------
    >>> x = np.r_[np.zeros(10), np.ones(3), np.zeros(10)]
    >>> loudest_window(x, 5)
    (8, 13)
    >>> loudest_window(np.zeros(4), 8)
    (0, 4)
    """
    if window <= 0:
        raise ParameterError(f"window={window} must be a positive number of samples")
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ParameterError(f"samples of shape {samples.shape} must be mono (one dimension)")
    n = samples.shape[0]
    if n <= window:
        return 0, n
    energy = np.concatenate(([0.0], np.cumsum(np.square(samples, dtype=np.float64))))
    sums = energy[window:] - energy[:-window]  # sums[s] = energy of samples[s:s + window]
    # Rounding in the running sum must not pick a later window over an equal earlier one.
    best = sums.max()
    start = int(np.flatnonzero(sums >= best - 1e-9 * max(best, 1.0))[0])
    return start, start + window


def cut_clip(samples: np.ndarray, rate: int, *, seconds: float, sample_rate: int | None = None) -> np.ndarray:
    """The loudest ``seconds`` of a mono clip at its own ``rate``, resampled to ``sample_rate``
    when that is given and differs (the cut is chosen before resampling)."""
    start, stop = loudest_window(samples, int(round(seconds * rate)))
    out = np.ascontiguousarray(samples[start:stop], dtype=np.float32)
    if sample_rate is not None and sample_rate != rate:
        out = audio.resample(out, rate, sample_rate)
    return out


def pick_subset(manifest: Manifest, *, classes: int | None, per_class_per_fold: int | None) -> Manifest:
    """The first ``per_class_per_fold`` clips of each of the first ``classes`` labels in every
    fold (the smoke mode's handful); None keeps everything."""
    if classes is None and per_class_per_fold is None:
        return manifest
    keep_labels = set(manifest.labels[:classes] if classes else manifest.labels)
    seen: dict[tuple, int] = {}
    keep: set[str] = set()
    for clip in manifest:
        if clip.labels[0] not in keep_labels:
            continue
        key = (clip.labels[0], clip.fold)
        if per_class_per_fold is None or seen.get(key, 0) < per_class_per_fold:
            seen[key] = seen.get(key, 0) + 1
            keep.add(clip.id)
    return manifest.filter(lambda c: c.id in keep)


def build_case(
    case: Case, manifest: Manifest, folder: Path, *, manifest_name: str = "manifest.csv"
) -> tuple[Path, dict]:
    """Write ``case``'s clips cut from ``manifest`` into ``folder`` and its CSV manifest.

    Returns the manifest's path and counts ``{"written": ..., "kept": ...}`` (clips already
    there are kept as they are).
    """
    if case.seconds is None:
        raise ParameterError(f"case {case.name!r} keeps the clips as they are: use the source manifest")
    folder.mkdir(parents=True, exist_ok=True)
    rows, written, kept = [], 0, 0
    for clip in manifest:
        rel = Path("audio") / (Path(clip.id).with_suffix("").as_posix().replace("/", "__") + ".flac")
        target = folder / rel
        if target.is_file():
            kept += 1
        else:
            native = audio.decode(clip.path)
            mono = native.samples.mean(axis=1) if native.samples.shape[1] > 1 else native.samples[:, 0]
            cut = cut_clip(mono, native.sample_rate, seconds=case.seconds, sample_rate=case.sample_rate)
            with atomic_path(target) as tmp:  # the .tmp name hides the suffix: say the format
                sf.write(tmp, cut, case.sample_rate or native.sample_rate, format="FLAC", subtype="PCM_16")
            written += 1
        rows.append((rel.as_posix(), ",".join(clip.labels), clip.fold))
    return write_manifest_csv(folder / manifest_name, rows), {"written": written, "kept": kept}


def write_manifest_csv(path: Path, rows) -> Path:
    """``path,labels,fold`` rows as a CSV manifest, written atomically."""
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["path", "labels", "fold"])
    out.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def read_case(path: Path, source: Manifest) -> Manifest:
    """The case's manifest, its labels in the source's order (the CSV reader would sort them)."""
    present = {label for clip in source for label in clip.labels}
    return read_manifest(path, "csv", labels=[label for label in source.labels if label in present])
