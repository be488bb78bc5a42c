"""`renalflow web`: a page where a urologist uploads one patient's CT series and sees
the vote, the share of malignant slices against the 51% line, the probability of every
slice along z, and heat maps of the slices that decided the vote.

HTTP wiring only: what is decided (limits, who may ask, the scoring) lives in
tasks/web.py and tasks/upload.py. Uploads are parsed as they arrive and written into a
private folder under the working directory, removed after scoring unless the server
keeps them.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers'
# annotations (Request, imported inside create_app) at run time.
import asyncio
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from renalflow.flows.web_page import render_page
from renalflow.tasks.config import Profile
from renalflow.tasks.errors import InputError
from renalflow.tasks.inference import load_selector
from renalflow.tasks.model_dir import read_model_info
from renalflow.tasks.upload import FormReceiver, UnsafeUpload, UploadTooLarge
from renalflow.tasks.web import (
    RETRY_AFTER_S,
    TOKEN_COOKIE,
    WebConfig,
    bearer,
    check_exposure,
    cookie,
    hostname,
    same_origin,
    score_upload,
    selection_rule,
    token_matches,
)

_MULTIPART_SLACK = 1 << 20  # boundaries and part headers of up to 3,000 files


def create_app(config: WebConfig) -> Any:
    """The application (page and API), wrapped in the request guards; nothing is
    loaded until it is asked."""
    # FastAPI comes with the `web` extra: only `renalflow web` needs it.
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    check_exposure(config)
    app = FastAPI(title="renalflow", docs_url=None, redoc_url=None, openapi_url=None)
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = read_model_info(config.model_dir)  # refuse to start without a model
    selector = load_selector(config.selector, info) if config.selector else None
    selection = selection_rule(selector, config.score.all_slices)
    gate = asyncio.Semaphore(config.max_concurrent)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        note = "" if info.profile == Profile.PAPER else "cpu-demo model: not the paper's network."
        model = f"{info.model_version} ({info.profile})"
        return render_page(model, note, config.score.vote_threshold, selection)

    @app.post("/api/score")
    async def score(request: Request) -> Any:
        if gate.locked():
            return JSONResponse(
                {"error": "the page is busy with other uploads; try again in a moment"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        async with gate:
            folder = Path(tempfile.mkdtemp(prefix=f"upload-{uuid.uuid4().hex[:8]}-", dir=workdir))
            receiver = None
            try:
                content_type = request.headers.get("content-type", "")
                receiver = FormReceiver(content_type, folder, config.limits)
                async for chunk in request.stream():  # written as it arrives, within limits
                    await run_in_threadpool(receiver.feed, chunk)
                receiver.close()
                paths = await run_in_threadpool(receiver.finish)
                result = await run_in_threadpool(score_upload, paths, config)
                result["kept_in"] = str(folder) if config.keep_uploads else None
                return result
            except UploadTooLarge as err:
                return JSONResponse({"error": str(err)}, status_code=413)
            except UnsafeUpload as err:
                return JSONResponse({"error": str(err)}, status_code=400)
            except InputError as err:
                return JSONResponse({"error": str(err)}, status_code=422)
            except ClientDisconnect:
                return JSONResponse({"error": "the upload was cut short"}, status_code=400)
            finally:
                if receiver is not None:
                    receiver.close()
                if not config.keep_uploads:
                    shutil.rmtree(folder, ignore_errors=True)

    guarded = Guard(app, config)
    return BodyLimit(guarded, config.limits.max_bytes + _MULTIPART_SLACK)


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

        await self.app(scope, limited, quiet_after_refusal)


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
        host_header = headers.get("host", "")
        host = hostname(host_header)
        if host not in self.config.hosts:
            await _reply(send, 400, f"this page does not answer to the host {host!r}")
            return
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD") and (
            origin is not None and not same_origin(origin, host_header)
        ):
            await _reply(send, 403, "uploads are only accepted from the page itself")
            return
        token = self.config.token
        if token:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if scope["path"] == "/" and query.get("token"):
                if not token_matches(query["token"][0], token):
                    await _reply(send, 401, "wrong token")
                    return
                value = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
                redirect = [(b"location", b"/"), (b"set-cookie", value.encode())]
                redirect.append((b"cache-control", b"no-store"))
                await send({"type": "http.response.start", "status": 303, "headers": redirect})
                await send({"type": "http.response.body", "body": b""})
                return
            given = bearer(headers.get("authorization", "")) or cookie(
                headers.get("cookie", ""), TOKEN_COOKIE
            )
            if not token_matches(given, token):
                await _reply(
                    send,
                    401,
                    "this page needs its token: open it once as /?token=TOKEN, or send "
                    "Authorization: Bearer TOKEN",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
        await self.app(scope, receive, send)
