"""Tests of soundtag.datasets over real HTTP: a ThreadingHTTPServer on 127.0.0.1, no mocks."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from soundtag import datasets
from soundtag.datasets import MARKER, DatasetSpec, RemoteFile, UnverifiedDownloadWarning
from soundtag.errors import DataError, ParameterError

PAYLOAD = os.urandom(200_000)  # incompressible, so the zip is big enough to cut in the middle
LABELS = "filename,label\na.wav,dog\nb.wav,rain\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless told not to; can cut off."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        entry = {"path": self.path, "range": self.headers.get("Range"), "status": 404, "sent": 0}
        srv.log.append(entry)
        data = srv.files.get(self.path.split("?")[0])
        if data is None:
            self.send_error(404)
            return
        start = 0
        if entry["range"] and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", entry["range"]).group(1))
            if start >= len(data):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            entry["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            entry["status"] = 200
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:  # promise the whole body, send part, hang up
            body = body[: srv.drop_after]
        self.wfile.write(body)
        self.wfile.flush()
        entry["sent"] = len(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.honour_range, srv.drop_after = {}, [], True, None
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_address[1]}{path}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # quick shutdown
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No proxy for 127.0.0.1 and no local copy, whatever the machine running the tests has."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "SOUNDTAG_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def register():
    """Register specs for one test and unregister them afterwards."""
    names = []

    def _register(spec: DatasetSpec) -> DatasetSpec:
        datasets.register_dataset(spec)
        names.append(spec.name)
        return spec

    yield _register
    for name in names:
        datasets.unregister_dataset(name)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def archive(tmp_path) -> bytes:
    """A real zip made in tmp_path: a top folder holding a tiny CSV and a larger binary file."""
    path = tmp_path / "pack-1.0.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("pack-1.0/", b"")
        zf.writestr("pack-1.0/meta/labels.csv", LABELS)
        zf.writestr("pack-1.0/audio/noise.bin", PAYLOAD)
    return path.read_bytes()


def _spec(name: str, *files: RemoteFile, local_subdir: str = "nowhere", copies=()) -> DatasetSpec:
    return DatasetSpec(
        name,
        "test data",
        files,
        layout="esc50",
        local_subdir=local_subdir,
        license="CC0",
        homepage="http://127.0.0.1/",
        copies=copies,
    )


def test_get_downloads_verifies_extracts_and_writes_marker(tmp_path, server, register, archive):
    notes = b"id,text\n1,hello\n"
    server.files = {"/pack.zip": archive, "/notes.csv": notes}
    register(
        _spec(
            "t-full",
            RemoteFile(
                server.url("/pack.zip"),
                "pack.zip",
                size=len(archive),
                md5=_md5(archive),
                extract=True,
                strip_components=1,
            ),
            RemoteFile(server.url("/notes.csv"), "notes.csv", sha256=hashlib.sha256(notes).hexdigest(), subdir="extra"),
            copies=(("meta/labels.csv", "train.csv"),),
        )
    )
    folder = datasets.get("t-full", to=tmp_path / "data", progress=True)

    assert folder == tmp_path / "data" / "t-full"
    assert (folder / "meta" / "labels.csv").read_text() == LABELS
    assert (folder / "audio" / "noise.bin").read_bytes() == PAYLOAD
    assert (folder / "extra" / "notes.csv").read_bytes() == notes
    assert (folder / "train.csv").read_text() == LABELS  # spec.copies fit the folder to its layout
    marker = json.loads((folder / MARKER).read_text())
    assert marker["dataset"] == "t-full"
    assert [(f["filename"], f["verified"]) for f in marker["files"]] == [("pack.zip", "md5"), ("notes.csv", "sha256")]
    assert marker["files"][0]["md5"] == _md5(archive)
    assert not (folder / ".downloads").exists()  # archives are removed once unpacked
    assert not list(folder.rglob("*.part"))

    requests = len(server.log)
    assert datasets.get("t-full", to=tmp_path / "data", progress=False) == folder
    assert len(server.log) == requests  # a complete marker makes it a no-op


def test_interrupted_get_keeps_part_and_resumes_with_range(tmp_path, server, register, archive):
    server.files = {"/pack.zip": archive}
    register(
        _spec(
            "t-resume",
            RemoteFile(server.url("/pack.zip"), "pack.zip", md5=_md5(archive), extract=True, strip_components=1),
        )
    )
    cut = len(archive) * 3 // 4
    server.drop_after = cut
    with pytest.raises(DataError, match=re.escape(server.url("/pack.zip"))):
        datasets.get("t-resume", to=tmp_path, progress=False)
    part = tmp_path / "t-resume" / ".downloads" / "pack.zip.part"
    assert part.stat().st_size == cut
    assert not (tmp_path / "t-resume" / MARKER).exists()

    server.drop_after = None
    folder = datasets.get("t-resume", to=tmp_path, progress=False)
    first, second = server.log[-2], server.log[-1]
    assert first["range"] is None and first["sent"] == cut
    assert second["range"] == f"bytes={cut}-" and second["status"] == 206
    assert second["sent"] == len(archive) - cut < first["sent"]
    assert (folder / "audio" / "noise.bin").read_bytes() == PAYLOAD
    assert (folder / MARKER).is_file()


def test_server_without_range_support_restarts_cleanly(tmp_path, server):
    server.files = {"/f.bin": PAYLOAD}
    server.honour_range = False
    dest = tmp_path / "f.bin"
    Path(f"{dest}.part").write_bytes(b"garbage" * 100)  # appended to, it would fail the md5
    datasets.download(server.url("/f.bin"), dest, expected_md5=_md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.log[-1]["range"] == "bytes=700-" and server.log[-1]["status"] == 200
    assert not Path(f"{dest}.part").exists()


def test_complete_part_answered_416_is_accepted_and_dest_not_fetched_again(tmp_path, server):
    server.files = {"/f.bin": PAYLOAD}
    dest = tmp_path / "f.bin"
    Path(f"{dest}.part").write_bytes(PAYLOAD)
    datasets.download(server.url("/f.bin"), dest, expected_md5=_md5(PAYLOAD), progress=False)
    assert server.log[-1]["status"] == 416
    assert dest.read_bytes() == PAYLOAD
    datasets.download(server.url("/f.bin"), dest, expected_md5=_md5(PAYLOAD), progress=False)
    assert len(server.log) == 1


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_bad_checksum_raises_and_leaves_no_file(tmp_path, server, algo):
    server.files = {"/f.bin": PAYLOAD}
    dest, wrong = tmp_path / "f.bin", "0" * (32 if algo == "md5" else 64)
    with pytest.raises(DataError) as err:
        datasets.download(server.url("/f.bin"), dest, progress=False, **{f"expected_{algo}": wrong})
    actual = hashlib.new(algo, PAYLOAD).hexdigest()
    assert server.url("/f.bin") in str(err.value)
    assert wrong in str(err.value) and actual in str(err.value)
    assert "run the command again" in str(err.value)
    assert not dest.exists() and not Path(f"{dest}.part").exists()


def test_wrong_size_is_refused_and_missing_checksum_warns(tmp_path, server):
    server.files = {"/f.bin": PAYLOAD}
    with pytest.raises(DataError, match=f"expected {len(PAYLOAD) + 1} bytes"):
        datasets.download(server.url("/f.bin"), tmp_path / "a", expected_size=len(PAYLOAD) + 1, progress=False)
    with pytest.warns(UnverifiedDownloadWarning, match="no published checksum: verified by size"):
        datasets.download(server.url("/f.bin"), tmp_path / "b", expected_size=len(PAYLOAD), progress=False)
    with pytest.warns(UnverifiedDownloadWarning, match="no published checksum: not verified"):
        datasets.download(server.url("/f.bin"), tmp_path / "c", progress=False)
    assert (tmp_path / "c").read_bytes() == PAYLOAD


def test_network_errors_name_the_url(tmp_path, server):
    with pytest.raises(DataError, match=r"/missing\.bin.*404"):
        datasets.download(server.url("/missing.bin"), tmp_path / "m", progress=False)
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/f.bin"
    with pytest.raises(DataError, match=re.escape(url) + ".*run the same command again"):
        datasets.download(url, tmp_path / "n", progress=False, timeout=5)


def test_zip_member_escaping_the_folder_is_refused(tmp_path, server, register):
    evil = _zip({"pack/ok.csv": b"a,b\n", "pack/../../evil.txt": b"owned"})
    server.files = {"/evil.zip": evil}
    register(
        _spec(
            "t-evil", RemoteFile(server.url("/evil.zip"), "evil.zip", md5=_md5(evil), extract=True, strip_components=1)
        )
    )
    with pytest.raises(DataError, match=r"evil\.txt.*unsafe"):
        datasets.get("t-evil", to=tmp_path / "data", progress=False)
    assert not list(tmp_path.rglob("evil.txt")) and not list(tmp_path.rglob("ok.csv"))
    assert not (tmp_path / "data" / "t-evil" / MARKER).exists()


def test_tar_extraction_strips_and_refuses_links_and_escapes(tmp_path):
    def tar(path: Path, *members: tarfile.TarInfo) -> Path:
        with tarfile.open(path, "w:gz") as tf:
            for info in members:
                data = b"x" * info.size
                tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
        return path

    good = tarfile.TarInfo("top/meta/a.csv")
    good.size = 3
    datasets._extract(tar(tmp_path / "good.tgz", good), tmp_path / "out", strip_components=1)
    assert (tmp_path / "out" / "meta" / "a.csv").read_bytes() == b"xxx"

    escape = tarfile.TarInfo("../escape.txt")
    link = tarfile.TarInfo("top/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for bad in (escape, link):
        with pytest.raises(DataError, match="unsafe"):
            datasets._extract(tar(tmp_path / "bad.tgz", bad), tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out2").exists()


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(ParameterError, match="Did you mean 'esc50'") as err:
        datasets.get_spec("esc5")
    assert isinstance(err.value, ValueError)
    assert "esc10" in str(err.value) and "fsdkaggle2018" in str(err.value)
    with pytest.raises(ParameterError, match="Did you mean 'fsdkaggle2018'"):
        datasets.get("fsdkagle2018")


def test_registry_refuses_duplicates_and_bad_files(register):
    register(_spec("t-dup", RemoteFile("https://example.org/a.zip", "a.zip")))
    assert "t-dup" in datasets.list_datasets()
    with pytest.raises(ParameterError, match="already registered"):
        datasets.register_dataset(_spec("t-dup", RemoteFile("https://example.org/b", "b")))
    with pytest.raises(ParameterError, match="md5"):
        RemoteFile("https://example.org/a", "a", md5="abc")
    with pytest.raises(ParameterError, match="subdir"):
        RemoteFile("https://example.org/a", "a", subdir="../out")


def test_local_copy_is_used_without_network(data_root, tmp_path, monkeypatch):
    # any network access would now fail: the proxies point at a port nobody listens on
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    folder = datasets.get("esc50", to=tmp_path / "dl", local_copy=data_root, progress=False)
    assert folder == data_root / "esc50"
    assert (folder / "meta" / "esc50.csv").is_file()
    monkeypatch.setenv("SOUNDTAG_DATA", str(data_root))
    assert datasets.get("fsdkaggle2018", to=tmp_path / "dl") == data_root / "fsdkaggle2018"
    assert not (tmp_path / "dl").exists()  # nothing copied, nothing downloaded


def test_missing_local_copy_falls_back_to_download(tmp_path, server, register, archive):
    server.files = {"/pack.zip": archive}
    register(
        _spec(
            "t-fallback",
            RemoteFile(server.url("/pack.zip"), "pack.zip", md5=_md5(archive), extract=True, strip_components=1),
            local_subdir="t-fallback",
        )
    )
    (tmp_path / "copies").mkdir()
    folder = datasets.get("t-fallback", to=tmp_path / "dl", local_copy=tmp_path / "copies", progress=False)
    assert folder == tmp_path / "dl" / "t-fallback" and len(server.log) == 1
    (tmp_path / "copies" / "t-fallback").mkdir()
    assert datasets.get("t-fallback", local_copy=tmp_path / "copies") == (tmp_path / "copies" / "t-fallback")


def test_builtin_specs_have_https_urls_and_well_formed_checksums():
    assert {"esc50", "esc10", "fsdkaggle2018"} <= set(datasets.list_datasets())
    for name in ("esc50", "esc10", "fsdkaggle2018"):
        spec = datasets.get_spec(name)
        assert spec.layout == spec.local_subdir == name
        assert spec.homepage.startswith("https://") and spec.files
        for f in spec.files:
            assert f.url.startswith("https://"), f.url
            assert f.md5 is None or re.fullmatch(r"[0-9a-f]{32}", f.md5), f.md5
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256), f.sha256
    fsd = datasets.get_spec("fsdkaggle2018")
    assert {f.filename for f in fsd.files} == {
        f"FSDKaggle2018.{p}.zip" for p in ("audio_train", "audio_test", "meta", "doc")
    }
    assert fsd.copies == (("train_post_competition.csv", "train.csv"),)
    assert all(f.md5 and f.url.startswith("https://zenodo.org/records/2552860/") for f in fsd.files)
    for name in ("esc50", "esc10"):  # no checksum is published for GitHub branch archives
        (f,) = datasets.get_spec(name).files
        assert "github.com/karolpiczak/" in f.url
        assert f.md5 is None and f.verification.startswith("no published checksum")


# --- progress bar and tarfile's data filter -------------------------------------------------


def test_download_progress_counts_the_resumed_bytes_and_is_silent_when_off(tmp_path, server, capsys):
    server.files = {"/f.bin": PAYLOAD}
    dest = tmp_path / "f.bin"
    Path(f"{dest}.part").write_bytes(PAYLOAD[:50_000])
    datasets.download(server.url("/f.bin"), dest, expected_md5=_md5(PAYLOAD), progress=True)
    assert dest.read_bytes() == PAYLOAD and server.log[-1]["status"] == 206
    out = capsys.readouterr().out
    # rich's bar, drawn once at the end on a non-terminal: 50 kB resumed + 150 kB received
    assert "f.bin" in out and "200.0/200.0 kB" in out, out
    datasets.download(server.url("/f.bin"), tmp_path / "g.bin", expected_md5=_md5(PAYLOAD), progress=False)
    assert capsys.readouterr().out == ""


def test_tar_extraction_goes_through_the_data_filter(tmp_path):
    """Members that pass our checks are unpacked by tarfile with filter="data": a set-uid,
    world-writable file loses those bits. Links and special files never reach the filter."""
    payload = b"#!/bin/sh\n"
    suid = tarfile.TarInfo("top/bin/run.sh")
    suid.size, suid.mode = len(payload), 0o6777
    path = tmp_path / "modes.tar"
    with tarfile.open(path, "w") as tf:
        tf.addfile(suid, io.BytesIO(payload))
    datasets._extract(path, tmp_path / "out", strip_components=1)
    out = tmp_path / "out" / "bin" / "run.sh"
    assert out.read_bytes() == payload
    assert out.stat().st_mode & 0o7777 == 0o755  # no set-uid/set-gid, no group/other write

    # A hard link to a member inside the folder passes tarfile's data filter but not our
    # checks (as a symlink does not, above); a FIFO is refused by both. Neither writes anything.
    for kind in (tarfile.LNKTYPE, tarfile.FIFOTYPE):
        first = tarfile.TarInfo("top/a.txt")
        first.size = 1
        odd = tarfile.TarInfo("top/b")
        odd.type, odd.linkname = kind, "top/a.txt" if kind == tarfile.LNKTYPE else ""
        bad = tmp_path / f"bad{kind!r}.tar"
        with tarfile.open(bad, "w") as tf:
            tf.addfile(first, io.BytesIO(b"a"))
            tf.addfile(odd)
        with pytest.raises(DataError, match="'top/b' is a link or special file"):
            datasets._extract(bad, tmp_path / "out3", strip_components=1)
        assert not (tmp_path / "out3").exists()
