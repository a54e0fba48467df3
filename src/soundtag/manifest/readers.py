"""Readers that turn a dataset's own layout into a :class:`~soundtag.manifest.core.Manifest`.

Each reader is registered under a layout name with a ``detect`` function, so
:func:`read_manifest` can take any folder or CSV and pick the reader, and the CLI can list
the choices. Readers collect every problem they find and raise one
:class:`~soundtag.manifest.core.ManifestError` with all of them.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from soundtag.errors import DataError, ParameterError
from soundtag.manifest.core import Clip, Manifest, ManifestError, Problem
from soundtag.registry import Registry, did_you_mean

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")

# The 41 labels of the Freesound General-Purpose Audio Tagging Challenge, in the sorted order
# that the competition's sample submission and kernels used for the output columns.
FSDKAGGLE2018_LABELS = (
    "Acoustic_guitar",
    "Applause",
    "Bark",
    "Bass_drum",
    "Burping_or_eructation",
    "Bus",
    "Cello",
    "Chime",
    "Clarinet",
    "Computer_keyboard",
    "Cough",
    "Cowbell",
    "Double_bass",
    "Drawer_open_or_close",
    "Electric_piano",
    "Fart",
    "Finger_snapping",
    "Fireworks",
    "Flute",
    "Glockenspiel",
    "Gong",
    "Gunshot_or_gunfire",
    "Harmonica",
    "Hi-hat",
    "Keys_jangling",
    "Knock",
    "Laughter",
    "Meow",
    "Microwave_oven",
    "Oboe",
    "Saxophone",
    "Scissors",
    "Shatter",
    "Snare_drum",
    "Squeak",
    "Tambourine",
    "Tearing",
    "Telephone",
    "Trumpet",
    "Violin_or_fiddle",
    "Writing",
)


@dataclass(frozen=True)
class Layout:
    name: str
    read: Callable[..., Manifest]
    detect: Callable[[Path], bool]
    description: str


_LAYOUTS: Registry[Layout] = Registry("dataset layout")


def register_layout(name: str, *, detect: Callable[[Path], bool], description: str):
    """Decorator registering a reader ``read(source, **options) -> Manifest`` under ``name``;
    a name already registered raises ParameterError."""

    def wrap(read: Callable[..., Manifest]) -> Callable[..., Manifest]:
        _LAYOUTS.add(name, Layout(name, read, detect, description))
        return read

    return wrap


def list_layouts() -> list[str]:
    return _LAYOUTS.names()


def get_layout(name: str) -> Layout:
    """The layout registered as ``name``; an unknown name raises ParameterError naming the
    nearest one."""
    return _LAYOUTS.get(name)


def detect_layout(source: str | Path) -> str:
    """Return the name of the first layout whose ``detect`` accepts ``source``."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder; give a dataset folder, a CSV or a manifest .jsonl")
    for layout in _LAYOUTS.values():
        if layout.detect(source):
            return layout.name
    raise DataError(f"{source}: cannot tell the dataset layout; pass one of {', '.join(list_layouts())} explicitly")


def read_manifest(source: str | Path, layout: str | None = None, *, check_files: bool = True, **options) -> Manifest:
    """Read a dataset in any known layout and validate it.

    Parameters
    ----------
    source : a dataset folder, a CSV file, or a saved manifest (``.jsonl``)
    layout : a layout name from :func:`list_layouts`; detected from ``source`` when None
    check_files : report clips whose audio file is missing
    **options : passed to the layout's reader (e.g. ``labels=`` for a fixed vocabulary)

    Raises
    ------
    ManifestError
        listing every problem found, in row order: cells that do not parse (a fold that is
        not an integer...) together with missing files, unknown or empty labels and
        duplicated ids
    """
    name = layout or detect_layout(source)
    # Absolute paths: clips are found from any working directory, and the feature cache keys
    # on them.
    try:
        manifest = get_layout(name).read(Path(source).absolute(), **options)
    except _ReadProblems as exc:  # cells that did not parse: add what validation finds in the rest
        found = exc.problems + exc.manifest.problems(check_files=check_files)
        raise ManifestError(exc.source, sorted(found, key=_row_number)) from None
    return manifest.validate(check_files=check_files)


def open_dataset(source: str | Path, layout: str | None = None, *, check_files: bool = True, **options) -> Manifest:
    """Read a dataset given as a path, or as the name of a registered dataset.

    A name such as ``esc50`` is materialised first with :func:`soundtag.datasets.get`, which
    uses the local copy named by ``SOUNDTAG_DATA`` when there is one, and read with the
    dataset's own layout.
    """
    path = Path(source)
    if not path.exists():
        from soundtag import datasets

        if str(source) in datasets.list_datasets():
            spec = datasets.get_spec(str(source))
            return read_manifest(datasets.get(str(source)), layout or spec.layout, check_files=check_files, **options)
    return read_manifest(path, layout, check_files=check_files, **options)


# --- helpers ----------------------------------------------------------------------------


def _read_csv(path: Path, required: Sequence[Sequence[str]]) -> tuple[list[dict], dict[str, str]]:
    """Read a CSV into dict rows; ``required`` lists alternatives for each needed column.

    Returns the rows and a map from each required column's first name to the name found.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc
    found: dict[str, str] = {}
    missing = []
    for alternatives in required:
        name = next((a for a in alternatives if a in header), None)
        if name is None:
            missing.append(
                Problem(
                    "header",
                    f"no column {' or '.join(repr(a) for a in alternatives)}",
                    f"columns are {header}; " + (did_you_mean(alternatives[0], header) or "rename the column"),
                )
            )
        else:
            found[alternatives[0]] = name
    if missing:
        raise ManifestError(str(path), missing)
    return rows, found


def _split_labels(text: str | None) -> tuple[str, ...]:
    return tuple(lab.strip() for lab in (text or "").split(",") if lab.strip())


def _parse_bool(text: str | None, where: str, problems: list[Problem]) -> bool | None:
    """``manually_verified`` as a bool (None when empty); a bad cell is added to ``problems``."""
    if text is None or text.strip() == "":
        return None
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    problems.append(
        Problem(where, f"manually_verified={text!r} is not 0/1/true/false", "write 1 or 0, or leave the cell empty")
    )
    return None


def _parse_fold(text: str | None, where: str, problems: list[Problem]) -> int | None:
    """A fold cell as an int (None when empty); a bad cell is added to ``problems``."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        problems.append(
            Problem(where, f"fold={text!r} is not an integer", "write a whole number, or leave the cell empty")
        )
        return None


def _where(row_no: int, clip_id: str | None) -> str:
    """How a problem names its row; the same form as :meth:`Manifest.problems` uses."""
    return f"row {row_no} ({clip_id})" if clip_id else f"row {row_no}"


def _row_number(problem: Problem) -> int:
    """The row a problem names (0 for a header or a file), to list problems in file order."""
    match = re.match(r"row (\d+)\b", problem.where)
    return int(match.group(1)) if match else 0


class _ReadProblems(ManifestError):
    """Cells a reader could not parse, with the manifest of everything it could.

    :func:`read_manifest` adds the problems that validating ``manifest`` finds (duplicated
    ids, empty labels, missing files...), so one error lists them all.
    """

    def __init__(self, source: str, problems: Sequence[Problem], manifest: Manifest):
        super().__init__(source, problems)
        self.manifest = manifest


def _finish(clips: list[Clip], problems: list[Problem], source: Path, **kwargs) -> Manifest:
    """Build the reader's manifest; raise the problems found while parsing, if any.

    A reader that skips source rows passes their numbers as ``meta={"rows": [...]}``, so the
    problems validation finds later name the user's rows.
    """
    meta = {"source": str(source), "first_row": 2} | kwargs.pop("meta", {})
    manifest = Manifest.build(clips, meta=meta, **kwargs)
    if problems:
        raise _ReadProblems(str(source), problems, manifest)
    return manifest


# --- FSDKaggle2018 ----------------------------------------------------------------------


@register_layout(
    "fsdkaggle2018",
    detect=lambda p: (
        p.is_dir()
        and (p / "train.csv").is_file()
        and ((p / "audio_train").is_dir() or (p / "audio_test").is_dir() or _has_fname_label(p / "train.csv"))
    ),
    description="Kaggle 2018 layout: train.csv (fname,label,manually_verified), audio_train/, "
    "audio_test/, sample_submission.csv",
)
def read_fsdkaggle2018(root: Path, *, split: str = "train", labels: Sequence[str] | None = None) -> Manifest:
    """Read the FSDKaggle2018 Kaggle layout.

    ``split="train"`` reads ``train.csv`` with ``audio_train/``; ``split="test"`` reads the
    clip list of ``sample_submission.csv`` (unlabelled) or, in the Zenodo release,
    ``test_post_competition_scoring_clips.csv`` (labelled) with ``audio_test/``. The
    vocabulary is the challenge's 41 labels.
    """
    vocab = tuple(labels or FSDKAGGLE2018_LABELS)
    problems: list[Problem] = []
    clips: list[Clip] = []
    if split == "train":
        csv_path = root / "train.csv"
        rows, _ = _read_csv(csv_path, [("fname",), ("label",)])
        audio = root / "audio_train"
        for row_no, row in enumerate(rows, start=2):
            where = _where(row_no, row["fname"])
            clips.append(
                Clip(
                    id=row["fname"],
                    path=str(audio / row["fname"]),
                    labels=_split_labels(row["label"]),
                    manually_verified=_parse_bool(row.get("manually_verified"), where, problems),
                )
            )
        meta = {}
    elif split == "test":
        # Kaggle's layout lists test clips in sample_submission.csv (unlabelled); the Zenodo
        # release ships the scored test clips with their labels instead.
        csv_path = root / "sample_submission.csv"
        labelled = root / "test_post_competition_scoring_clips.csv"
        if not csv_path.is_file() and labelled.is_file():
            csv_path = labelled
        if not csv_path.is_file():
            raise DataError(
                f"{root}: no sample_submission.csv or test_post_competition_scoring_clips.csv; "
                "the test split is listed by one of them"
            )
        rows, _ = _read_csv(csv_path, [("fname",)])
        audio = root / "audio_test"
        with_labels = csv_path == labelled
        clips = [
            Clip(
                id=r["fname"], path=str(audio / r["fname"]), labels=_split_labels(r.get("label")) if with_labels else ()
            )
            for r in rows
        ]
        meta = {} if with_labels else {"unlabelled": True}
    else:
        raise ParameterError(f"split={split!r} must be 'train' or 'test'")
    return _finish(clips, problems, csv_path, labels=vocab, name=f"fsdkaggle2018-{split}", multilabel=False, meta=meta)


def _has_fname_label(csv_path: Path) -> bool:
    try:
        with open(csv_path, encoding="utf-8-sig") as fh:
            header = fh.readline().strip().split(",")
    except OSError:
        return False
    return header[:2] == ["fname", "label"]


# --- ESC-50 and ESC-10 ------------------------------------------------------------------


@register_layout(
    "esc50",
    detect=lambda p: p.is_dir() and (p / "meta" / "esc50.csv").is_file(),
    description="ESC-50: meta/esc50.csv with its five folds, audio/",
)
def read_esc50(root: Path, *, esc10_only: bool = False) -> Manifest:
    """Read ESC-50 (``meta/esc50.csv``: filename, fold, target, category, esc10, src_file)."""
    csv_path = root / "meta" / "esc50.csv"
    rows, _ = _read_csv(csv_path, [("filename",), ("fold",), ("target",), ("category",)])
    problems: list[Problem] = []
    clips = []
    rows_kept = []
    by_target: dict[int, str] = {}
    for row_no, row in enumerate(rows, start=2):
        where = _where(row_no, row["filename"])
        if esc10_only and (row.get("esc10") or "").strip().lower() != "true":
            continue
        fold = _parse_fold(row["fold"], where, problems)
        try:
            target = int(row["target"])
        except (TypeError, ValueError):  # TypeError: a short row has no target cell
            problems.append(
                Problem(where, f"target={row['target']!r} is not an integer", "give the class number of the category")
            )
            continue
        category = row["category"] or ""
        if by_target.setdefault(target, category) != category:
            problems.append(
                Problem(
                    where,
                    f"target {target} is {category!r} here but {by_target[target]!r} earlier",
                    "fix the category or target",
                )
            )
        src = row.get("src_file") or None
        rows_kept.append(row_no)
        clips.append(
            Clip(
                id=row["filename"],
                path=str(root / "audio" / row["filename"]),
                labels=_split_labels(category),
                fold=fold,
                group=f"{src}" if src else None,
            )
        )
    vocab = [by_target[t] for t in sorted(by_target)]
    return _finish(
        clips,
        problems,
        csv_path,
        labels=vocab,
        multilabel=False,
        name="esc10" if esc10_only else "esc50",
        meta={"rows": rows_kept},
    )


_ESC10_DIR = re.compile(r"^(\d{3}) - (.+)$")
_ESC_FILE = re.compile(r"^(\d+)-([^-]+)-([A-Za-z]+)")


def _is_esc10_tree(p: Path) -> bool:
    base = p / "audio" if (p / "audio").is_dir() else p
    return p.is_dir() and any(_ESC10_DIR.match(d.name) for d in base.iterdir() if d.is_dir())


@register_layout(
    "esc10",
    detect=_is_esc10_tree,
    description="the original ESC-10/ESC-50 release: folders 'NNN - Class' of fold-id-take files",
)
def read_esc10(root: Path) -> Manifest:
    """Read the original ESC release layout: ``NNN - Class/<fold>-<id>-<take>.ogg``.

    The fold is the file name's first field and the source group its second, so takes of one
    recording stay together. Clip ids are the paths relative to ``root``.
    """
    base = root / "audio" if (root / "audio").is_dir() else root
    problems: list[Problem] = []
    clips = []
    classes = []
    for folder in sorted(d for d in base.iterdir() if d.is_dir()):
        match = _ESC10_DIR.match(folder.name)
        if not match:
            continue
        label = match.group(2).strip()
        classes.append(label)
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            m = _ESC_FILE.match(f.stem)
            where = f.relative_to(base).as_posix()
            if not m:
                problems.append(
                    Problem(
                        where, "file name is not <fold>-<id>-<take>", "rename it or use the folder-per-class layout"
                    )
                )
                continue
            clips.append(Clip(id=where, path=str(f), labels=(label,), fold=int(m.group(1)), group=m.group(2)))
    if not clips and not problems:
        problems.append(Problem(str(base), "no audio files in 'NNN - Class' folders"))
    return _finish(clips, problems, root, labels=classes, multilabel=False, name="esc10", meta={"first_row": 1})


# --- generic CSV, folder-per-class, multi-label CSV -------------------------------------


def _resolve(path_text: str, base: Path) -> str:
    p = Path(path_text)
    return str(p if p.is_absolute() else base / p)


def _csv_header(p: Path) -> list[str]:
    if not (p.is_file() and p.suffix.lower() == ".csv"):
        return []
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


@register_layout(
    "multilabel-csv",
    detect=lambda p: (h := _csv_header(p)) and h[0] == "fname" and "labels" in h,
    description="FSDKaggle2019 / FSD50K style: fname,labels[,mids,split] with comma-separated labels",
)
def read_multilabel_csv(
    csv_path: Path, *, audio_dir: str | Path | None = None, labels: Sequence[str] | None = None
) -> Manifest:
    """Read a multi-label CSV in the FSDKaggle2019 / FSD50K style.

    ``fname`` names the file (``.wav`` is added when it has no suffix, as in FSD50K), looked
    up in ``audio_dir`` (default: the CSV's folder). A ``split`` column (FSD50K's
    train/val) becomes fold 1 for ``val`` and fold 0 for ``train``. The vocabulary is
    ``labels``, else ``vocabulary.csv`` beside the CSV (FSD50K), else the labels found.
    """
    rows, _ = _read_csv(csv_path, [("fname",), ("labels",)])
    audio = Path(audio_dir) if audio_dir else csv_path.parent
    vocab = labels or _fsd50k_vocabulary(csv_path.parent / "vocabulary.csv")
    problems: list[Problem] = []
    clips = []
    for row_no, row in enumerate(rows, start=2):
        fname = row["fname"].strip()
        if not Path(fname).suffix:
            fname += ".wav"
        where = _where(row_no, fname)
        split = (row.get("split") or "").strip().lower()
        fold = {"val": 1, "train": 0}.get(split) if split else None
        if split and fold is None:
            problems.append(
                Problem(
                    where,
                    f"split={row['split']!r} is not 'train' or 'val'",
                    "write train or val, or leave the cell empty",
                )
            )
        clips.append(
            Clip(
                id=fname,
                path=_resolve(fname, audio),
                labels=_split_labels(row["labels"]),
                fold=fold,
                manually_verified=_parse_bool(row.get("manually_verified"), where, problems),
            )
        )
    return _finish(clips, problems, csv_path, labels=vocab, multilabel=True, name=csv_path.stem)


def _fsd50k_vocabulary(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        return [row[1] for row in csv.reader(fh) if len(row) >= 2]


@register_layout(
    "csv",
    detect=lambda p: bool({"path", "file", "filename"} & set(_csv_header(p))),
    description="generic CSV: path,labels[,fold,manually_verified,group]; labels separated by commas",
)
def read_csv_manifest(
    csv_path: Path, *, root: str | Path | None = None, labels: Sequence[str] | None = None
) -> Manifest:
    """Read a generic CSV with a path column and a labels column.

    Relative paths are taken from ``root`` (default: the CSV's folder). Several labels in one
    cell, separated by commas, make the manifest multi-label. ``labels`` fixes the vocabulary
    (its order is the model's output order); otherwise it is the sorted labels found.
    """
    rows, cols = _read_csv(csv_path, [("path", "file", "filename"), ("labels", "label")])
    base = Path(root) if root else csv_path.parent
    problems: list[Problem] = []
    clips = []
    rows_kept = []
    for row_no, row in enumerate(rows, start=2):
        rel = (row.get(cols["path"]) or "").strip()  # a short row has no cell at all
        where = _where(row_no, rel)
        fold = _parse_fold(row.get("fold"), where, problems)
        verified = _parse_bool(row.get("manually_verified"), where, problems)
        if not rel:
            problems.append(Problem(where, "empty path", "name the clip's audio file, or remove the row"))
            continue
        rows_kept.append(row_no)
        clips.append(
            Clip(
                id=rel,
                path=_resolve(rel, base),
                labels=_split_labels(row[cols["labels"]]),
                fold=fold,
                manually_verified=verified,
                group=(row.get("group") or None),
            )
        )
    return _finish(clips, problems, csv_path, labels=labels, name=csv_path.stem, meta={"rows": rows_kept})


@register_layout(
    "folders",
    detect=lambda p: p.is_dir() and any(d.is_dir() for d in p.iterdir()),
    description="folder per class: ROOT/<label>/**/<clip>.(wav|flac|ogg|mp3)",
)
def read_folders(root: Path, *, labels: Sequence[str] | None = None) -> Manifest:
    """Read a folder-per-class tree; each clip's label is its top-level folder's name."""
    clips = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES:
                rel = f.relative_to(root).as_posix()
                clips.append(Clip(id=rel, path=str(f), labels=(folder.name,)))
    if not clips:
        raise ManifestError(
            str(root),
            [
                Problem(
                    str(root),
                    "no audio files found in class folders",
                    f"expected files ending in {', '.join(AUDIO_SUFFIXES)}",
                )
            ],
        )
    return _finish(clips, [], root, labels=labels, name=root.name, meta={"first_row": 1})


@register_layout(
    "jsonl",
    detect=lambda p: p.is_file() and p.suffix == ".jsonl",
    description="a manifest saved by soundtag (Manifest.to_jsonl)",
)
def read_jsonl(path: Path) -> Manifest:
    return Manifest.from_jsonl(path)
