"""Registry of downloadable datasets, and a resumable, verified downloader.

``soundtag data get esc50|esc10|fsdkaggle2018 [--to DIR]`` calls :func:`get`. A dataset is a
:class:`DatasetSpec`: a list of :class:`RemoteFile` (address, checksum, whether to unpack it).
:func:`get` prefers a local copy (the ``local_copy`` argument, else ``$SOUNDTAG_DATA``), which
is how tests and CI use the read-only ``../shared/data``; otherwise it downloads every file into
``<to>/<name>/``, verifies it, unpacks archives and writes ``.soundtag-complete.json`` last, so
an interrupted run resumes and a finished one returns at once.

Checksums are the published ones. ESC-50 and ESC-10 are served only as GitHub branch archives
(``archive/master.zip``), which GitHub regenerates, and their author publishes no checksum:
those files carry ``md5=None`` and every download of them warns that it was not verified.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import logging
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

log = logging.getLogger(__name__)

MARKER = ".soundtag-complete.json"
_HEX = re.compile(r"[0-9a-f]+")


class UnverifiedDownloadWarning(UserWarning):
    """A file was accepted without a checksum, because none is published for it."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    Parameters
    ----------
    url : address to download from (``https://``)
    filename : name the download is saved under (no folders)
    size : expected size in bytes, or None if unknown
    md5, sha256 : published checksum as lowercase hex; None where none is published
    extract : unpack this zip/tar archive into the dataset folder
    strip_components : leading path components removed from archive members (like ``tar``)
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
            if value is not None and (len(value) != length or not _HEX.fullmatch(value)):
                raise ParameterError(f"{self.filename}: {algo}={value!r} must be {length} "
                                     "lowercase hex digits, or None where none is published")
        if not self.filename or "/" in self.filename or "\\" in self.filename:
            raise ParameterError(f"filename={self.filename!r} must be a bare file name")
        if self.strip_components < 0:
            raise ParameterError(f"strip_components={self.strip_components} must be >= 0")
        if _unsafe(self.subdir):
            raise ParameterError(f"subdir={self.subdir!r} must be a relative path inside the dataset")

    @property
    def verification(self) -> str:
        """How a download of this file is checked, in words."""
        if self.sha256 or self.md5:
            return "sha256" if self.sha256 else "md5"
        if self.size is not None:
            return "no published checksum: verified by size only"
        return "no published checksum: not verified"


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable dataset.

    Parameters
    ----------
    name : registry key (``soundtag data get NAME``)
    description : one line for listings
    files : the files to download
    layout : manifest layout name that readers of the folder use
    local_subdir : folder name of this dataset inside a local copy (``$SOUNDTAG_DATA``)
    license, homepage : where the data comes from and under which terms
    """

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    layout: str
    local_subdir: str
    license: str
    homepage: str

    def __post_init__(self):
        if not self.name or not self.files:
            raise ParameterError(f"dataset {self.name!r} needs a name and at least one file")
        names = [f.filename for f in self.files]
        if len(set(names)) != len(names):
            raise ParameterError(f"dataset {self.name!r}: file names must be unique, got {names}")


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry; a name already registered raises ParameterError."""
    if spec.name in _REGISTRY:
        raise ParameterError(f"dataset {spec.name!r} is already registered; pick another name "
                             "or call unregister_dataset() first")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_dataset(name: str) -> DatasetSpec:
    """Remove and return the dataset registered as ``name`` (used by tests)."""
    spec = get_spec(name)
    del _REGISTRY[spec.name]
    return spec


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """Return the spec registered as ``name``; an unknown name raises ParameterError."""
    spec = _REGISTRY.get(name) or _REGISTRY.get(str(name).strip().lower())
    if spec is None:
        near = difflib.get_close_matches(str(name).lower(), list(_REGISTRY), n=1, cutoff=0.5)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ParameterError(f"unknown dataset {name!r}.{hint} Known datasets: "
                             f"{', '.join(list_datasets())}.")
    return spec


def default_data_root() -> Path:
    """``$SOUNDTAG_HOME/datasets``, else ``~/.cache/soundtag/datasets``."""
    home = os.environ.get("SOUNDTAG_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "soundtag") / "datasets"


def _unsafe(rel: str) -> bool:
    p = PurePosixPath(rel.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or bool(re.match(r"^[A-Za-z]:", rel))


def _digests(path: Path, chunk_size: int = 1 << 20) -> tuple[int, str, str]:
    md5, sha, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            md5.update(block)
            sha.update(block)
            size += len(block)
    return size, md5.hexdigest(), sha.hexdigest()


def _mismatch(path: Path, md5: str | None, sha256: str | None, size: int | None) -> str | None:
    """Describe how ``path`` differs from what is expected, or None if it matches."""
    if md5 is None and sha256 is None:
        actual = path.stat().st_size
        return None if size in (None, actual) else f"expected {size} bytes, got {actual}"
    actual_size, actual_md5, actual_sha = _digests(path)
    if size is not None and actual_size != size:
        return f"expected {size} bytes, got {actual_size}"
    if sha256 and actual_sha != sha256:
        return f"expected sha256 {sha256}, got {actual_sha}"
    if md5 and actual_md5 != md5:
        return f"expected md5 {md5}, got {actual_md5}"
    return None


def download(url: str, dest: str | Path, *, expected_md5: str | None = None,
             expected_sha256: str | None = None, expected_size: int | None = None,
             progress: bool = True, chunk_size: int = 1 << 20, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest``, resuming a partial download and verifying the result.

    Data goes to ``dest + ".part"``; an existing part is resumed with ``Range: bytes=N-`` (a
    server that answers 200 instead of 206 is read again from the start). Only a verified
    file is renamed to ``dest``; a ``dest`` that already verifies is not fetched again.

    Parameters
    ----------
    url : address to fetch
    dest : final path of the file
    expected_md5, expected_sha256, expected_size : what the file must match; with no
        checksum an :class:`UnverifiedDownloadWarning` says the file was not verified
    progress : show a rich progress bar
    chunk_size : bytes read per step
    timeout : seconds to wait on the network before giving up

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    DataError
        On a network error (the ``.part`` is kept: run again to resume) or a checksum or
        size mismatch (the ``.part`` is deleted).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():
        if _mismatch(dest, expected_md5, expected_sha256, expected_size) is None:
            return dest
        log.warning("%s does not match its checksum; downloading it again", dest)
        dest.unlink()
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
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
        except urllib.error.HTTPError as err:
            if not (err.code == 416 and offset):  # 416 with a part: the part is already whole
                raise
            err.close()
            resp = None
        if resp is not None:
            with resp:
                _receive(resp, url, part, offset, expected_size, progress, chunk_size)
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
        raise DataError(f"download of {url} failed: {err}. The partial file {part} was kept; "
                        "check the network and run the same command again to resume.") from err
    problem = _mismatch(part, expected_md5, expected_sha256, expected_size)
    if problem:
        part.unlink()
        raise DataError(f"download of {url} is corrupt: {problem}. The bad file was deleted; run "
                        "the command again to fetch it afresh. If it fails again the file on the "
                        "server changed: report it to the soundtag maintainers.")
    if not (expected_md5 or expected_sha256):
        how = "verified by size only" if expected_size is not None else "not verified"
        warnings.warn(f"{url}: no published checksum: {how}", UnverifiedDownloadWarning,
                      stacklevel=2)
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    return dest


def _receive(resp, url, part: Path, offset: int, expected_size, progress, chunk_size) -> None:
    """Append (206) or write (200) the body of ``resp`` to ``part``."""
    if offset and resp.status == 206:
        start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
        if not start or int(start.group(1)) != offset:
            part.unlink()
            raise DataError(f"{url}: the server resumed at the wrong place (Content-Range "
                            f"{resp.headers.get('Content-Range')!r}, wanted byte {offset}). The "
                            "partial file was deleted; run the command again to start afresh.")
    elif offset:
        log.info("%s ignores Range requests; downloading from the start", url)
        offset = 0
    length = resp.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    total = offset + length if length is not None else expected_size
    received = 0
    bar = None
    if progress:
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)
        bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn())
        bar.start()
        task = bar.add_task(part.name[: -len(".part")], total=total, completed=offset)
    try:
        with open(part, "ab" if offset else "wb") as fh:
            while block := resp.read(chunk_size):
                fh.write(block)
                received += len(block)
                if bar:
                    bar.update(task, advance=len(block))
    finally:
        if bar:
            bar.stop()
    if length is not None and received < length:
        raise OSError(f"connection closed after {offset + received} of {offset + length} bytes")


def _extract(archive: Path, target: Path, strip_components: int = 0) -> list[str]:
    """Unpack a zip or tar ``archive`` into ``target``; members escaping it raise DataError."""
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        members = [(i.filename, i.is_dir(), True, lambda i=i: zf.open(i)) for i in zf.infolist()]
        closer = zf
    elif tarfile.is_tarfile(archive):
        tf = tarfile.open(archive)
        members = [(m.name, m.isdir(), m.isdir() or m.isfile(), lambda m=m: tf.extractfile(m))
                   for m in tf.getmembers()]
        closer = tf
    else:
        raise DataError(f"{archive} is neither a zip nor a tar archive; delete it and run again.")
    root, plan = target.resolve(), []
    with closer:
        for name, is_dir, regular, opener in members:
            if not regular:
                raise DataError(f"{archive}: member {name!r} is a link or special file; soundtag "
                                "unpacks only plain files and folders. The archive was not used.")
            parts = PurePosixPath(name.replace("\\", "/")).parts
            out = (root.joinpath(*parts[strip_components:])).resolve()
            if _unsafe(name) or (out != root and root not in out.parents):
                raise DataError(f"{archive}: member {name!r} would be written outside {target}; "
                                "the archive is unsafe and was not unpacked.")
            if len(parts) > strip_components:
                plan.append((out, is_dir, opener))
        for out, is_dir, opener in plan:  # every member checked before anything is written
            if is_dir:
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with opener() as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return [str(out.relative_to(root)) for out, _, _ in plan]


def _marker_record(spec: DatasetSpec) -> dict:
    return {"dataset": spec.name, "layout": spec.layout,
            "files": [{**asdict(f), "verified": f.verification} for f in spec.files]}


def get(name: str, to: str | Path | None = None, *, local_copy: str | Path | None = None,
        progress: bool = True) -> Path:
    """Make dataset ``name`` available on disk and return its folder.

    Parameters
    ----------
    name : a registered dataset (``list_datasets()``)
    to : parent folder; the dataset goes to ``to/<name>/`` (default: :func:`default_data_root`)
    local_copy : folder holding local copies (default ``$SOUNDTAG_DATA``); when
        ``<local_copy>/<spec.local_subdir>`` exists it is returned as is: no copy, no network
    progress : show progress bars while downloading

    Returns
    -------
    The dataset folder. Downloads are verified, archives unpacked and the marker
    ``.soundtag-complete.json`` written last; a folder with a valid marker is returned at once.
    """
    spec = get_spec(name)
    local = local_copy if local_copy is not None else os.environ.get("SOUNDTAG_DATA")
    if local:
        candidate = Path(local).expanduser() / spec.local_subdir
        if candidate.is_dir():
            return candidate
        log.info("no local copy at %s; downloading %s", candidate, spec.name)
    target = (Path(to).expanduser() if to is not None else default_data_root()) / spec.name
    marker, record = target / MARKER, _marker_record(spec)
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == record:
            return target
    except (OSError, ValueError):
        pass
    staging = target / ".downloads"
    for f in spec.files:
        where = staging if f.extract else target / f.subdir
        path = download(f.url, where / f.filename, expected_md5=f.md5, expected_sha256=f.sha256,
                        expected_size=f.size, progress=progress)
        if f.extract:
            _extract(path, target / f.subdir, f.strip_components)
    atomic_write_json(marker, record)
    shutil.rmtree(staging, ignore_errors=True)
    return target


_ZENODO = "https://zenodo.org/records/2552860/files/"
_FSD_MD5 = {  # published on Zenodo record 2552860 (as hard-coded in mteb's FSDKaggle2018 script)
    "audio_train": "a8b47ff4b52022c178f88fa5c6f080d0", "audio_test": "f85c8665c3fc39311ea1b748e194a81d",
    "meta": "f16828ac8be0e5285b9175a12f90d784", "doc": "4f2d1ac88f33a62f9db3108b269ee1b7"}

for _spec in (
    DatasetSpec(
        "esc50", "ESC-50: 2000 environmental clips, 50 classes, 5 folds (Piczak 2015)",
        (RemoteFile("https://github.com/karolpiczak/ESC-50/archive/master.zip", "ESC-50-master.zip",
                    extract=True, strip_components=1),),
        layout="esc50", local_subdir="esc50", license="CC BY-NC 3.0",
        homepage="https://github.com/karolpiczak/ESC-50"),
    DatasetSpec(
        "esc10", "ESC-10, original release: 400 clips, 10 classes, 5 folds (Ogg Vorbis)",
        (RemoteFile("https://github.com/karolpiczak/ESC-10/archive/master.zip", "ESC-10-master.zip",
                    extract=True, strip_components=1, subdir="audio"),),
        layout="esc10", local_subdir="esc10", license="CC BY 3.0",
        homepage="https://github.com/karolpiczak/ESC-10"),
    DatasetSpec(
        "fsdkaggle2018", "FSDKaggle2018: 11073 Freesound clips, 41 labels (DCASE 2018 task 2)",
        tuple(RemoteFile(f"{_ZENODO}FSDKaggle2018.{part}.zip?download=1", f"FSDKaggle2018.{part}.zip",
                         md5=md5, extract=True, strip_components=1,
                         subdir="" if part == "meta" else part)
              for part, md5 in _FSD_MD5.items()),
        layout="fsdkaggle2018", local_subdir="fsdkaggle2018", license="CC BY 4.0 (clips: CC)",
        homepage="https://zenodo.org/records/2552860"),
):
    register_dataset(_spec)
