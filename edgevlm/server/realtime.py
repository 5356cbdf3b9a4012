"""A realtime session: a WebSocket on which a client pushes camera frames and receives captions and events as they
happen (`/v1/realtime`), instead of one chat request per frame.

The session is the library's own watch loop (edgevlm.media.live.watch) over a PushSource: newest-frame semantics
(a frame that arrives while the model is busy replaces the one waiting, so a fast client never builds a backlog),
the motion gate, tile reuse, and a Trigger's events with hold and cooldown. The model is the server's one model:
each caption runs on the runner's single worker thread, between the HTTP requests, never beside them.

Wire protocol (JSON text messages; frames as binary messages):
- client → server: `{"type": "session.update", "session": {...}}` before the first frame (prompt, max_new_tokens,
  detail, threshold, heartbeat, choices / json_schema / regex, trigger: {pattern | when, hold, hold_s, cooldown});
  then binary messages, each one JPEG, PNG or WebP frame.
- server → client: `session.created` / `session.updated` (the settings and limits in force), `caption` (a
  LiveCaption), `frames.refused` (the rate limit dropped frames), `event` (an
  Event record; a start carries the frame that fired it as `evidence_jpeg`, a data URL), `error` (bad input: the
  session goes on; with a close code when it cannot).

Limits: frames above `max_frame_bytes` close the session (1009); frames beyond `max_fps` per second are dropped
undecoded (a `frames.refused` message says how many, at most once a second); a client that reads nothing gets
backpressure: at most `queue` messages wait for it, then its captioning pauses (the model serves others), and
after `send_timeout` s without a read the session ends and its connection is dropped. A disconnect stops the
session's captioning after the caption in progress.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import io
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..engine.detail import DETAIL, tiling
from ..errors import EdgeVLMError, InputError
from ..media.events import Trigger
from ..media.live import watch
from ..media.sources import PushSource
from ..records import Event

log = logging.getLogger("edgevlm.server")
KEY_PROTOCOL = "edgevlm-key."  # browsers cannot set headers on a WebSocket: the key rides in a subprotocol


@dataclass
class RealtimeLimits:
    max_sessions: int = 4  # realtime sessions at once (each holds a watch thread and its last frame)
    max_frame_bytes: int = 4 << 20  # one encoded frame
    max_frame_pixels: int = 4096 * 4096
    max_fps: float = 15.0  # frames accepted per second; more are dropped unread
    queue: int = 16  # messages waiting for a slow client before its captioning pauses
    send_timeout: float = 30.0  # seconds a client may read nothing before it is closed


class Serialized:
    """The server's model as watch sees it: every caption runs on the runner's worker thread (`call`), so a
    realtime session and the HTTP requests take turns on the model, one answer at a time."""

    def __init__(self, vlm: Any, call: Callable[[Callable[[], Any]], Any]):
        self._vlm, self._call = vlm, call

    def caption(self, *args: Any, **kw: Any) -> Any:
        return self._call(lambda: self._vlm.caption(*args, **kw))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vlm, name)


class Realtime:
    """The /v1/realtime endpoint of one app."""

    def __init__(self, vlm: Any, call: Callable[[Callable[[], Any]], Any], limits: RealtimeLimits, metrics: Any):
        self.vlm, self.call, self.limits, self.metrics = vlm, call, limits, metrics
        self.active = 0

    async def __call__(self, websocket: WebSocket, api_key: str | None) -> None:
        protocol = _authorized(websocket, api_key)
        if protocol is False:
            await websocket.close(code=1008, reason="missing or wrong API key")
            return
        if self.active >= self.limits.max_sessions:
            await websocket.close(
                code=1013, reason=f"{self.limits.max_sessions} realtime sessions are open; retry later"
            )
            return
        self.active += 1
        self.metrics.realtime_sessions.set(self.active)
        try:
            await websocket.accept(subprotocol=str(protocol) or None)
            await _Session(self, websocket).run()
        finally:
            self.active -= 1
            self.metrics.realtime_sessions.set(self.active)


def _authorized(websocket: WebSocket, key: str | None) -> str | bool:
    """The subprotocol to answer with ("" for none), or False when the key is missing or wrong."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    keyed = next((p for p in offered if p.startswith(KEY_PROTOCOL)), "")
    if key is None:
        return keyed
    header = websocket.headers.get("authorization", "")
    if header == f"Bearer {key}" or keyed == KEY_PROTOCOL + key:
        return keyed
    return False


class _Session:
    def __init__(self, endpoint: Realtime, websocket: WebSocket):
        self.endpoint, self.ws, self.limits = endpoint, websocket, endpoint.limits
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=self.limits.queue)
        self.stopped = threading.Event()
        self.source: PushSource | None = None
        self.thread: threading.Thread | None = None
        self.settings: dict[str, Any] = {"prompt": None, "max_new_tokens": None, "detail": "low", "threshold": 6.0}
        self.refused = 0  # frames over the rate limit since the last report
        self.reported = 0.0  # when the last report went out
        self.window: list[float] = []
        self.evidence = Path(tempfile.mkdtemp(prefix="edgevlm-realtime-"))
        self.stuck = False  # the client stopped reading: nothing more can be sent to it

    async def run(self) -> None:
        await self.out.put({"type": "session.created", "session": self._described()})
        sender = asyncio.create_task(self._send())
        receiver = asyncio.create_task(self._receive())
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.stopped.set()
            receiver.cancel()
            sender.cancel()
            if self.source is not None:
                self.source.close()
            if self.thread is not None:  # the caption in progress ends; then the model is free
                await asyncio.to_thread(self.thread.join, 10)
            shutil.rmtree(self.evidence, ignore_errors=True)
            if self.ws.application_state == WebSocketState.CONNECTED and not self.stuck:
                with contextlib.suppress(RuntimeError, WebSocketDisconnect, asyncio.TimeoutError):
                    await asyncio.wait_for(self.ws.close(), 2)  # a client gone already cannot take it

    # ------------------------------------------------------------------------------------------- from client
    async def _receive(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                if not await self._frame(message["bytes"]):
                    return
            elif message.get("text") is not None:
                self._text(message["text"])

    def _text(self, text: str) -> None:
        try:
            body = json.loads(text)
        except ValueError:
            return self._error('a text message must be JSON, such as {"type": "session.update", "session": {...}}.')
        if (
            not isinstance(body, dict)
            or body.get("type") != "session.update"
            or not isinstance(body.get("session"), dict)
        ):
            return self._error('unknown message; send {"type": "session.update", "session": {...}} or binary frames.')
        if self.thread is not None:
            return self._error("session.update after the first frame: open a new session to change its settings.")
        try:
            self.settings = _settings({**self.settings, **body["session"]})
        except EdgeVLMError as e:
            return self._error(str(e))
        self._put({"type": "session.updated", "session": self._described()})

    async def _frame(self, data: bytes) -> bool:
        """Hand a frame to the session's source; False when the session must close."""
        self.endpoint.metrics.realtime_frames.labels("received").inc()
        if len(data) > self.limits.max_frame_bytes:
            self._put_error(f"a frame of {len(data)} bytes is over the limit of {self.limits.max_frame_bytes}.")
            await asyncio.sleep(0.1)  # let the sender say it before the close
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, asyncio.TimeoutError):
                await asyncio.wait_for(self.ws.close(code=1009, reason="frame too large"), 2)
            self.stuck = True  # closed already: run() has nothing more to close
            return False
        now = time.monotonic()
        self.window = [t for t in self.window if now - t < 1.0]
        if len(self.window) >= self.limits.max_fps:
            self.refused += 1
            self.endpoint.metrics.realtime_frames.labels("rate_limited").inc()
            if now - self.reported >= 1.0:  # at most one report a second, of the frames dropped since the last
                self._put({"type": "frames.refused", "count": self.refused, "max_fps": self.limits.max_fps})
                self.refused, self.reported = 0, now
            return True
        self.window.append(now)
        try:
            image = await asyncio.to_thread(_decode, data, self.limits.max_frame_pixels)
        except InputError as e:
            self._error(str(e))
            return True
        if self.thread is None:
            self._start()
        assert self.source is not None
        self.source.push(image)
        return True

    # --------------------------------------------------------------------------------------------- captioning
    def _start(self) -> None:
        self.source = PushSource("websocket")
        options = dict(self.settings)
        trigger_spec = options.pop("trigger", None)
        detail = options.pop("detail")
        trigger = None
        if trigger_spec is not None:
            trigger = Trigger(**trigger_spec, on_event=self._event)
        shape = tiling(detail, self.endpoint.vlm.spec.tile)
        kwargs = {k: v for k, v in options.items() if v is not None}
        kwargs["split"] = detail != "low"
        if "longest_edge" in shape:
            kwargs["longest_edge"] = shape["longest_edge"]
        model = Serialized(self.endpoint.vlm, self.endpoint.call)
        captions = watch(
            cast(Any, model),
            self.source,
            trigger=trigger,
            evidence=self.evidence if trigger is not None else None,
            **kwargs,
        )
        self.thread = threading.Thread(target=self._caption_loop, args=(captions,), daemon=True, name="edgevlm-rt")
        self.thread.start()

    def _caption_loop(self, captions: Any) -> None:
        try:
            for c in captions:
                if not self._deliver({"type": "caption", **c.to_dict()}):
                    break
        except EdgeVLMError as e:
            self._deliver({"type": "error", "message": str(e)})
        except Exception:
            log.exception("realtime session failed")
            self._deliver({"type": "error", "message": "internal server error; see the server log."})
        finally:
            captions.close()

    def _event(self, event: Event) -> None:
        message: dict[str, Any] = {"type": "event", **event.to_dict()}
        if event.phase == "start" and event.evidence:
            path = self.evidence / event.evidence
            message["evidence_jpeg"] = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
            path.unlink(missing_ok=True)
        if event.phase == "end":  # the client has the records: the private events.jsonl must not grow for ever
            (self.evidence / "events.jsonl").write_bytes(b"")
        self._deliver(message)

    def _deliver(self, message: dict[str, Any]) -> bool:
        """From the caption thread: queue a message for the client, waiting while the queue is full (a client that
        does not read pauses its own captioning, not the server); False once the session has ended."""
        while not self.stopped.is_set():
            future = asyncio.run_coroutine_threadsafe(self.out.put(message), self.loop)
            try:
                future.result(timeout=0.5)
                return True
            except concurrent.futures.TimeoutError:
                if not future.cancel():
                    return True
        return False

    # --------------------------------------------------------------------------------------------- to client
    async def _send(self) -> None:
        try:
            while True:
                message = await self.out.get()
                try:
                    await asyncio.wait_for(self.ws.send_text(json.dumps(message)), self.limits.send_timeout)
                except asyncio.TimeoutError:
                    # Its buffers are full, so even a close frame would wait: the session just ends, and the
                    # connection is dropped when the handler returns.
                    log.warning("realtime client read nothing for %g s: dropping it", self.limits.send_timeout)
                    self.stuck = True
                    return
        except (WebSocketDisconnect, RuntimeError):
            self.stopped.set()

    def _put(self, message: dict[str, Any]) -> None:
        try:
            self.out.put_nowait(message)
        except asyncio.QueueFull:
            pass  # a client that does not read misses replies to its own bad input, not captions

    def _put_error(self, text: str) -> None:
        self._put({"type": "error", "message": text})

    def _error(self, text: str) -> None:
        self._put_error(text)

    def _described(self) -> dict[str, Any]:
        limits = {
            "max_frame_bytes": self.limits.max_frame_bytes,
            "max_fps": self.limits.max_fps,
            "send_timeout": self.limits.send_timeout,
        }
        return {**self.settings, "limits": limits}


SETTINGS = {
    "prompt",
    "max_new_tokens",
    "detail",
    "threshold",
    "heartbeat",
    "choices",
    "json_schema",
    "regex",
    "trigger",
}


def _settings(s: dict[str, Any]) -> dict[str, Any]:
    """A session's settings, checked now (a bad schema or trigger is an error before any frame)."""
    from ..engine.structured import from_options

    unknown = sorted(set(s) - SETTINGS)
    if unknown:
        raise InputError(f"unknown session settings {unknown}; known: {sorted(SETTINGS)}.")
    if s.get("prompt") is not None and (not isinstance(s["prompt"], str) or not s["prompt"].strip()):
        raise InputError("prompt must be a non-empty string.")
    if s.get("detail") not in DETAIL:
        raise InputError(f"detail must be one of {list(DETAIL)}.")
    for name, low, high in (("max_new_tokens", 1, 1024), ("threshold", 0, 255), ("heartbeat", 0.1, 3600)):
        v = s.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high):
            raise InputError(f"{name} must be a number from {low} to {high}.")
    if s.get("max_new_tokens") is not None and not isinstance(s["max_new_tokens"], int):
        raise InputError("max_new_tokens must be a whole number.")
    from_options(**{k: s.get(k) for k in ("choices", "json_schema", "regex")})  # raises ConstraintError
    trigger = s.get("trigger")
    if trigger is not None:
        if not isinstance(trigger, dict) or set(trigger) - {"pattern", "when", "hold", "hold_s", "cooldown"}:
            raise InputError("trigger is an object: {pattern | when, hold, hold_s, cooldown}.")
        Trigger(**trigger)  # raises InputError for bad values
    return s


def _decode(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise InputError(f"a frame of {im.width}x{im.height} is over the limit of {max_pixels} pixels.")
            return np.asarray(im.convert("RGB"))
    except InputError:
        raise
    except Exception:
        raise InputError(
            "a binary message must be one JPEG, PNG or WebP frame; this one could not be decoded."
        ) from None
