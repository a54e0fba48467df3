"""The review page: its API (clips by id only, 422 for bad decisions, concurrency) and a real
browser (Playwright driving Debian's chromium) on the shared tiny ESC-10 run."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import numpy as np
import pytest
import soundfile as sf

from soundtag.cleaning import review
from soundtag.cleaning.decisions import LOG_COLUMNS
from soundtag.cleaning.review import create_app, running
from soundtag.manifest import Manifest
from soundtag.manifest.clip_lists import BLACKLIST_COLUMNS, RELABEL_COLUMNS
from soundtag.recipe import load_recipe

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def run_dir(dirty_run) -> Path:
    return dirty_run


@pytest.fixture(scope="module")
def manifest(run_dir) -> Manifest:
    return Manifest.from_jsonl(run_dir / "manifest.jsonl")


@pytest.fixture
def lists(tmp_path) -> Path:
    return tmp_path / "lists"


@pytest.fixture
def server(run_dir, lists):
    """A live review server on a free port of 127.0.0.1 (a thread of this process)."""
    app = create_app(run_dir, lists)
    with running(app) as url:
        yield app, url


def clip_url(url: str, clip_id: str, what: str) -> str:
    return f"{url}api/clips/{quote(clip_id, safe='')}/{what}"


def raw_get(url: str, target: str) -> int:
    """Send ``GET target`` byte for byte (no client normalises ``..`` or re-encodes); return the status."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


# --- serving clips ---------------------------------------------------------------------------


@pytest.mark.slow
def test_audio_is_the_clip_decoded_to_wav(server, manifest):
    _, url = server
    for clip_id in (manifest.ids[0], "audio/quiet.wav"):  # an Ogg Vorbis clip and a WAV
        r = httpx.get(clip_url(url, clip_id, "audio"))
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        served, rate = sf.read(io.BytesIO(r.content), dtype="float32")
        info = sf.info(io.BytesIO(r.content))
        original, native = sf.read(manifest[manifest.ids.index(clip_id)].path, dtype="float32")
        assert (info.format, info.subtype, rate) == ("WAV", "PCM_16", native)
        assert served.shape == original.shape
        assert np.max(np.abs(served - np.clip(original, -1, 1))) <= 1.01 / 32768  # 16-bit rounding only


@pytest.mark.slow
def test_spectrogram_is_the_recipes_log_mel_as_png(server, run_dir, manifest):
    from PIL import Image

    _, url = server
    recipe = load_recipe(run_dir / "recipe.yaml")
    for clip_id in (manifest.ids[0], "audio/silent.wav"):
        r = httpx.get(clip_url(url, clip_id, "spectrogram.png"))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(r.content))
        samples = sf.info(manifest[manifest.ids.index(clip_id)].path).duration * recipe.audio.sample_rate
        # One pixel per mel band (32 in this run) and per frame (centred frames: 1 + samples // hop).
        assert image.size == (1 + round(samples) // recipe.features.hop_length, recipe.features.n_mels)


@pytest.mark.slow
def test_state_and_clip_info(server, run_dir):
    app, url = server
    state = httpx.get(f"{url}api/state").json()
    with open(run_dir / "suspects.csv", newline="") as fh:
        ranked = [r["clip_id"] for r in csv.DictReader(fh)]
    assert [s["clip_id"] for s in state["suspects"]] == ranked
    assert state["progress"] == {"reviewed": 0, "total": len(ranked), "round": 1}
    assert "silent" in state["reasons"] and "misclassified" in state["reasons"]
    first = state["suspects"][0]
    assert first["clip_id"] == "audio/silent.wav" and first["peak_db"] is None  # -inf dBFS is sent as null
    info = httpx.get(clip_url(url, "audio/clipped.wav", "info")).json()
    own = info["neighbours"][0]
    assert own["label"] == "Rain" and len(own["clips"]) == 4
    assert all("Rain" in c["labels"] and c["clip_id"] != "audio/clipped.wav" for c in own["clips"])
    if info["preds"][0][0] != "Rain":  # a second group: typical clips of what the model heard
        assert [g["label"] for g in info["neighbours"]] == ["Rain", info["preds"][0][0]]


# --- paths outside the manifest --------------------------------------------------------------


@pytest.mark.slow
def test_paths_outside_the_manifest_are_404_and_read_nothing(server, run_dir, manifest, monkeypatch):
    _, url = server
    decoded = []
    monkeypatch.setattr(review, "read_wav", lambda path: decoded.append(path) or b"")
    monkeypatch.setattr(review, "spectrogram_png", lambda path, recipe: decoded.append(path) or b"")
    opened: list[str] = []
    watching = threading.Event()

    def audit(event, args):
        if watching.is_set() and event in ("open", "os.listdir", "os.scandir"):
            opened.append(f"{event} {args[0]}")

    sys.addaudithook(audit)  # hooks cannot be removed: this one only records while `watching` is set
    real = manifest[0]
    data_dir = Path(real.path).parent.parent
    targets = [
        "/api/clips/../../../../etc/passwd/audio",
        "/api/clips/audio/../../../../../etc/passwd/audio",
        "/api/clips/..%2F..%2F..%2Fetc%2Fpasswd/audio",
        "/api/clips/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd/audio",
        "/api/clips/%2e%2e/%2e%2e/pyproject.toml/spectrogram.png",
        "/api/clips/%252e%252e%252fetc%252fpasswd/audio",
        "/api/clips//etc/passwd/audio",
        "/api/clips/%2Fetc%2Fpasswd/audio",
        f"/api/clips/{quote(real.path, safe='')}/audio",  # a real clip's absolute path
        f"/api/clips/{quote(real.path)}/spectrogram.png",
        f"/api/clips/{quote(str(run_dir / 'manifest.jsonl'), safe='')}/audio",
        f"/api/clips/{quote('audio/../' + real.id, safe='')}/audio",  # resolves to a real clip
        f"/api/clips/{quote(real.id.upper(), safe='')}/audio",
        "/api/clips/dirty.csv/audio",  # a real file beside the audio
        f"/api/clips/{quote(str(data_dir / 'dirty.csv'), safe='')}/info",
        "/static/../../../pyproject.toml",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/static/review.py",
        "/static/",
        "/../../etc/passwd",
        "/etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/api/clips/",
        "/api/clips/audio",
    ]
    watching.set()
    try:
        statuses = {t: raw_get(url, t) for t in targets}
    finally:
        watching.clear()
    assert statuses == {t: 404 for t in targets}
    assert decoded == [] and opened == [], "nothing is read for a path outside the manifest"

    # The same client reaches a real clip by its id: the 404s above are not a broken route.
    assert raw_get(url, f"/api/clips/{quote(real.id, safe='')}/audio") == 200
    assert decoded == [real.path]


# --- decisions -------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_decisions_are_422_and_change_nothing(server, lists, manifest, read_csv_rows, snapshot):
    _, url = server
    clip = manifest.ids[0]
    before = snapshot(lists)
    bodies = [
        {"clip_id": clip + "x", "decision": "blacklist"},
        {"clip_id": manifest[0].path, "decision": "blacklist"},
        {"clip_id": "../" + clip, "decision": "keep"},
        {"clip_id": clip, "decision": "relabel", "label": "Cat"},
        {"clip_id": clip, "decision": "relabel"},
        {"clip_id": clip, "decision": "keep", "label": manifest.labels[1]},
        {"clip_id": clip, "decision": "delete"},
        {"clip_id": clip, "decision": "blacklist", "path": "/etc/passwd"},
        {"decision": "blacklist"},
        {"clip_id": clip, "decision": "blacklist", "reason": "x" * 501},
    ]
    for body in bodies:
        r = httpx.post(f"{url}api/decisions", json=body)
        assert r.status_code == 422, (body, r.text)
    r = httpx.post(
        f"{url}api/decisions",
        content=f"clip_id={clip}&decision=blacklist",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 422
    assert snapshot(lists) == before, "a refused decision writes nothing"
    assert httpx.post(f"{url}api/decisions", json={"clip_id": clip, "decision": "blacklist"}).status_code == 200
    assert [r["clip_id"] for r in read_csv_rows(lists / "blacklist.csv")[1]] == [clip]


@pytest.mark.slow
def test_decide_undo_and_resume_through_the_api(server, run_dir, lists, read_csv_rows):
    app, url = server
    suspects = httpx.get(f"{url}api/state").json()["suspects"]
    s1, s2, s3 = suspects[:3]
    other = next(lab for lab in app.state.review.manifest.labels if lab not in s2["labels"])
    post = lambda body: httpx.post(f"{url}api/decisions", json=body)  # noqa: E731
    assert post({"clip_id": s1["clip_id"], "decision": "blacklist"}).status_code == 200
    r = post({"clip_id": s2["clip_id"], "decision": "relabel", "label": other, "reason": "a person's note"})
    assert r.json()["decision"]["reason"] == "a person's note"
    assert post({"clip_id": s3["clip_id"], "decision": "keep"}).json()["progress"]["reviewed"] == 3
    blacklist = read_csv_rows(lists / "blacklist.csv")[1]
    assert [(b["clip_id"], b["reason"]) for b in blacklist] == [(s1["clip_id"], ";".join(s1["reasons"]))]
    assert [(r["clip_id"], r["label"]) for r in read_csv_rows(lists / "relabel.csv")[1]] == [(s2["clip_id"], other)]

    undone = httpx.post(f"{url}api/undo").json()
    assert undone["undone"]["clip_id"] == s3["clip_id"] and undone["decision"] is None
    assert undone["progress"]["reviewed"] == 2

    # Closing the page and the server, then opening them again, resumes the same round.
    with running(create_app(run_dir, lists)) as again:
        state = httpx.get(f"{again}api/state").json()
        decided = {s["clip_id"]: s["decision"] for s in state["suspects"] if s["decision"]}
        assert state["progress"] == {"reviewed": 2, "total": len(suspects), "round": 1}
        assert decided[s1["clip_id"]]["decision"] == "blacklist"
        assert (decided[s2["clip_id"]]["decision"], decided[s2["clip_id"]]["label"]) == ("relabel", other)
        assert httpx.post(f"{again}api/undo").json()["undone"]["clip_id"] == s2["clip_id"]
        assert httpx.post(f"{again}api/undo").json()["undone"]["clip_id"] == s1["clip_id"]
        r = httpx.post(f"{again}api/undo")
        assert r.status_code == 409 and "nothing to undo" in r.json()["detail"]
    assert read_csv_rows(lists / "blacklist.csv")[1] == [] and read_csv_rows(lists / "decisions.csv")[1] == []


@pytest.mark.slow
def test_concurrent_decisions_each_land_once_in_valid_csv(server, lists, manifest, read_csv_rows):
    _, url = server
    kinds = ["blacklist", "keep", "relabel"]
    wanted = {}
    for i, c in enumerate(manifest):
        kind = kinds[i % 3]
        label = next(lab for lab in manifest.labels if lab not in c.labels) if kind == "relabel" else None
        wanted[c.id] = (kind, label)
    start = threading.Barrier(len(wanted))
    statuses = []

    def post(clip_id, kind, label):
        body = {"clip_id": clip_id, "decision": kind, **({"label": label} if label else {})}
        with httpx.Client(timeout=60) as client:
            start.wait()
            statuses.append(client.post(f"{url}api/decisions", json=body).status_code)

    threads = [threading.Thread(target=post, args=(c, *w)) for c, w in wanted.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [200] * len(wanted)
    header, log = read_csv_rows(lists / "decisions.csv")
    assert header == LOG_COLUMNS and sorted(r["clip_id"] for r in log) == sorted(wanted)
    assert all((r["decision"], r["label"] or None) == wanted[r["clip_id"]] for r in log)
    header, rows = read_csv_rows(lists / "blacklist.csv")
    assert header == BLACKLIST_COLUMNS
    assert sorted(r["clip_id"] for r in rows) == sorted(c for c, (k, _) in wanted.items() if k == "blacklist")
    header, rows = read_csv_rows(lists / "relabel.csv")
    assert header == RELABEL_COLUMNS
    assert sorted((r["clip_id"], r["label"]) for r in rows) == sorted(
        (c, lab) for c, (k, lab) in wanted.items() if k == "relabel"
    )
    assert not [p for p in lists.iterdir() if p.name.endswith(".tmp")]


# --- a real browser --------------------------------------------------------------------------


def chromium_or_skip() -> str:
    if not Path(CHROMIUM).is_file():
        message = f"{CHROMIUM} is missing: install Debian's chromium with `make browser`"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the browser test)")
        pytest.skip(message)
    return CHROMIUM


def until(page, script: str, timeout: float = 15.0):
    """Poll ``script`` in the page until it is truthy. (Playwright's wait_for_function evaluates
    strings with eval, which the page's Content-Security-Policy forbids, as it should.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"still false after {timeout} s: {script}")


@pytest.mark.slow
def test_review_in_a_real_browser(server, lists, read_csv_rows):
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    app, url = server
    suspects = app.state.review.suspects["clip_id"].tolist()
    first, second = suspects[0], suspects[1]
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            until(page, f"document.getElementById('clip-id').textContent === {first!r}")
            assert page.inner_text("#progress") == f"0 of {len(suspects)} reviewed"
            # The audio element has loaded its clip: 5 s of metadata from this clip's URL.
            until(page, "document.getElementById('audio').readyState >= 1")
            audio = page.evaluate(
                "(() => { const a = document.getElementById('audio'); "
                "return {src: a.currentSrc, duration: a.duration, error: a.error}; })()"
            )
            assert audio["src"] == clip_url(url, first, "audio") and audio["error"] is None
            assert audio["duration"] == pytest.approx(5.0, abs=0.01)
            size = until(
                page,
                "(() => { const i = document.getElementById('spectrogram'); "
                "return i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight]; })()",
            )
            assert size[1] == 32 and size[0] > 200  # n_mels x frames of a 5 s clip
            assert page.evaluate("document.getElementById('spectrogram').getBoundingClientRect().height") > 100

            page.keyboard.press("b")
            until(page, f"document.getElementById('progress').textContent === '1 of {len(suspects)} reviewed'")
            until(page, f"document.getElementById('clip-id').textContent === {second!r}")
            assert [r["clip_id"] for r in read_csv_rows(lists / "blacklist.csv")[1]] == [first]

            page.reload()
            until(page, f"document.getElementById('progress').textContent === '1 of {len(suspects)} reviewed'")
            until(page, f"document.getElementById('clip-id').textContent === {second!r}")  # where it stopped
            page.keyboard.press("ArrowLeft")
            until(page, f"document.getElementById('clip-id').textContent === {first!r}")
            assert page.inner_text("#decision").startswith("blacklist")
            # Why, beside it: the finders' reasons, written as the decision's reason when the person gave none.
            reason = read_csv_rows(lists / "blacklist.csv")[1][0]["reason"]
            assert reason and page.inner_text("#decision-reason") == reason
            row = page.locator("#rows tr").first
            assert row.get_attribute("data-clip") == first and "blacklist" in row.inner_text()

            page.keyboard.press("u")  # undo, from the keyboard too
            until(page, f"document.getElementById('progress').textContent === '0 of {len(suspects)} reviewed'")
            assert page.inner_text("#decision") == "none" and page.inner_text("#decision-reason") == ""
        finally:
            browser.close()
    assert read_csv_rows(lists / "blacklist.csv")[1] == []
    assert errors == []


# --- request size ----------------------------------------------------------------------------


def _padded(body: dict, size: int) -> bytes:
    """``body`` as JSON padded with trailing spaces (still valid JSON) to exactly ``size`` bytes."""
    text = json.dumps(body).encode()
    assert len(text) <= size
    return text + b" " * (size - len(text))


@pytest.mark.slow
def test_request_bodies_over_the_limit_are_413_and_write_nothing(server, lists, manifest):
    from starlette.testclient import TestClient

    app, url = server
    limit = review.MAX_BODY_BYTES
    decision = {"clip_id": manifest.ids[0], "decision": "blacklist", "reason": "too big"}
    json_type = {"content-type": "application/json"}
    files = lambda: {p.name: p.read_bytes() for p in lists.iterdir() if p.is_file()}  # noqa: E731
    before = files()

    def chunks(data: bytes, size: int = 4096):  # no Content-Length: sent chunked
        for i in range(0, len(data), size):
            yield data[i : i + size]

    over = _padded(decision, limit + 1)
    r = httpx.post(f"{url}api/decisions", content=over, headers=json_type)
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == f"the request body of {limit + 1} bytes is over the limit of {limit} bytes"
    r = httpx.post(f"{url}api/decisions", content=chunks(over), headers=json_type)
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert r.status_code == 413 and "over the limit" in r.json()["detail"], r.text
    big = httpx.post(
        f"{url}api/decisions", content=chunks(b"x" * (20 * 1024 * 1024), 65536), headers=json_type, timeout=60
    )
    assert big.status_code == 413  # 20 MiB refused after 64 KiB, not read into memory
    with TestClient(app, base_url="http://127.0.0.1") as client:  # in process, the same answer
        assert client.post("/api/decisions", content=over, headers=json_type).status_code == 413
    assert files() == before, "a refused body writes nothing"

    # Exactly the limit is accepted, with a Content-Length and chunked alike; the app gets it whole.
    r = httpx.post(f"{url}api/decisions", content=_padded(decision, limit), headers=json_type)
    assert r.status_code == 200 and r.json()["decision"]["reason"] == "too big", r.text
    r = httpx.post(
        f"{url}api/decisions", content=chunks(_padded(dict(decision, decision="keep"), limit), 1000), headers=json_type
    )
    assert r.status_code == 200 and r.json()["decision"]["decision"] == "keep", r.text
    with open(lists / "decisions.csv", newline="") as fh:
        assert [row["decision"] for row in csv.DictReader(fh)] == ["blacklist", "keep"]
    assert httpx.get(f"{url}api/state").status_code == 200  # bodiless requests pass untouched


def test_ctrl_c_ends_a_review_with_every_decision_saved_and_the_retrain_command(run_dir, lists):
    """Ctrl-C is how a review ends: exit 0, the decisions' folder and the command that retrains
    (the server stops gracefully first, then raises the signal again)."""
    import signal
    import subprocess

    env = dict(os.environ, COLUMNS="400", NO_COLOR="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "soundtag.cli", "review", str(run_dir), "--port", "0", "--lists", str(lists)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line.decode())
        if "in a browser" in lines[-1]:
            break
    time.sleep(1)  # the server starts listening after it prints the address
    proc.send_signal(signal.SIGINT)
    said = "".join(lines) + proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, said[-2000:]
    assert f"every decision is saved in {lists}" in said and f"--lists {lists}` goes on" in said, said[-2000:]
    assert "then retrain: soundtag train" in said, said[-2000:]
