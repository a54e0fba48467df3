"""Registry of downloadable datasets, and a resumable, verified downloader.

``soundtag data get NAME [--to DIR]`` calls :func:`get`: it uses a local copy if configured
(``local_copy`` or ``$SOUNDTAG_DATA``: how tests and CI use ``../shared/data``), else downloads
the :class:`DatasetSpec`'s files into ``<to>/<name>/``, verifies and unpacks them, and writes
``.soundtag-complete.json`` last. ESC-50 and ESC-10 exist only as GitHub branch archives with
no published checksum: they carry ``md5=None`` and their downloads warn that they are unverified.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from soundtag import __version__
from soundtag._io import atomic_write_json
from soundtag.errors import DataError, ParameterError
from soundtag.progress import progress_bar
from soundtag.registry import Registry, nearest

MARKER = ".soundtag-complete.json"


class UnverifiedDownloadWarning(UserWarning):
    """A file was accepted without a checksum, because none is published for it."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    Parameters
    ----------
    url, filename : address to download from; bare file name to save it under
    size, md5, sha256 : expected size in bytes, published lowercase-hex checksums; None if unknown
    extract : unpack this zip/tar archive into the dataset folder
    strip_components : leading path components dropped from archive members (as in ``tar``)
    subdir : folder, relative to the dataset folder, that the file or its members go into
    """

    url: str
    filename: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    extract: bool = False
    strip_components: int = 0
    subdir: str = ""

    def __post_init__(self):
        for algo, value, length in (("md5", self.md5, 32), ("sha256", self.sha256, 64)):
            if value is not None and not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
                raise ParameterError(
                    f"{self.filename}: {algo}={value!r} must be {length} "
                    "lowercase hex digits, or None where none is published"
                )
        if not self.filename or "/" in self.filename or "\\" in self.filename:
            raise ParameterError(f"filename={self.filename!r} must be a bare file name")
        if self.strip_components < 0 or _unsafe(self.subdir):
            raise ParameterError(
                f"{self.filename}: strip_components={self.strip_components} "
                f"must be >= 0 and subdir={self.subdir!r} a relative folder"
            )

    @property
    def verification(self) -> str:
        """How a download of this file is checked, in words."""
        if self.sha256 or self.md5:
            return "sha256" if self.sha256 else "md5"
        how = "verified by size only" if self.size is not None else "not verified"
        return f"no published checksum: {how}"


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable dataset.

    Parameters
    ----------
    name, description : registry key (``soundtag data get NAME``); one line for listings
    files, layout : the files to download; manifest layout name that readers of the folder use
    local_subdir : folder name of this dataset inside a local copy (``$SOUNDTAG_DATA``)
    license, homepage : under which terms the data comes, and from where
    copies : ``(source, copy)`` paths in the folder, copied after unpacking to fit ``layout``
    """

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    layout: str
    local_subdir: str
    license: str
    homepage: str
    copies: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        names = [f.filename for f in self.files]
        if (
            not self.name
            or not names
            or len(set(names)) != len(names)
            or any(_unsafe(p) for pair in self.copies for p in pair)
        ):
            raise ParameterError(
                f"dataset {self.name!r} needs a name, at least one file, unique "
                f"file names (got {names}) and relative copies {self.copies}"
            )


_REGISTRY: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry; a name already registered raises ParameterError."""
    return _REGISTRY.add(spec.name, spec)


def unregister_dataset(name: str) -> DatasetSpec:
    """Remove and return the dataset registered as ``name`` (used by tests)."""
    return _REGISTRY.remove(get_spec(name).name)


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return _REGISTRY.names()


def get_spec(name: str) -> DatasetSpec:
    """Return the spec registered as ``name`` (case- and space-insensitive); an unknown name
    raises ParameterError naming the nearest one and every known dataset."""
    try:
        return _REGISTRY.get(name)
    except ParameterError:
        near = nearest(str(name).strip().lower(), _REGISTRY, cutoff=0.5)
        hint = f" Did you mean {near!r}?" if near else ""
        raise ParameterError(f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(list_datasets())}.") from None


def default_data_root() -> Path:
    """``$SOUNDTAG_HOME/datasets``, else ``~/.cache/soundtag/datasets``."""
    home = os.environ.get("SOUNDTAG_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "soundtag") / "datasets"


def _unsafe(rel: str) -> bool:
    p = PurePosixPath(rel.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or bool(re.match(r"[A-Za-z]:", rel))


def _mismatch(path: Path, md5: str | None, sha256: str | None, size: int | None) -> str | None:
    """Describe how ``path`` differs from what is expected, or None if it matches."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"expected {size} bytes, got {actual}"
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want:
            digest = hashlib.new(algo)
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
            got = digest.hexdigest()
            return None if got == want else f"expected {algo} {want}, got {got}"
    return None


def download(
    url: str,
    dest: str | Path,
    *,
    expected_md5: str | None = None,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial download and verifying the result.

    Data goes to ``dest + ".part"``, resumed with ``Range: bytes=N-`` (a server answering 200
    instead of 206 is read from the start); only a verified file is renamed to ``dest``, and a
    ``dest`` that already verifies is not fetched again. A network error raises DataError and
    keeps the ``.part`` (run again to resume); a checksum or size mismatch deletes it.

    Parameters
    ----------
    url, dest : address to fetch and final path of the file
    expected_md5, expected_sha256, expected_size : what the file must match; with no checksum
        an :class:`UnverifiedDownloadWarning` says it was verified by size only or not at all
    progress, chunk_size, timeout : show a rich progress bar; bytes per read; network timeout (s)
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file() and _mismatch(dest, expected_md5, expected_sha256, expected_size) is None:
        return dest  # a dest that does not verify is replaced by the new download
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    headers = {"User-Agent": f"soundtag/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as err:
            if not (err.code == 416 and offset):  # 416 with a part: the part is already whole
                raise
            err.close()
        else:
            with resp:
                _receive(resp, url, part, offset, expected_size, progress, chunk_size)
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
        raise DataError(
            f"download of {url} failed: {err}. Check the network and run the same "
            f"command again: it resumes from {part} when that exists."
        ) from err
    problem = _mismatch(part, expected_md5, expected_sha256, expected_size)
    if problem:
        part.unlink()
        raise DataError(
            f"download of {url} is corrupt: {problem}. The bad file was deleted; run "
            "the command again to fetch it afresh. If it fails again the file on the "
            "server changed: report it to the soundtag maintainers."
        )
    if not (expected_md5 or expected_sha256):
        how = "verified by size only" if expected_size is not None else "not verified"
        warnings.warn(f"{url}: no published checksum: {how}", UnverifiedDownloadWarning, 2)
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    return dest


def _receive(resp, url, part: Path, offset: int, expected_size, progress, chunk_size) -> None:
    """Append (206) or write (200: no range support, start over) the body to ``part``."""
    if offset and resp.status == 206:
        if not re.match(rf"bytes {offset}-", resp.headers.get("Content-Range", "")):
            part.unlink()  # cannot be appended to: the next run starts afresh
            raise OSError(f"the server resumed at another byte than {offset}")
    elif offset:  # 200: the server ignores Range, so start over
        offset = 0
    length = resp.headers.get("Content-Length", "")
    length = int(length) if length.isdigit() else None
    total = offset + length if length is not None else expected_size
    received = 0
    with (
        progress_bar(progress, total, part.name[:-5], completed=offset, transfer=True) as advance,
        open(part, "ab" if offset else "wb") as fh,
    ):
        while block := resp.read(chunk_size):
            fh.write(block)
            received += len(block)
            advance(len(block))
    if length is not None and received < length:
        raise OSError(f"connection closed after {offset + received} of {offset + length} bytes")


def _extract(archive: Path, target: Path, strip_components: int = 0) -> None:
    """Unpack a zip or tar ``archive`` into ``target``; any unsafe member raises DataError first.

    Every member is checked before anything is written: no links or special files, no name
    that is absolute or lands outside ``target``. A tar is then unpacked by tarfile itself
    with its ``"data"`` extraction filter (PEP 706), which checks each member again and drops
    set-uid, set-gid and group/other write bits from the modes.
    """
    if zipfile.is_zipfile(archive):
        arc = zipfile.ZipFile(archive)
        members = [(i.filename, i.is_dir(), True, i) for i in arc.infolist()]
    elif tarfile.is_tarfile(archive):
        arc = tarfile.open(archive)
        members = [(m.name, m.isdir(), m.isdir() or m.isfile(), m) for m in arc.getmembers()]
    else:
        raise DataError(f"{archive} is neither a zip nor a tar archive; delete it and run again.")

    root, plan = target.resolve(), []
    with arc:
        for name, is_dir, plain, member in members:
            parts = PurePosixPath(name.replace("\\", "/")).parts
            out = root.joinpath(*parts[strip_components:]).resolve()
            if not plain or _unsafe(name) or not out.is_relative_to(root):
                why = "is a link or special file" if not plain else f"would land outside {target}"
                raise DataError(
                    f"{archive}: member {name!r} {why}; the archive is unsafe and was "
                    "not unpacked. Delete it and tell the dataset's maintainers."
                )
            if len(parts) > strip_components:
                plan.append((out, is_dir, member, "/".join(parts[strip_components:])))
        if isinstance(arc, tarfile.TarFile):
            # The checks above already refuse all the filter refuses, and more (every link), so
            # here it fixes modes and guards against a mistake in those checks.
            root.mkdir(parents=True, exist_ok=True)
            try:
                arc.extractall(root, members=[m.replace(name=rel, deep=False) for *_, m, rel in plan], filter="data")
            except tarfile.FilterError as exc:
                raise DataError(
                    f"{archive}: {exc}; the archive is unsafe. Delete it and tell the dataset's maintainers."
                ) from exc
            return
        for out, is_dir, member, _ in plan:  # written only once every member has passed
            (out if is_dir else out.parent).mkdir(parents=True, exist_ok=True)
            if not is_dir:
                with arc.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)


def get(
    name: str, to: str | Path | None = None, *, local_copy: str | Path | None = None, progress: bool = True
) -> Path:
    """Make dataset ``name`` available on disk and return its folder.

    The marker ``.soundtag-complete.json`` is written last; a folder whose marker matches the
    spec is returned at once, anything less is resumed.

    Parameters
    ----------
    name, to : a registered dataset; parent folder, ``to/<name>/`` (default: under
        :func:`default_data_root`)
    local_copy : folder of local copies (default ``$SOUNDTAG_DATA``); if
        ``<local_copy>/<spec.local_subdir>`` exists it is returned as is: no copy, no network
    progress : show progress bars while downloading
    """
    spec = get_spec(name)
    local = local_copy if local_copy is not None else os.environ.get("SOUNDTAG_DATA")
    if local:
        candidate = Path(local).expanduser() / spec.local_subdir
        if candidate.is_dir():
            return candidate
    target = (Path(to).expanduser() if to is not None else default_data_root()) / spec.name
    marker = target / MARKER
    record = {
        "dataset": spec.name,
        "layout": spec.layout,
        "files": [{**asdict(f), "verified": f.verification} for f in spec.files],
    }
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text(encoding="utf-8")) == record:
            return target
    staging = target / ".downloads"
    for f in spec.files:
        where = staging if f.extract else target / f.subdir
        path = download(
            f.url,
            where / f.filename,
            expected_md5=f.md5,
            expected_sha256=f.sha256,
            expected_size=f.size,
            progress=progress,
        )
        if f.extract:
            _extract(path, target / f.subdir, f.strip_components)
    for source, copy in spec.copies:
        if not (target / source).is_file():
            raise DataError(
                f"{target / source} is missing after unpacking {spec.name}: the "
                "archives changed layout. Report it to the soundtag maintainers."
            )
        shutil.copyfile(target / source, target / copy)
    atomic_write_json(marker, record)
    shutil.rmtree(staging, ignore_errors=True)
    return target


_GITHUB, _ZENODO = "https://github.com/karolpiczak/", "https://zenodo.org/records/2552860/files/"
_FSD_MD5 = dict(  # published on Zenodo record 2552860, as hard-coded in mteb's FSDKaggle2018 script
    meta="f16828ac8be0e5285b9175a12f90d784",
    doc="4f2d1ac88f33a62f9db3108b269ee1b7",
    audio_test="f85c8665c3fc39311ea1b748e194a81d",
    audio_train="a8b47ff4b52022c178f88fa5c6f080d0",
)
for _spec in (
    DatasetSpec(
        "esc50",
        "ESC-50: 2000 environmental clips, 50 classes, 5 folds (Piczak 2015)",
        (RemoteFile(f"{_GITHUB}ESC-50/archive/master.zip", "ESC-50-master.zip", extract=True, strip_components=1),),
        "esc50",
        "esc50",
        "CC BY-NC 3.0",
        f"{_GITHUB}ESC-50",
    ),
    DatasetSpec(
        "esc10",
        "ESC-10, original release: 400 Ogg clips, 10 classes, 5 folds",
        (
            RemoteFile(
                f"{_GITHUB}ESC-10/archive/master.zip",
                "ESC-10-master.zip",
                extract=True,
                strip_components=1,
                subdir="audio",
            ),
        ),
        "esc10",
        "esc10",
        "CC BY 3.0",
        f"{_GITHUB}ESC-10",
    ),
    DatasetSpec(
        "fsdkaggle2018",
        "FSDKaggle2018: 11073 Freesound clips, 41 labels (DCASE 2018)",
        tuple(
            RemoteFile(
                f"{_ZENODO}FSDKaggle2018.{p}.zip?download=1",
                f"FSDKaggle2018.{p}.zip",
                md5=md5,
                extract=True,
                strip_components=1,
                subdir="" if p == "meta" else p,
            )
            for p, md5 in _FSD_MD5.items()
        ),
        "fsdkaggle2018",
        "fsdkaggle2018",
        "CC BY 4.0 (per-clip CC licences in meta)",
        "https://zenodo.org/records/2552860",
        copies=(("train_post_competition.csv", "train.csv"),),
    ),
):
    register_dataset(_spec)
