"""`renalflow web`: a page where a urologist uploads one patient's CT series and sees
the vote, the share of malignant slices against the 51% line, the probability of every
slice along z, and heat maps of the slices that decided the vote.

Uploads are converted with the preprocessing the model was trained on and scored with
the same functions and thresholds as `renalflow score`, so the page and the batch
scorer give the same vote for the same series. Files land in a private folder under
the working directory and are removed after scoring unless the server keeps them.
"""

import asyncio
import base64
import hmac
import io
import json
import os
import shutil
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from renalflow.flows.web_page import render_page
from renalflow.tasks.config import Label, Profile
from renalflow.tasks.convert import convert_file
from renalflow.tasks.errors import InputError
from renalflow.tasks.explain import heatmaps, write_overlay
from renalflow.tasks.inference import cached_model
from renalflow.tasks.ingest import FILE_ERRORS, as_reject
from renalflow.tasks.model import predict_probabilities
from renalflow.tasks.model_dir import read_model_info
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.upload import UnsafeUpload, UploadLimits, UploadTooLarge, take_upload
from renalflow.tasks.vote import deciding_slices, malignant_images, vote

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
TOKEN_ENV = "RENALFLOW_WEB_TOKEN"
TOKEN_COOKIE = "renalflow_token"
RETRY_AFTER_S = 10
"""Our choice: what a busy page asks the browser to wait before trying again."""


@dataclass(frozen=True)
class WebConfig:
    model_dir: str
    workdir: str
    max_upload_mb: int = 500
    max_files: int = 3000
    keep_uploads: bool = False
    score: ScoreConfig = field(default_factory=ScoreConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required on every request when set
    allowed_hosts: tuple[str, ...] = ()  # Host names the page answers to besides its own
    max_concurrent: int = 2  # uploads scored at once; more get 503 with Retry-After

    @property
    def limits(self) -> UploadLimits:
        return UploadLimits(max_bytes=self.max_upload_mb * 2**20, max_files=self.max_files)

    @property
    def hosts(self) -> frozenset[str]:
        """Host header values (without port) the page answers to."""
        own = {self.host} | (set(LOOPBACK) if self.host in LOOPBACK else set())
        return frozenset(own | set(self.allowed_hosts))


def check_exposure(config: WebConfig) -> None:
    """Refuse to listen beyond this machine without a token (one line, before start)."""
    if config.host not in LOOPBACK and not config.token:
        raise InputError(
            f"--host {config.host} puts the page on the network: give it a token with "
            f"--token-file FILE or {TOKEN_ENV} (every request must then carry it), or keep "
            "the default 127.0.0.1"
        )


def read_token(token_file: str | None) -> str | None:
    """The page's token from --token-file or RENALFLOW_WEB_TOKEN (never printed)."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise InputError(f"cannot read the token file {token_file}: {err.strerror}") from err
        if len(token) < 16:
            raise InputError(f"the token in {token_file} is shorter than 16 characters")
        return token
    return os.environ.get(TOKEN_ENV) or None


def score_upload(paths: list[Path], config: WebConfig) -> dict[str, Any]:
    """Convert, score and vote one upload; a JSON-ready result for the page."""
    info = read_model_info(config.model_dir)
    converted, rejects = [], []
    for path in paths:
        try:
            converted.append((path, convert_file(str(path), info.preprocess, str(path))))
        except FILE_ERRORS as err:  # the file's own defect: a verdict, never a failed upload
            reject = as_reject(str(path), err)
            rejects.append(
                {"file": path.name.split("-", 1)[-1], "code": reject.code.value,
                 "reason": reject.reason}
            )  # fmt: skip
    if not converted:
        reasons = Counter(r["code"] for r in rejects)
        summary = ", ".join(f"{n} {code}" for code, n in reasons.most_common())
        raise InputError(
            "none of the uploaded files is a usable axial CT slice "
            f"({summary or 'no files'}); upload the DICOM files of one CT series"
        )
    patients = {c.header.patient_id for _, c in converted}
    if len(patients) > 1:
        raise InputError(
            f"the upload holds slices of {len(patients)} patients; upload one patient at a time"
        )
    # One slice per SOPInstanceUID, as in the slice store.
    unique = {c.header.sop_instance_uid: c for _, c in converted}
    slices = sorted(unique.values(), key=lambda c: (c.header.z is None, c.header.z or 0.0))
    images = np.stack([c.pixels for c in slices])
    model = cached_model(info.model_dir, info.model_version)
    score = config.score
    probabilities = predict_probabilities(model, images, score.batch_size)
    outcome = vote(probabilities, score.image_threshold, score.vote_threshold)
    decided = outcome.vote.value
    malignant = malignant_images(probabilities, score.image_threshold)
    picks = deciding_slices(probabilities, decided, score.explain_per_side, score.image_threshold)
    maps, method = heatmaps(model, images[picks], decided)
    pictures = []
    for i, heat in zip(picks, maps, strict=True):
        buffer = io.BytesIO()
        header = slices[i].header
        caption = f"P(malignant) {probabilities[i]:.2f}"
        write_overlay(
            images[i], heat, caption, buffer,
            phase=str(header.phase), z=header.z, method=method, target=decided,
        )  # fmt: skip
        pictures.append(
            {
                "probability": float(probabilities[i]),
                "z": slices[i].header.z,
                "side": "winning" if malignant[i] == (decided == Label.MALIGNANT) else "losing",
                "png": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
            }
        )  # fmt: skip
    return {
        "vote": decided,
        "n_images": outcome.n_images,
        "n_malignant": outcome.n_malignant,
        "fraction_malignant": outcome.fraction_malignant,
        "vote_threshold": score.vote_threshold,
        "image_threshold": score.image_threshold,
        "slices": [
            {"z": c.header.z, "phase": str(c.header.phase), "probability": float(p)}
            for c, p in zip(slices, probabilities, strict=True)
        ],
        "heatmaps": pictures,
        "heatmap_method": method,
        "rejects": rejects,
        "model_version": info.model_version,
        "model_profile": info.profile,
    }


def create_app(config: WebConfig) -> Any:
    """The FastAPI application (pages and API); nothing is loaded until it is asked."""
    # FastAPI comes with the `web` extra: only `renalflow web` needs it.
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    check_exposure(config)
    app = FastAPI(title="renalflow", docs_url=None, redoc_url=None)
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = read_model_info(config.model_dir)  # refuse to start without a model
    gate = asyncio.Semaphore(config.max_concurrent)
    app.state.gate = gate

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        note = "" if info.profile == Profile.PAPER else "cpu-demo model: not the paper's network."
        model = f"{info.model_version} ({info.profile})"
        return render_page(model, note, config.score.vote_threshold)

    @app.post("/api/score")
    async def score(request: Request) -> Any:
        if gate.locked():
            return JSONResponse(
                {"error": "the page is scoring other uploads; try again in a moment"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        async with gate:
            folder = Path(tempfile.mkdtemp(prefix=f"upload-{uuid.uuid4().hex[:8]}-", dir=workdir))
            form = None
            try:
                # Starlette spools each part to a temporary file as it arrives (the body
                # size is bounded by BodyLimit); the copy below stops at the limits.
                form = await request.form(max_files=config.max_files, max_fields=16)
                files = [
                    (f.filename or "file", f.file)
                    for f in form.getlist("files")
                    if isinstance(f, UploadFile)
                ]
                paths = await run_in_threadpool(take_upload, files, folder, config.limits)
                result = await run_in_threadpool(score_upload, paths, config)
                result["kept_in"] = str(folder) if config.keep_uploads else None
                return result
            except UploadTooLarge as err:
                return JSONResponse({"error": str(err)}, status_code=413)
            except UnsafeUpload as err:
                return JSONResponse({"error": str(err)}, status_code=400)
            except InputError as err:
                return JSONResponse({"error": str(err)}, status_code=422)
            finally:
                if form is not None:
                    await form.close()
                if not config.keep_uploads:
                    shutil.rmtree(folder, ignore_errors=True)

    guarded = Guard(app, config)
    return BodyLimit(guarded, config.limits.max_bytes + _MULTIPART_SLACK)


_MULTIPART_SLACK = 1 << 20  # boundaries and part headers of up to 3,000 files


async def _reply(send: Any, status: int, error: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 as soon as its
    declared length or the bytes received so far pass the limit; the rest is never
    read, and nothing of it reaches the application."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        message = f"the upload is larger than {self.limit // 2**20} MB; send one series at a time"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _reply(send, 413, message)
            return
        received, refused = 0, False

        async def limited() -> Any:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.limit:
                    refused = True
                    await _reply(send, 413, message)
                    return {"type": "http.disconnect"}
            return event

        async def quiet_after_refusal(event: Any) -> None:
            if not refused:
                await send(event)

        from starlette.requests import ClientDisconnect

        try:
            await self.app(scope, limited, quiet_after_refusal)
        except ClientDisconnect:
            if not refused:
                raise


class Guard:
    """ASGI middleware: the Host header must name this page, a POST must come from its
    own origin, and with a token every request must carry it (Authorization: Bearer,
    or the cookie that opening /?token=... sets)."""

    def __init__(self, app: Any, config: WebConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = _hostname(headers.get("host", ""))
        if host not in self.config.hosts:
            await _reply(send, 400, f"this page does not answer to the host {host!r}")
            return
        origin = headers.get("origin")
        if scope["method"] == "POST" and origin and _hostname(urlsplit(origin).netloc) != host:
            await _reply(send, 403, "uploads are only accepted from the page itself")
            return
        token = self.config.token
        if token:
            query = parse_qs(scope.get("query_string", b"").decode())
            given = _bearer(headers.get("authorization", "")) or _cookie(headers, TOKEN_COOKIE)
            if scope["path"] == "/" and query.get("token"):
                if not hmac.compare_digest(query["token"][0], token):
                    await _reply(send, 401, "wrong token")
                    return
                cookie = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
                redirect = [(b"location", b"/"), (b"set-cookie", cookie.encode())]
                await send({"type": "http.response.start", "status": 303, "headers": redirect})
                await send({"type": "http.response.body", "body": b""})
                return
            if not given or not hmac.compare_digest(given, token):
                await _reply(
                    send,
                    401,
                    "this page needs its token: open it once as /?token=TOKEN, or send "
                    "Authorization: Bearer TOKEN",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
        await self.app(scope, receive, send)


def _hostname(netloc: str) -> str:
    """`host:port` or `[::1]:port` -> the host alone, lower case."""
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")].lower()
    return netloc.rsplit(":", 1)[0].lower() if netloc.count(":") == 1 else netloc.lower()


def _bearer(value: str) -> str | None:
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials else None


def _cookie(headers: dict[str, str], name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
