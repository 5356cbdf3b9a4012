"""`edgevlm serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn) and a live webcam page, over one
loaded model.

Endpoints: POST /v1/chat/completions (JSON or SSE stream), GET /v1/models, POST /v1/timeline (a video file in the
body -> SRT/VTT/JSONL captions), GET /health, GET /metrics (Prometheus), GET / (the webcam page). The /v1
endpoints take an optional bearer token. Errors are OpenAI-style JSON with the right status: 400 bad request,
401 wrong key, 413 body or image too large, 429 queue full (Retry-After), 504 past the request timeout, 500 a
bug (logged; the reply holds no stack trace).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..errors import ContextLengthError, EdgeVLMError, ImageTooLargeError, InputError
from ..media.captions import FORMATS, CaptionWriter
from . import openai_api as api
from .metrics import Metrics
from .realtime import Realtime, RealtimeLimits
from .runner import Event, Job, QueueFull, Runner, TimedOut, chat_work
from .sessions import Sessions

log = logging.getLogger("edgevlm.server")
# One line per request (`edgevlm serve` prints it to stderr): who, what, status, time, tokens generated.
access_log = logging.getLogger("edgevlm.server.access")


@dataclass
class ServerSettings:
    """How the server treats requests. Sizes in bytes, times in seconds."""

    model_name: str = "smolvlm2"
    api_key: str | None = None
    max_queue: int = 8  # requests waiting beside the running one; more get 429
    timeout: float = 120.0  # per request, from admission
    max_body_bytes: int = 20 << 20  # a chat request (images as data URLs)
    max_video_bytes: int = 512 << 20  # a /v1/timeline upload
    allow_remote_images: bool = False
    cors_origins: tuple[str, ...] = ()
    max_sessions: int = 8  # camera sessions whose last frame is kept for tile reuse (about 10 MB each), LRU
    realtime: RealtimeLimits = field(default_factory=RealtimeLimits)  # /v1/realtime (WebSocket) sessions


class HTTPError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.kind, self.code, self.param, self.headers = status, kind, code, param, headers or {}


def create_app(vlm: Any, settings: ServerSettings | None = None) -> Starlette:
    """The ASGI app for a loaded model (edgevlm.load). Serve it with uvicorn, or `edgevlm serve`."""
    settings = settings or ServerSettings()
    metrics = Metrics()
    runner = Runner(settings.max_queue, settings.timeout)
    sessions = Sessions(settings.max_sessions)
    page = resources.files("edgevlm.server").joinpath("static/index.html").read_text(encoding="utf-8")

    def endpoint(name: str, protected: bool = True):
        """Route wrapper: auth, OpenAI-style errors, request metrics."""

        def wrap(fn):
            async def handler(request: Request) -> Response:
                started = time.monotonic()
                try:
                    if protected:
                        _check_key(request, settings.api_key)
                    response = await fn(request)
                except HTTPError as e:
                    response = JSONResponse(api.error_body(str(e), e.kind, e.param, e.code), e.status, e.headers)
                except api.RequestError as e:
                    response = JSONResponse(api.error_body(str(e), e.kind, e.param, e.code), e.status)
                except EdgeVLMError as e:
                    response = _error_response(e)
                except ClientDisconnect:
                    response = Response(status_code=499)
                except Exception:  # a bug: logged here, never sent to the client
                    log.exception("unexpected error in %s", name)
                    response = JSONResponse(
                        api.error_body("internal server error; see the server log.", "server_error"), 500
                    )
                metrics.requests.labels(name, str(response.status_code)).inc()
                tokens = getattr(request.state, "tokens", None)
                access_log.info(
                    '%s "%s %s" %d %.0f ms %s',
                    request.client.host if request.client else "-",
                    request.method,
                    request.url.path,
                    response.status_code,
                    (time.monotonic() - started) * 1e3,
                    "streamed"
                    if isinstance(response, StreamingResponse)
                    else f"{tokens} tokens"
                    if tokens is not None
                    else "-",
                )
                return response

            return handler

        return wrap

    def track_queue() -> None:
        metrics.queue_depth.set(runner.waiting)
        metrics.in_flight.set(runner.in_flight)

    def admit(work) -> Job:
        """The runner's job for `work`, or a 429 with Retry-After when the queue is full."""
        try:
            return runner.submit(work)
        except QueueFull as e:
            metrics.rejected.inc()
            raise HTTPError(
                429,
                str(e),
                "rate_limit_exceeded",
                "queue_full",
                headers={"Retry-After": str(e.retry_after), "X-Queue-Depth": str(e.depth)},
            ) from None
        finally:
            track_queue()

    @endpoint("chat")
    async def chat(request: Request) -> Response:
        body = await _read_json(request, settings.max_body_bytes)
        # Off the event loop: with --allow-remote-images parsing fetches URLs, and one slow host would stall every
        # request, /health included.
        req = await asyncio.to_thread(
            api.parse_chat_request, body, settings.max_body_bytes, settings.allow_remote_images
        )
        if req.model and req.model != settings.model_name:  # as OpenAI answers a model it does not have
            raise HTTPError(
                404,
                f"The model '{req.model}' does not exist on this server; it serves "
                f"'{settings.model_name}' (GET /v1/models).",
                code="model_not_found",
                param="model",
            )
        cid, model = api.completion_id(), settings.model_name
        started = time.monotonic()
        reuse = sessions.get(req.session) if req.session else None
        job = admit(chat_work(vlm, req.messages, req.options, req.stop, reuse))
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        handed_over = False
        try:
            # The first event decides the status: a bad image or a prompt past the context is a 4xx even when
            # streaming was asked for (nothing is sent before it).
            event = await job.next()
            if event.kind == "error":
                _raise_for(event)
            if req.stream:
                handed_over = True
                return StreamingResponse(
                    _sse(cid, model, req, job, event, metrics, started, track_queue),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            pieces, done = [], None
            while event.kind != "done":
                if event.kind == "error":
                    _raise_for(event)
                pieces.append(event.text)
                event = await job.next()
            done = event.info
        finally:
            watcher.cancel()
            if not handed_over:
                job.cancel.set()
            track_queue()
        _record(metrics, "chat", started, done)
        request.state.tokens = done["completion_tokens"]
        return JSONResponse(api.completion(cid, model, "".join(pieces).rstrip(), done["finish_reason"], done))

    @endpoint("models")
    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": settings.model_name, "object": "model", "created": 0, "owned_by": "edgevlm"}],
            }
        )

    @endpoint("timeline")
    async def timeline(request: Request) -> Response:
        fmt = request.query_params.get("format", "srt")
        if fmt not in FORMATS:
            raise HTTPError(400, f"format must be one of {', '.join(FORMATS)}.", param="format")
        try:
            every = float(request.query_params.get("every", "5"))
        except ValueError:
            every = -1.0
        if not 0 < every <= 3600:
            raise HTTPError(400, "every must be a number of seconds from 0 to 3600.", param="every")
        prompt = request.query_params.get("prompt") or None
        video = await _read_body(request, settings.max_video_bytes)
        if not video:
            raise HTTPError(400, "send the video file as the request body.")
        started = time.monotonic()
        job = admit(_timeline_work(vlm, video, fmt, every, prompt))
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        try:
            event = await job.next()
            if event.kind == "error":
                _raise_for(event)
        finally:
            watcher.cancel()
            job.cancel.set()
            track_queue()
        _record(metrics, "timeline", started, None)
        media = {"srt": "application/x-subrip", "vtt": "text/vtt", "jsonl": "application/jsonl"}.get(fmt, "text/plain")
        return Response(
            event.text, media_type=f"{media}; charset=utf-8", headers={"X-Segments": str(event.info.get("segments", 0))}
        )

    @endpoint("health", protected=False)
    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": settings.model_name,
                "in_flight": runner.in_flight,
                "queue_depth": runner.waiting,
                "max_queue": settings.max_queue,
            }
        )

    @endpoint("metrics", protected=False)
    async def metrics_page(request: Request) -> Response:
        track_queue()
        return Response(metrics.render(), media_type=metrics.content_type)

    @endpoint("page", protected=False)
    async def index(request: Request) -> Response:
        return HTMLResponse(
            page.replace("__MODEL_JSON__", json.dumps(settings.model_name).replace("<", "\\u003c"))
            .replace("__MODEL_HTML__", html.escape(settings.model_name))
            .replace("__NEEDS_KEY__", "true" if settings.api_key else "false")
        )

    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    live = Realtime(vlm, runner.call, settings.realtime, metrics)

    async def realtime(websocket: WebSocket) -> None:
        started = time.monotonic()
        await live(websocket, settings.api_key)
        access_log.info(
            '%s "WEBSOCKET %s" %.0f ms',
            websocket.client.host if websocket.client else "-",
            websocket.url.path,
            (time.monotonic() - started) * 1e3,
        )

    app = Starlette(
        routes=[
            WebSocketRoute("/v1/realtime", realtime),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/timeline", timeline, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
            Route("/", index, methods=["GET"]),
        ],
        middleware=middleware,
        lifespan=_closing(runner),
        exception_handlers={404: _not_routed, 405: _not_routed},
    )
    app.state.runner, app.state.metrics, app.state.settings = runner, metrics, settings
    return app


async def _not_routed(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in OpenAI's error shape, as every other error here (clients parse it)."""
    status = getattr(exc, "status_code", 404)
    if status == 405:
        allowed = getattr(exc, "headers", None) or {}
        message = f"{request.method} is not allowed on {request.url.path}" + (
            f"; use {allowed['Allow']}." if "Allow" in allowed else "."
        )
        return JSONResponse(api.error_body(message, code="method_not_allowed"), 405, headers=allowed)
    return JSONResponse(
        api.error_body(
            f"no such endpoint: {request.method} {request.url.path}. The API is "
            f"POST /v1/chat/completions, GET /v1/models, POST /v1/timeline, GET /health, "
            f"GET /metrics.",
            code="not_found",
        ),
        404,
    )


def _closing(runner: Runner):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        runner.close()

    return lifespan


def _check_key(request: Request, key: str | None) -> None:
    if not key:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise HTTPError(
            401, "missing or wrong API key (send Authorization: Bearer KEY).", "authentication_error", "invalid_api_key"
        )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (a Content-Length that says so is refused unread)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPError(
            413,
            f"the request body is {int(declared):,} bytes, over this server's limit of {limit:,}.",
            code="body_too_large",
        )
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise HTTPError(
                413, f"the request body is over this server's limit of {limit:,} bytes.", code="body_too_large"
            )
    return bytes(data)


async def _read_json(request: Request, limit: int) -> Any:
    raw = await _read_body(request, limit)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise HTTPError(400, "the request body is not valid JSON.") from None


def _error_response(e: EdgeVLMError) -> JSONResponse:
    if isinstance(e, ImageTooLargeError):
        return JSONResponse(api.error_body(str(e), code="image_too_large"), 413)
    if isinstance(e, ContextLengthError):  # in request terms, not the Python API's
        message = e.told('"detail": "low" image parts', "max_tokens") if e.max_positions else str(e)
        return JSONResponse(api.error_body(message, code="context_length_exceeded", param="max_tokens"), 400)
    if isinstance(e, InputError):
        return JSONResponse(api.error_body(str(e)), 400)
    return JSONResponse(api.error_body(str(e), "server_error"), 500)


def _raise_for(event: Event) -> None:
    if isinstance(event.error, TimedOut):
        raise HTTPError(504, "the answer took longer than this server's request timeout.", "timeout", "timeout")
    assert event.error is not None  # an "error" event always carries one
    raise event.error


async def _watch_disconnect(request: Request, job: Job) -> None:
    """A non-streaming client that hangs up cancels its answer (the worker stops at the next token)."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)
    job.cancel.set()


async def _sse(
    cid: str, model: str, req: api.ChatRequest, job: Job, first: Event, metrics: Metrics, started: float, track_queue
):
    """Server-sent events in OpenAI's chunk format, ending with [DONE]. A client that disconnects closes this
    generator, which cancels the answer."""

    def data(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        yield data(api.chunk(cid, model, {"role": "assistant", "content": ""}))
        event = first
        while True:
            if event.kind == "piece":
                yield data(api.chunk(cid, model, {"content": event.text}))
            elif event.kind == "done":
                info = event.info
                yield data(api.chunk(cid, model, {}, info["finish_reason"]))
                if req.include_usage:
                    yield data(api.usage_chunk(cid, model, info))
                _record(metrics, "chat", started, info)
                break
            else:
                err = event.error
                status, kind = (504, "timeout") if isinstance(err, TimedOut) else (400, "invalid_request_error")
                if not isinstance(err, (EdgeVLMError, TimedOut)):
                    status, kind = 500, "server_error"
                message = str(err) if status != 500 else "internal server error; see the server log."
                if isinstance(err, TimedOut):
                    message = "the answer took longer than this server's request timeout."
                yield data(api.error_body(message, kind) | {"status": status})
                break
            event = await job.next()
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()
        track_queue()


def _record(metrics: Metrics, endpoint: str, started: float, info: dict | None) -> None:
    metrics.latency.labels(endpoint).observe(time.monotonic() - started)
    if info:
        metrics.tokens.inc(info["completion_tokens"])
        metrics.prompt_tokens.inc(info["prompt_tokens"])
        if info["seconds"] > 0:
            metrics.tokens_per_second.set(info["completion_tokens"] / info["seconds"])


def _timeline_work(vlm: Any, video: bytes, fmt: str, every: float, prompt: str | None):
    """Worker-side: the uploaded bytes to a temporary file (video decoding reads files), a timeline over it,
    written in `fmt` to memory."""

    def work(job: Job) -> None:
        with tempfile.TemporaryDirectory(prefix="edgevlm-upload-") as tmp:
            path = os.path.join(tmp, "upload.mp4")
            with open(path, "wb") as f:
                f.write(video)
            out = io.StringIO()
            writer = CaptionWriter(fmt, stream=out)
            kw = {"prompt": prompt} if prompt else {}
            for segment in vlm.timeline(path, every=every, **kw):
                writer.write(segment)
                if job.should_stop:
                    raise TimedOut() if not job.cancel.is_set() else EdgeVLMError("cancelled")
            writer.commit()
        job.post(Event("done", out.getvalue(), info={"segments": writer.count}))

    return work
