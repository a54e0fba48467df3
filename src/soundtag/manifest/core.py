"""Manifests: plain records that describe a dataset's clips, never the audio itself.

A :class:`Manifest` is an immutable list of :class:`Clip` records plus the label vocabulary.
Operations (``filter``, ``with_probed_audio``...) return new manifests. Every reader in
:mod:`soundtag.manifest.readers` produces one, so the later stages never care where the data
came from.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from soundtag._io import atomic_write_text
from soundtag.errors import DataError, ParameterError
from soundtag.registry import did_you_mean


@dataclass(frozen=True)
class Clip:
    """One labelled (or unlabelled test) sound clip.

    Attributes
    ----------
    id : unique identifier of the clip within its manifest (e.g. ``00044347.wav``)
    path : absolute path of the audio file
    labels : tuple of label names; one for single-label data, empty for unlabelled test clips
    fold : cross-validation fold given by the dataset, or None
    manually_verified : whether a person checked the label (FSDKaggle2018), or None
    group : source group (clips of one group must share a fold), e.g. ESC-50's ``src_file``
    duration : length in seconds, or None when not probed
    sample_rate : native sample rate in Hz, or None when not probed
    """

    id: str
    path: str
    labels: tuple[str, ...] = ()
    fold: int | None = None
    manually_verified: bool | None = None
    group: str | None = None
    duration: float | None = None
    sample_rate: int | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Clip":
        d = dict(d)
        d["labels"] = tuple(d.get("labels") or ())
        return cls(**d)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where it is, what is wrong, and what to do."""

    where: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" + (f" ({self.hint})" if self.hint else "")


class ManifestError(DataError):
    """A dataset has problems; ``problems`` lists every one of them, not just the first."""

    def __init__(self, source: str, problems: Sequence[Problem], limit: int = 20):
        self.source = source
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        more = len(self.problems) - limit
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{source}: {len(self.problems)} problem(s) found:\n{shown}{tail}")


@dataclass(frozen=True)
class Manifest:
    """An immutable, ordered collection of clips with its label vocabulary.

    Parameters
    ----------
    clips : the clips, in dataset order
    labels : the label vocabulary in a fixed order (the model's output order); defaults to
        the sorted set of labels found in ``clips``
    name : a short name for messages and file names
    multilabel : whether a clip may carry several labels; inferred when None
    """

    clips: tuple[Clip, ...]
    labels: tuple[str, ...] = ()
    name: str = "dataset"
    multilabel: bool = False
    meta: dict = field(default_factory=dict, compare=False)

    @classmethod
    def build(
        cls,
        clips: Iterable[Clip],
        *,
        labels: Sequence[str] | None = None,
        name: str = "dataset",
        multilabel: bool | None = None,
        meta: dict | None = None,
    ) -> "Manifest":
        clips = tuple(clips)
        if labels is None:
            labels = sorted({lab for c in clips for lab in c.labels})
        if multilabel is None:
            multilabel = any(len(c.labels) > 1 for c in clips)
        return cls(clips, tuple(labels), name, bool(multilabel), dict(meta or {}))

    # --- container protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[Clip]:
        return iter(self.clips)

    def __getitem__(self, i: int) -> Clip:
        return self.clips[i]

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.clips]

    # --- operations return new manifests ----------------------------------------------
    def replace(self, **changes) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def filter(self, keep: Callable[[Clip], bool]) -> "Manifest":
        """Return a manifest of the clips for which ``keep(clip)`` is true.

        The kept clips keep their source row numbers, so later problems still name the row of
        the user's file.
        """
        kept = [i for i, c in enumerate(self.clips) if keep(c)]
        rows = self.source_rows()
        return self.replace(
            clips=tuple(self.clips[i] for i in kept), meta=self.meta | {"rows": [rows[i] for i in kept]}
        )

    def source_rows(self) -> list[int]:
        """The row (line) of the source file each clip came from, as an editor numbers it.

        Readers set ``meta["rows"]`` when they skip lines, or ``meta["first_row"]`` (2 for a
        CSV with a header) when clips follow the file line by line.
        """
        rows = self.meta.get("rows")
        if rows is not None and len(rows) == len(self.clips):
            return list(rows)
        first = int(self.meta.get("first_row", 1))
        return list(range(first, first + len(self.clips)))

    def map(self, change: Callable[[Clip], Clip]) -> "Manifest":
        return self.replace(clips=tuple(change(c) for c in self.clips))

    def label_counts(self) -> Counter:
        return Counter(lab for c in self.clips for lab in c.labels)

    @property
    def total_duration(self) -> float:
        """Sum of the probed durations in seconds (clips not probed count as 0)."""
        return float(sum(c.duration or 0.0 for c in self.clips))

    # --- validation ----------------------------------------------------------------------
    def problems(self, *, check_files: bool = True) -> list[Problem]:
        """List every problem: duplicated ids, empty or unknown labels, missing files."""
        found: list[Problem] = []
        vocab = set(self.labels)
        seen: dict[str, int] = {}
        for row, clip in zip(self.source_rows(), self.clips):
            where = f"row {row} ({clip.id})"
            if clip.id in seen:
                found.append(
                    Problem(
                        where,
                        f"duplicated id {clip.id!r}, first seen in row {seen[clip.id]}",
                        "give every clip a unique id",
                    )
                )
            else:
                seen[clip.id] = row
            if not self.meta.get("unlabelled") and not clip.labels:
                found.append(Problem(where, "empty label", "give the clip a label or remove the row"))
            for lab in clip.labels:
                if lab not in vocab:
                    hint = did_you_mean(lab, vocab) or f"known labels: {', '.join(sorted(vocab)[:10])}..."
                    found.append(Problem(where, f"unknown label {lab!r}", hint))
            if check_files and not Path(clip.path).is_file():
                found.append(Problem(where, f"missing file {clip.path}", "check the audio folder, or remove the row"))
        return found

    def validate(self, *, check_files: bool = True) -> "Manifest":
        """Raise :class:`ManifestError` listing every problem at once; return self if none."""
        found = self.problems(check_files=check_files)
        if found:
            raise ManifestError(self.meta.get("source", self.name), found)
        return self

    # --- audio probing -----------------------------------------------------------------
    def with_probed_audio(self) -> "Manifest":
        """Return a copy whose clips carry ``duration`` and ``sample_rate`` from file headers.

        Reads only headers (``soundfile.info``), so it is cheap; unreadable files keep None
        and are reported later, when decoding. A file can have a good header and still not
        decode (a truncated FLAC): :meth:`decode_problems` decodes every file in full.
        """
        import soundfile as sf

        def probe(clip: Clip) -> Clip:
            if clip.duration is not None and clip.sample_rate is not None:
                return clip
            try:
                info = sf.info(clip.path)
            except Exception:  # noqa: BLE001 - corrupt/missing files are reported by the decoder
                return clip
            return dataclasses.replace(clip, duration=float(info.duration), sample_rate=int(info.samplerate))

        return self.map(probe)

    def decode_problems(self, *, workers: int = 4, progress: bool = False) -> list[Problem]:
        """Decode every clip's file in full with soundfile; list the files that fail.

        Slower than :meth:`with_probed_audio` (every sample is read, not just the header) but
        it finds what a header hides: an empty file, a text file named ``.wav``, a truncated
        FLAC, a file that holds no samples, or one that decodes fewer frames than its header
        promises.

        Parameters
        ----------
        workers : threads decoding at once (libsndfile runs without the GIL)
        progress : show a progress bar

        Returns
        -------
        list of Problem
            one per undecodable file, in manifest order, naming its row and file; empty when
            every file decodes.

        Examples
        --------
        >>> [str(p) for p in manifest.decode_problems()]  # doctest: +SKIP
        ['row 7 (bad.flac): cannot decode /data/bad.flac: Internal psf_fseek() failed. (...)']
        """
        from concurrent.futures import ThreadPoolExecutor

        from soundtag.progress import progress_bar

        if workers < 1:
            raise ParameterError(f"workers={workers} must be at least 1")
        rows = self.source_rows()
        found: list[Problem] = []
        with progress_bar(progress, len(self.clips), "decoding") as advance, ThreadPoolExecutor(workers) as pool:
            for row, clip, failure in zip(rows, self.clips, pool.map(_decode_failure, self.clips)):
                advance(1)
                if failure:
                    found.append(
                        Problem(
                            f"row {row} ({clip.id})",
                            f"cannot decode {clip.path}: {failure}",
                            "re-encode or replace the file, or leave the clip out",
                        )
                    )
        return found

    # --- serialisation -----------------------------------------------------------------
    def to_jsonl(self, path: str | Path) -> Path:
        """Write the manifest as JSON lines (a header line, then a line per clip), atomically."""
        # Row numbers of the source file do not carry over: in the .jsonl clip k is on line k + 1.
        meta = {k: v for k, v in self.meta.items() if k not in ("rows", "first_row")} | {"first_row": 2}
        header = {
            "name": self.name,
            "labels": list(self.labels),
            "multilabel": self.multilabel,
            "meta": meta,
            "soundtag_manifest": 1,
        }
        lines = [json.dumps(header)] + [json.dumps(c.to_dict()) for c in self.clips]
        atomic_write_text(path, "\n".join(lines) + "\n")
        return Path(path)

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0])
            if header.get("soundtag_manifest") != 1:
                raise ValueError("not a soundtag manifest (no header line)")
            clips = [Clip.from_dict(json.loads(line)) for line in lines[1:] if line.strip()]
        except (OSError, ValueError, IndexError, TypeError) as exc:
            raise DataError(f"{path}: cannot read manifest: {exc}") from exc
        return cls(tuple(clips), tuple(header["labels"]), header["name"], header["multilabel"], header.get("meta", {}))


def _decode_failure(clip: Clip, block_frames: int = 1 << 16) -> str | None:
    """Why ``clip``'s file does not decode in full, or None when it does."""
    import soundfile as sf

    path = Path(clip.path)
    if not path.is_file():
        return "no such file"
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    decoded = 0
    try:
        with sf.SoundFile(clip.path) as fh:
            promised = fh.frames
            while n := len(fh.read(block_frames, dtype="float32", always_2d=True)):
                decoded += n
    except (RuntimeError, ValueError, TypeError, EOFError, OSError) as exc:  # LibsndfileError is a RuntimeError
        # libsndfile's message names the file again ("Error opening '<path>': ..."): keep the why
        return str(exc).replace(f"Error opening {str(path)!r}: ", "").strip() or type(exc).__name__
    if decoded == 0:
        return "the file holds no audio samples"
    if decoded < promised:
        return f"decoded {decoded} of the {promised} frames its header promises (truncated?)"
    return None
