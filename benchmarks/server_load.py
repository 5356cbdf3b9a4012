"""A bounded load test of `edgevlm serve`: N concurrent clients for S seconds against a real server process.

    python benchmarks/server_load.py BUNDLE [--clients 32] [--seconds 60] [--max-queue 8] [--json]

Starts `edgevlm serve` on a free 127.0.0.1 port, then every client loops: one chat completion with a small image
(OpenAI wire format, data URL), and on HTTP 429 waits the Retry-After it was given. Reports requests/s, latency
percentiles of the answered requests, the status codes, whether every 429 came with a full queue, and the
server's RSS after warm-up and at the end. tests/test_server.py runs it and checks the same numbers.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import psutil
from machine import cpu_line
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: str, port: int, *extra: str) -> subprocess.Popen:
    # The server's log goes to a file, never to a pipe: a pipe nobody reads fills (64 KiB) and then blocks the
    # server on its next log line, which once hung a CI run mid-test.
    log = tempfile.TemporaryFile(mode="w+", prefix="edgevlm-serve-", suffix=".log")  # noqa: SIM115 (lives with proc)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgevlm.cli", "serve", bundle, "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    proc.log = log  # read with server_log(proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {server_log(proc)}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not come up in 120 s")


def server_log(proc: subprocess.Popen, tail: int = 4000) -> str:
    """The last `tail` characters the server has logged so far."""
    proc.log.flush()
    proc.log.seek(0)
    return proc.log.read()[-tail:]


def image_url(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def one_request(url: str, body: bytes) -> tuple[int, dict, float, Any]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - t0, r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), time.perf_counter() - t0, e.headers


def run_load(base: str, clients: int, seconds: float, max_queue: int, server_pid: int, max_tokens: int = 16) -> dict:
    url = f"{base}/v1/chat/completions"
    stop_at = time.monotonic() + seconds
    results, lock = [], threading.Lock()
    proc = psutil.Process(server_pid)
    rss = []

    def client(i: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            body = json.dumps(
                {
                    "max_tokens": max_tokens,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": image_url(i * 1000 + n), "detail": "low"}},
                                {"type": "text", "text": f"Describe image {n}."},
                            ],
                        }
                    ],
                }
            ).encode()
            status, data, took, headers = one_request(url, body)
            with lock:
                results.append((time.monotonic(), status, data, took, headers))
            if status == 429:
                time.sleep(float(headers.get("Retry-After", "1")))
            n += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
        time.sleep(1.0)
    elapsed = time.monotonic() - t0
    ok = [r for r in results if r[1] == 200]
    latencies = sorted(r[3] for r in ok)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1
    rejected = [r for r in results if r[1] == 429]
    warm = [m for t, m in rss if t >= min(10.0, seconds / 3)] or [m for _, m in rss]
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(results),
        "answered": len(ok),
        "statuses": statuses,
        "answered_per_s": round(len(ok) / elapsed, 2),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
        "answers_with_text": sum(
            1
            for r in ok
            if r[2]["choices"][0]["message"]["content"] is not None and r[2]["usage"]["completion_tokens"] > 0
        ),
        "rejected_with_full_queue": sum(1 for r in rejected if int(r[4].get("X-Queue-Depth", -1)) >= max_queue),
        "rss_mb_after_warmup": round(warm[0], 1),
        "rss_mb_end": round(rss[-1][1], 1),
        "rss_mb_max": round(max(m for _, m in rss), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object (what the test reads)")
    args = ap.parse_args()
    port = free_port()
    extra = ["--max-queue", str(args.max_queue), "--threads", "2"] + (
        ["--variant", args.variant] if args.variant else []
    )
    server = start_server(args.bundle, port, *extra)
    try:
        stats = run_load(
            f"http://127.0.0.1:{port}", args.clients, args.seconds, args.max_queue, server.pid, args.max_tokens
        )
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        stats["server_rejected_metric"] = next(
            (
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("edgevlm_rejected_queue_full_total")
            ),
            None,
        )
        stats["server_in_flight_after"] = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())[
            "in_flight"
        ]
    finally:
        server.terminate()
        server.wait(30)
    if args.json:
        print(json.dumps(stats))
        return
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_line()}")
    print(
        "| clients | seconds | requests | answered | answered/s | p50 s | p95 s | statuses | RSS MB after "
        "warm-up → end (max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {stats['clients']} | {stats['seconds']} | {stats['requests']} | {stats['answered']} | "
        f"{stats['answered_per_s']} | {stats['p50_s']} | {stats['p95_s']} | {stats['statuses']} | "
        f"{stats['rss_mb_after_warmup']} → {stats['rss_mb_end']} ({stats['rss_mb_max']}) |"
    )
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
