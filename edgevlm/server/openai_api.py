"""OpenAI's chat-completions wire format, both ways: a request body to edgevlm messages and generation options, and
answers back as `chat.completion` objects or `chat.completion.chunk` events (llama-server's and mlx-vlm's
convention, so the official `openai` client works unchanged).
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .. import defaults
from ..engine.structured import Constraint
from ..errors import InputError

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
DEFAULT_MAX_TOKENS = defaults.MAX_NEW_TOKENS["server"]


class RequestError(InputError):
    """A request the server refuses, with the HTTP status and OpenAI error fields to answer with."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind


@dataclass
class ChatRequest:
    """What a /v1/chat/completions body asks for, in edgevlm's terms."""

    messages: list[dict[str, Any]]
    options: dict[str, Any]  # GenerationConfig keywords (max_new_tokens, do_sample, temperature, top_p, seed, ...)
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    model: str = ""
    session: str | None = None  # edgevlm's extension: frames of one camera, whose unchanged tiles are reused


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def parse_chat_request(body: Any, max_image_bytes: int, allow_remote_images: bool = False) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object.")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported: one answer per request.", param="n")
    for unsupported in ("tools", "functions", "logprobs", "audio"):
        if body.get(unsupported):
            raise RequestError(f"{unsupported!r} is not supported by this server.", param=unsupported)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list.", param="messages")
    messages = [_message(m, i, max_image_bytes, allow_remote_images) for i, m in enumerate(raw)]
    stream_options = body.get("stream_options") or {}
    return ChatRequest(
        messages,
        _options(body),
        _stop(body.get("stop")),
        bool(body.get("stream", False)),
        bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        str(body.get("model") or ""),
        _session(body.get("session")),
    )


def _session(session: Any) -> str | None:
    """A client's name for a stream of frames from one camera (OpenAI's clients send it as extra_body)."""
    if session is None:
        return None
    if not isinstance(session, str) or not 1 <= len(session) <= 128 or not session.isprintable():
        raise RequestError("'session' must be a printable string of 1 to 128 characters.", param="session")
    return session


def _message(m: Any, i: int, max_image_bytes: int, allow_remote: bool) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise RequestError(f"{where} needs a role of system, developer, user or assistant.", param=where)
    content = m.get("content")
    if isinstance(content, str):
        return {"role": ROLES[m["role"]], "content": content}
    if not isinstance(content, list) or not content:
        raise RequestError(f"{where}.content must be a string or a non-empty list of parts.", param=where)
    items = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            items.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            detail = image.get("detail", "auto") if isinstance(image, dict) else "auto"
            data = _image_bytes(url, f"{where}.content[{j}]", max_image_bytes, allow_remote)
            _check_image(data, f"{where}.content[{j}]")
            item: dict[str, Any] = {"type": "image", "image": data}
            if detail == "low":  # one tile, as OpenAI's low detail: fast, for live frames
                item["split"] = False
            items.append(item)
        else:
            raise RequestError(f"{where}.content[{j}] must be a text part or an image_url part.", param=where)
    return {"role": ROLES[m["role"]], "content": items}


def _image_bytes(url: Any, where: str, max_bytes: int, allow_remote: bool) -> bytes:
    if not isinstance(url, str) or not url:
        raise RequestError(f"{where}: image_url needs a url.", param=where)
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(f"{where}: a data URL must be base64 (data:image/png;base64,...).", param=where)
        if len(data) * 3 // 4 > max_bytes:
            raise RequestError(f"{where}: the image is over {max_bytes >> 20} MB.", status=413, param=where)
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: the data URL is not valid base64.", param=where) from None
    if url.startswith(("http://", "https://")):
        if not allow_remote:
            raise RequestError(
                f"{where}: remote image URLs are off on this server; send the image as a data: URL "
                f"(or start it with --allow-remote-images).",
                param=where,
            )
        return _fetch(url, where, max_bytes)
    raise RequestError(f"{where}: image_url must be a data: URL (or http(s) with --allow-remote-images).", param=where)


def _check_image(data: bytes, where: str) -> None:
    """Name the part that holds data no image format recognizes (the engine only sees bytes). Reads the header
    only (off the event loop, as the whole request parse): decoding is the engine's work, on the model's thread."""
    try:
        Image.open(io.BytesIO(data)).close()
    except Image.DecompressionBombError:
        return  # the engine's pixel limit answers this one (413)
    except Image.UnidentifiedImageError:  # its message holds a Python object's repr: not for an HTTP client
        raise RequestError(
            f"{where}: the image cannot be read (no image format recognizes the data); send a PNG, "
            f"JPEG, WebP, BMP or TIFF.",
            param=where,
        ) from None
    except Exception as e:  # Pillow raises many types for bad data
        raise RequestError(
            f"{where}: the image cannot be read ({type(e).__name__}: {e}); send a PNG, JPEG, WebP, BMP or TIFF.",
            param=where,
        ) from None


class _PublicRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """The operator chose to fetch the URLs clients send; a redirect is the remote side's choice, and one to a
    loopback, private or link-local address would make this server reach into its own network for a client."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        host = urllib.parse.urlsplit(newurl).hostname or ""
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            addresses = set()
        if not addresses or any(not ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
            raise urllib.error.URLError(f"redirected to {host or newurl}, which is not a public address; refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_PublicRedirectsOnly)


def _fetch(url: str, where: str, max_bytes: int) -> bytes:
    """Blocking: the server calls parse_chat_request off its event loop (a slow host must not stall /health)."""
    try:
        with _OPENER.open(url, timeout=10) as r:
            data = r.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RequestError(f"{where}: could not fetch {url} ({getattr(e, 'reason', e)}).", param=where) from None
    if len(data) > max_bytes:
        raise RequestError(f"{where}: the image at {url} is over {max_bytes >> 20} MB.", status=413, param=where)
    return data


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(f"'{name}' must be a number from {low:g} to {high:g}.", param=name)
    return float(value)


def _options(body: dict) -> dict[str, Any]:
    """GenerationConfig keywords. Without a temperature (or with 0) decoding is greedy: deterministic answers,
    what a camera pipeline wants; OpenAI's default of 1 would sample."""
    opts: dict[str, Any] = {}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        limit = DEFAULT_MAX_TOKENS
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RequestError("'max_tokens' must be a positive integer.", param="max_tokens")
    opts["max_new_tokens"] = limit
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    if temperature:
        opts.update(do_sample=True, temperature=temperature)
        if top_p is not None and top_p > 0:
            opts["top_p"] = top_p
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise RequestError("'seed' must be a non-negative integer.", param="seed")
        opts["seed"] = seed
    opts.update(_response_format(body.get("response_format")))
    return opts


def _response_format(fmt: Any) -> dict[str, Any]:
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"constraint": Constraint.json_schema({"type": "object"})}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(
                "response_format.json_schema.schema must be a JSON schema object.", param="response_format"
            )
        return {"constraint": Constraint.json_schema(schema)}
    raise RequestError("response_format.type must be text, json_object or json_schema.", param="response_format")


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a non-empty string or a list of up to 4 of them.", param="stop")
    return stops


class StopStrings:
    """Cuts the answer at the first stop string, holding back a tail that might be the start of one, so a
    stream never shows text that a later piece would have cut."""

    def __init__(self, stops: list[str]):
        self.stops, self._held = stops, ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to show now, whether a stop string was reached)."""
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(cid: str, model: str, text: str, finish_reason: str, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(info),
    }


def chunk(cid: str, model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk(cid: str, model: str, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(info),
    }


def usage(info: dict[str, Any]) -> dict[str, int]:
    """OpenAI's token counts, and edgevlm's tiles: encoded by the vision encoder and reused from the session's
    last frame (clients ignore fields they do not know)."""
    return {
        "prompt_tokens": info["prompt_tokens"],
        "completion_tokens": info["completion_tokens"],
        "total_tokens": info["prompt_tokens"] + info["completion_tokens"],
        "tiles": info.get("tiles", 0),
        "tiles_reused": info.get("tiles_reused", 0),
    }
