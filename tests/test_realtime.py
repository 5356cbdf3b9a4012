"""The realtime session of `edgevlm serve` (issue 28): a real server process, a real WebSocket client (the
`websockets` library), frames in, captions and events out; auth, limits, disconnects and a client that never
reads.

As in test_events.py, the tiny model's answers are arbitrary but a function of the frame: the tests first find a box
colour whose frames it answers differently from the empty scene, then trigger on that answer.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import wait_until
from PIL import Image
from videotools import free_port
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import edgevlm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from server_load import server_log, start_server

PROMPT = "Is there a box?"
CHOICES = ["yes", "no"]
KEY = "s3cret-key"


def scene(color: tuple[int, int, int] | None) -> np.ndarray:
    image = np.full((240, 320, 3), 128, np.uint8)
    if color is not None:
        image[60:180, 100:220] = color
    return image


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")  # lossless: the server captions exactly these pixels
    return out.getvalue()


@pytest.fixture(scope="module")
def box(tiny256):
    """(box colour, the answer that means 'box') for the tiny model, one tile per frame as a session captions."""
    vlm = edgevlm.load(tiny256[1])
    empty = vlm.caption(scene(None), prompt=PROMPT, choices=CHOICES, split=False).value
    for color in ((255, 255, 255), (30, 230, 30), (230, 30, 30), (30, 30, 230), (0, 0, 0)):
        answer = vlm.caption(scene(color), prompt=PROMPT, choices=CHOICES, split=False).value
        if answer != empty:
            return color, answer
    pytest.fail("no box colour changes the tiny model's answer")


@pytest.fixture(scope="module")
def server(tiny256):
    port = free_port()
    proc = start_server(str(tiny256[1]), port, "--api-key", KEY, "--realtime-timeout", "6", "--max-realtime", "2")
    yield port, proc
    proc.terminate()
    proc.wait(30)


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/realtime"


def session(port: int, **kw):
    return connect(url(port), additional_headers={"Authorization": f"Bearer {KEY}"}, **kw)


class Reader:
    """Reads a session's messages on a thread, as a client that keeps up does."""

    def __init__(self, ws):
        self.ws, self.messages = ws, []
        self.closed: ConnectionClosed | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for text in self.ws:
                self.messages.append(json.loads(text))
        except ConnectionClosed as e:
            self.closed = e

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    def wait(self, predicate, timeout: float = 60) -> bool:
        return wait_until(predicate, timeout)


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def chat_seconds(port: int) -> float:
    models = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        ).read()
    )
    body = json.dumps(
        {"model": models["data"][0]["id"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        body,
        {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    t0 = time.monotonic()
    urllib.request.urlopen(request, timeout=60).read()
    return time.monotonic() - t0


def test_captions_and_one_event_with_its_frame(server, box):
    port, _ = server
    color, answer = box
    trigger = {"when": f"value == {answer}", "hold": 2, "cooldown": 1.0}
    with session(port) as ws:
        reader = Reader(ws)
        ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"prompt": PROMPT, "choices": CHOICES, "threshold": 0, "trigger": trigger},
                }
            )
        )
        assert reader.wait(lambda: reader.of("session.updated"))
        # 2 s of the empty scene, 3 s with the box, one frame without it, 1 s with it, 3 s empty: 10 frames/s
        script = [None] * 20 + [color] * 30 + [None] + [color] * 10 + [None] * 30
        for c in script:
            ws.send(png(scene(c)))
            time.sleep(0.1)
        assert reader.wait(lambda: [e for e in reader.of("event") if e["phase"] == "end"]), reader.messages[-5:]
    captions, events = reader.of("caption"), reader.of("event")
    assert len(captions) >= 10 and all(c["value"] in CHOICES for c in captions)
    assert [e["phase"] for e in events] == ["start", "end"], events
    start = events[0]
    jsonschema_validate(start)
    assert start["source"] == "websocket" and start["model"]["prompt"] == PROMPT
    jpeg = Image.open(io.BytesIO(base64.b64decode(start["evidence_jpeg"].split(",", 1)[1]))).convert("RGB")
    shown = np.asarray(jpeg)[70:170, 110:210].reshape(-1, 3).mean(0)
    assert np.abs(shown - np.array(color)).max() < 20, shown  # the frame that fired shows the box


def jsonschema_validate(record: dict) -> None:
    import jsonschema

    from edgevlm.media.events import event_schema

    jsonschema.validate({k: v for k, v in record.items() if k not in ("type", "evidence_jpeg")}, event_schema())


def test_auth_limits_and_bad_input(server):
    port, _ = server
    with pytest.raises(InvalidStatus) as e:  # no key: refused before the upgrade
        connect(url(port)).close()
    assert e.value.response.status_code == 403
    with connect(url(port), subprotocols=[f"edgevlm-key.{KEY}"]) as ws:  # the browser's way: a subprotocol
        assert json.loads(ws.recv(10))["type"] == "session.created"
        ws.send(json.dumps({"type": "session.update", "session": {"trigger": {"when": "count >>= 2"}}}))
        assert "condition" in json.loads(ws.recv(10))["message"]
        ws.send(json.dumps({"type": "session.update", "session": {"max_new_tokens": 0}}))
        assert "max_new_tokens" in json.loads(ws.recv(10))["message"]
        ws.send(b"not an image")
        assert "could not be decoded" in json.loads(ws.recv(10))["message"]
        for burst in (60, 30):  # frames faster than 15 a second: the rest are dropped undecoded, and said so
            for _ in range(burst):
                ws.send(png(scene(None)))
            time.sleep(1.1)
        refused, deadline = 0, time.monotonic() + 30
        while refused < 40 and time.monotonic() < deadline:
            message = json.loads(ws.recv(30))
            refused += message["count"] if message["type"] == "frames.refused" else 0
        assert refused >= 40, refused  # 90 sent in two bursts, 30 accepted; the last few wait for a report
        ws.send(b"\xff" * (4 << 20 | 1))  # over the frame size limit: the session closes with 1009
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_disconnect_frees_the_model_and_a_slow_reader_gets_backpressure(server):
    port, proc = server
    with session(port) as ws:
        Reader(ws)
        for i in range(20):
            ws.send(png(scene((i * 10 % 256, 0, 0))))
            time.sleep(0.05)
    t0 = time.monotonic()
    while metric(port, "edgevlm_realtime_sessions") and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert time.monotonic() - t0 < 2, "the session should end within 2 s of the disconnect"
    assert chat_seconds(port) < 5  # the model is free for the HTTP requests
    # A client that sends frames and never reads (and whose receive window is tiny): its messages wait (at most 16),
    # its captioning pauses, the server's memory stays flat, the HTTP requests are served meanwhile, and after
    # --realtime-timeout (6 s here) without a read the session is dropped. Noise frames and a trigger that fires
    # often make big messages (an event's start carries its frame), so the buffers fill in seconds.
    server_process = psutil.Process(proc.pid)
    rng = np.random.default_rng(0)
    frames = [png(rng.integers(0, 256, (480, 640, 3), np.uint8)) for _ in range(8)]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    with connect(
        url(port), sock=sock, additional_headers={"Authorization": f"Bearer {KEY}"}, max_queue=1, ping_interval=None
    ) as ws:
        ws.send(json.dumps({"type": "session.update", "session": {"threshold": 0, "trigger": {"pattern": "^[a-m]"}}}))
        sent = [0]

        def pump() -> None:
            with contextlib.suppress(Exception):  # ends when the server drops the connection
                while True:
                    ws.send(frames[sent[0] % len(frames)])
                    sent[0] += 1
                    time.sleep(0.07)

        threading.Thread(target=pump, daemon=True).start()
        rss, dropped = [], False
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not dropped:
                rss.append(server_process.memory_info().rss)
                dropped = "read nothing for 6 s: dropping it" in server_log(proc, 1 << 20)
                time.sleep(0.5)
            assert dropped, server_log(proc)
            assert chat_seconds(port) < 10  # served while the slow client's session paused and after it ended
            assert metric(port, "edgevlm_realtime_sessions") == 0
        finally:
            # The pump may be blocked in send (holding the client's lock) on a connection the server no longer
            # reads; close() does not wake it and the client's own close would wait for ever on that lock (seen
            # once in CI), shutdown() does.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
    assert sent[0] > 40 and max(rss) - rss[2] < 64 << 20, (sent[0], [r >> 20 for r in rss])
