"""The review page: a local web app to listen to suspects and blacklist, keep or relabel them.

Routes (nothing else is served; any other path is a 404)::

    GET  /                                   the page (static/index.html, app.js, app.css)
    GET  /api/state                          suspects, labels, reasons, decisions, progress
    GET  /api/clips/{clip_id}/info           one clip with its top predictions and neighbours
    GET  /api/clips/{clip_id}/audio          the clip decoded and sent as 16-bit WAV
    GET  /api/clips/{clip_id}/spectrogram.png  its log-mel, with the run's recipe
    POST /api/decisions                      {clip_id, decision, label?, reason?}
    POST /api/undo                           remove the latest decision of this round

A clip is found by its id in the run's manifest, never by a path from the request: an id that
is not in the manifest is a 404 before any file is opened, whatever ``..``, ``%2F`` or absolute
path it holds. A decision for an unknown clip or label is a 422 and writes nothing. The server
binds to 127.0.0.1 only and answers only requests addressed to that host (a web page elsewhere
cannot reach it through DNS rebinding).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import socket
import threading
from importlib import resources
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from soundtag.cleaning.decisions import DecisionBook
from soundtag.cleaning.suspects import find_suspects, read_suspects, write_suspects
from soundtag.errors import DataError, ParameterError
from soundtag.inference.blended import open_run
from soundtag.manifest.clip_lists import MAX_REASON

HOST = "127.0.0.1"
NEIGHBOURS = 4
SPECTROGRAM_SECONDS = 60.0  # longer clips show their first minute: a wider image is not readable
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
# The page needs nothing from elsewhere (the machine may be offline) and runs no inline script.
CSP = (
    "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'"
)


class DecisionIn(BaseModel):
    """The body of ``POST /api/decisions``; anything else in it is a 422."""

    model_config = ConfigDict(extra="forbid")
    clip_id: str
    decision: Literal["blacklist", "keep", "relabel"]
    label: str | None = None
    reason: str = Field("", max_length=MAX_REASON)


def read_wav(path: str | Path) -> bytes:
    """Decode any supported file and encode it as a 16-bit PCM WAV in memory (plays in every browser).

    Every channel at the file's own rate; a file that cannot be decoded raises
    :class:`~soundtag.errors.AudioError` naming it (see :func:`soundtag.audio.decode`).
    """
    import soundfile as sf

    from soundtag.audio import decode

    data, rate, _ = decode(path)
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.nan_to_num(data), -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def spectrogram_png(path: str | Path, recipe) -> bytes:
    """The clip's log-mel with the recipe's settings as a PNG: one pixel per frame and mel band."""
    from matplotlib import image

    from soundtag import audio
    from soundtag.features.melspec import recipe_log_mel

    # Neither trimmed nor cropped, so the picture lines up with what the audio player plays.
    wav = audio.load(
        path, sample_rate=recipe.audio.sample_rate, max_duration=min(recipe.audio.max_duration, SPECTROGRAM_SECONDS)
    )
    samples = wav.samples if wav.samples.size else np.zeros(recipe.features.n_fft, dtype=np.float32)
    spec = recipe_log_mel(samples, recipe)
    top = float(spec.max())
    if top - float(spec.min()) < 1e-3:  # flat (a silent clip): draw it black, the bottom of the scale
        top += 80.0
    buf = io.BytesIO()
    image.imsave(buf, spec, cmap="magma", vmin=top - 80.0, vmax=top, origin="lower", format="png")
    return buf.getvalue()


def _num(x) -> float | None:
    """A JSON-safe number: NaN and infinities become None."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class ReviewData:
    """What the page shows of one run: its clips, predictions, suspects and decisions."""

    def __init__(
        self,
        run_dir: str | Path,
        lists_dir: str | Path,
        *,
        suspects: pd.DataFrame | None = None,
        neighbours: int = NEIGHBOURS,
    ):
        run = open_run(run_dir).require_complete()
        self.run_dir = run.path
        oof = run.out_of_fold()
        self.manifest, self.probs, self.folds, self.in_training = oof.manifest, oof.probs, oof.folds, oof.in_training
        self.recipe = run.recipe()
        path = run.suspects_csv
        if suspects is None:
            if not path.is_file():
                write_suspects(find_suspects(self.run_dir), path)
            suspects = read_suspects(path)
        self.row = {c.id: i for i, c in enumerate(self.manifest)}
        unknown = [c for c in suspects["clip_id"] if c not in self.row]
        if unknown:
            raise DataError(
                f"{path}: {len(unknown)} clip(s) are not in the run "
                f"(first: {unknown[0]!r}); run `soundtag suspects {self.run_dir}` again"
            )
        self.suspects = suspects.reset_index(drop=True)
        self.records = {r["clip_id"]: r for r in self.suspects.to_dict("records")}
        self.n_neighbours = neighbours
        self.book = DecisionBook(lists_dir, clip_ids=self.manifest.ids, labels=self.manifest.labels)
        self.round = self.book.start_round(self.run_dir)
        self.neighbours = self._neighbours(neighbours)

    def _neighbours(self, k: int) -> dict[str, list[str]]:
        """Per label, the ``k + 1`` clips the models are surest of (suspects last): typical examples."""
        out = {}
        suspect = set(self.suspects["clip_id"])
        for j, lab in enumerate(self.manifest.labels):
            rows = [i for i, c in enumerate(self.manifest) if lab in c.labels]
            rows.sort(key=lambda i: (self.manifest[i].id in suspect, -self.probs[i, j]))
            out[lab] = [self.manifest[i].id for i in rows[: k + 1]]
        return out

    # --- JSON views ----------------------------------------------------------------------
    def progress(self) -> dict:
        latest = self.book.latest()
        reviewed = sum(c in latest for c in self.suspects["clip_id"])
        return {"reviewed": reviewed, "total": len(self.suspects), "round": self.round}

    def decision_of(self, clip_id: str, latest: dict | None = None) -> dict | None:
        d = (self.book.latest() if latest is None else latest).get(clip_id)
        return None if d is None else d.to_dict()

    def clip(self, clip_id: str, latest: dict | None = None) -> dict:
        """A clip as the page shows it: labels, top predictions, finder results, decision.

        ``latest`` is :meth:`DecisionBook.latest`, passed in when many clips are shown at once.
        """
        i = self.row[clip_id]
        c = self.manifest[i]
        order = np.argsort(-self.probs[i], kind="stable")[:3]
        out = {
            "clip_id": c.id,
            "labels": list(c.labels),
            "verified": c.manually_verified,
            "fold": int(self.folds[i]),
            "blacklisted": bool(not self.in_training[i]),
            "preds": [[self.manifest.labels[j], round(float(self.probs[i, j]), 4)] for j in order],
            "decision": self.decision_of(c.id, latest),
            "suspect": c.id in self.records,
        }
        if c.id in self.records:
            s = self.records[c.id]
            out.update(
                rank=int(s["rank"]),
                score=_num(s["score"]),
                quality=_num(s.get("label_quality")),
                reasons=[r for r in str(s["reasons"]).split(";") if r],
                peak_db=_num(s.get("peak_db")),
                sound_s=_num(s.get("sound_s")),
                duplicate_of=[d for d in str(s.get("duplicate_of", "")).split(";") if d],
            )
        return out

    def state(self) -> dict:
        self.book.refresh()  # `soundtag clean --auto` may have written meanwhile
        latest = self.book.latest()
        reasons = sorted({r for rs in self.suspects["reasons"] for r in str(rs).split(";") if r})
        return {
            "run": str(self.run_dir),
            "lists": str(self.book.folder),
            "labels": list(self.manifest.labels),
            "multilabel": self.manifest.multilabel,
            "reasons": reasons,
            "suspects": [self.clip(c, latest) for c in self.suspects["clip_id"]],
            "progress": self.progress(),
        }

    def info(self, clip_id: str) -> dict:
        """A clip with typical clips of its label and of its top prediction, to compare by ear."""
        latest = self.book.latest()
        out = self.clip(clip_id, latest)

        def examples(label):
            ids = [c for c in self.neighbours[label] if c != clip_id][: self.n_neighbours]
            return {"label": label, "clips": [self.clip(c, latest) for c in ids]}

        groups = [examples(lab) for lab in out["labels"]]
        top = out["preds"][0][0]
        if top not in out["labels"]:
            groups.append(examples(top))
        out["neighbours"] = groups
        return out


# A decision is a few hundred bytes (a reason is at most MAX_REASON characters); nothing the
# page sends comes near this, and no request can make the server hold more.
MAX_BODY_BYTES = 64 * 1024


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before the app runs.

    A ``Content-Length`` over the limit is refused without reading the body; a body without
    one (chunked) is read up to the limit, then refused, or handed to the app whole. The app
    never sees a body larger than ``limit``, and no more than ``limit`` bytes and one chunk
    are ever held in memory.

    Parameters
    ----------
    app : the ASGI app to protect
    limit : the largest body accepted, in bytes
    """

    def __init__(self, app, *, limit: int = MAX_BODY_BYTES):
        if limit < 0:
            raise ParameterError(f"limit={limit} must be >= 0 bytes")
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = [v for k, v in scope["headers"] if k.lower() == b"content-length"]
        if declared:
            try:
                size = int(declared[0])
            except ValueError:
                return await self._refuse(scope, receive, send, 400, f"Content-Length {declared[0]!r} is not a number")
            if size > self.limit:
                return await self._refuse(scope, receive, send, 413, self._too_large(f" of {size} bytes"))
        chunks, size = [], 0
        while True:  # read the whole body first (it is small), so the app gets it in one piece
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send, 413, self._too_large(""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:  # later calls wait for the disconnect, as the server's receive does
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self, size: str) -> str:
        return f"the request body{size} is over the limit of {self.limit} bytes"

    @staticmethod
    async def _refuse(scope, receive, send, status: int, detail: str) -> None:
        from starlette.responses import JSONResponse

        # Connection: close, since the rest of an unread body would be taken for the next request.
        await JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})(
            scope, receive, send
        )


def create_app(
    run_dir: str | Path,
    lists_dir: str | Path,
    *,
    suspects: pd.DataFrame | None = None,
    allowed_hosts: tuple[str, ...] = (HOST, "localhost"),
    max_body: int = MAX_BODY_BYTES,
):
    """The review web app of a finished run (a FastAPI application; serve it with :func:`serve`).

    Parameters
    ----------
    run_dir : a finished run; its ``suspects.csv`` is read, or made when missing
    lists_dir : where decisions are written (``blacklist.csv``, ``relabel.csv``, ``decisions.csv``)
    suspects : a suspects table to show instead of the run's ``suspects.csv``
    allowed_hosts : the Host header values answered
    max_body : the largest request body accepted, in bytes; a larger one is a 413 (see
        :class:`BodyLimit`)
    """
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, Response
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    data = ReviewData(run_dir, lists_dir, suspects=suspects)
    # Read once: the server opens no file on a request for a page, whatever the path says.
    pages = {
        route: (resources.files("soundtag.cleaning").joinpath("static", name).read_bytes(), media)
        for route, (name, media) in STATIC.items()
    }
    app = FastAPI(title="soundtag review", docs_url=None, redoc_url=None, openapi_url=None)
    # The last added runs first: the Host is checked before any body is read.
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.review = data

    def page(route: str):
        body, media = pages[route]
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}

        def endpoint():
            return Response(body, media_type=media, headers=headers)

        return endpoint

    for route in pages:
        app.add_api_route(route, page(route), methods=["GET"], include_in_schema=False)

    def lookup(clip_id: str):
        if clip_id not in data.row:  # a dictionary lookup: the file system is never asked
            raise HTTPException(404, f"no clip {clip_id!r} in this run")
        return data.manifest[data.row[clip_id]]

    @app.get("/api/state")
    def state():
        return JSONResponse(data.state(), headers={"Cache-Control": "no-store"})

    @app.get("/api/clips/{clip_id:path}/info")
    def info(clip_id: str):
        lookup(clip_id)
        return data.info(clip_id)

    @app.get("/api/clips/{clip_id:path}/audio")
    def clip_audio(clip_id: str):
        clip = lookup(clip_id)
        try:
            body = read_wav(clip.path)
        except Exception as exc:  # noqa: BLE001 - the page shows the message instead of a player
            raise HTTPException(500, f"cannot decode {clip_id!r}: {exc}") from exc
        return Response(body, media_type="audio/wav", headers={"Cache-Control": "private, max-age=3600"})

    @functools.lru_cache(maxsize=512)
    def cached_png(clip_id: str) -> bytes:
        return spectrogram_png(data.manifest[data.row[clip_id]].path, data.recipe)

    @app.get("/api/clips/{clip_id:path}/spectrogram.png")
    def spectrogram(clip_id: str):
        lookup(clip_id)
        try:
            body = cached_png(clip_id)
        except Exception as exc:  # noqa: BLE001
            raise HTTPException(500, f"cannot draw {clip_id!r}: {exc}") from exc
        return Response(body, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/decisions")
    def decide(body: DecisionIn):
        reason = body.reason
        if not reason and body.clip_id in data.records:  # the finders' reasons, when the person gave none
            reason = str(data.records[body.clip_id]["reasons"])
        try:
            d = data.book.decide(body.clip_id, body.decision, label=body.label, reason=reason)
        except ParameterError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"decision": d.to_dict(), "progress": data.progress()}

    @app.post("/api/undo")
    def undo():
        removed = data.book.undo(round=data.round)
        if removed is None:
            raise HTTPException(409, f"nothing to undo in round {data.round}")
        return {"undone": removed.to_dict(), "decision": data.decision_of(removed.clip_id), "progress": data.progress()}

    return app


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port(port: int) -> int:
    """``port``, or a free one for 0; raise ParameterError when it is taken or out of range."""
    if not 0 <= port <= 65535:
        raise ParameterError(f"port={port} must be between 1 and 65535 (0: any free port)")
    if port == 0:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise ParameterError(
                f"port {port} on {HOST} is in use ({exc.strerror}); pass --port with another "
                "number, or 0 for any free port"
            ) from None
    return port


def serve(app, *, port: int = 8765) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until Ctrl-C (the port must be free; see :func:`check_port`)."""
    import uvicorn

    uvicorn.run(app, host=HOST, port=port, log_level="warning")


@contextlib.contextmanager
def running(app, *, port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` from a background thread while the block runs; yields its address.

    For notebooks and tests::

        with running(create_app("runs/esc10", "cleaning/esc10")) as url:
            ...  # open url in a browser
    """
    import time

    import uvicorn

    port = check_port(port)
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"review-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DataError(f"the review server did not start on {HOST}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{HOST}:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout)
