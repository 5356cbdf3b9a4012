"""Live sources: a real ffmpeg stream on 127.0.0.1 (cut and restarted mid-run), pushed frames, no backlog under a
slow model, triggers, clean stops, and the errors for sources that are not there."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
from conftest import wait_until
from videotools import HttpStream, free_port, make, scenes

from edgevlm.errors import InputError
from edgevlm.media.live import Trigger, watch
from edgevlm.media.sources import CaptureSource, PushSource, SourceError


@pytest.fixture(scope="module")
def vlm(tiny256):
    import edgevlm

    return edgevlm.load(tiny256[1], threads=1)


class SlowModel:
    """The real model plus a fixed delay per caption: a model much slower than the stream's frame rate."""

    def __init__(self, vlm, delay: float):
        self.vlm, self.delay = vlm, delay

    def caption(self, *args, **kw):
        r = self.vlm.caption(*args, **kw)
        time.sleep(self.delay)
        return r


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgevlm.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------------------------------- pushing
def test_push_source_keeps_only_the_newest_frame():
    src = PushSource()
    frames = [np.full((4, 6, 3), i, np.uint8) for i in range(50)]
    for i, f in enumerate(frames):
        src.push(f, timestamp=i / 10)
    got = src.get(timeout=0)
    assert got.timestamp == pytest.approx(4.9) and got.image[0, 0, 0] == 49
    assert src.get(timeout=0.01) is None  # nothing new
    assert (src.stats.frames_read, src.stats.frames_dropped, src.stats.frames_delivered) == (50, 49, 1)
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    src.push(bgr, color="bgr")
    assert tuple(src.get(timeout=0).image[0, 0]) == (0, 0, 255)
    with pytest.raises(InputError):
        src.push(np.zeros((2, 2), np.float32))
    src.close()
    assert src.finished
    with pytest.raises(SourceError):
        src.push(bgr)


def test_watch_pushed_frames_from_a_callback_pipeline(vlm):
    """A camera pipeline that calls back with frames (here a thread) feeding watch() through a PushSource."""
    src = PushSource()
    stop = threading.Event()

    def camera_callback_thread():
        colors = [(255, 0, 0), (0, 0, 255)]
        i = 0
        while not stop.is_set():
            frame = np.empty((120, 160, 3), np.uint8)
            frame[:] = colors[(i // 40) % 2]  # a scene change every 40 frames
            src.push(frame)
            i += 1
            time.sleep(0.005)

    t = threading.Thread(target=camera_callback_thread, daemon=True)
    t.start()
    fired = []
    try:
        caps = list(
            vlm.watch(
                src, max_new_tokens=2, max_captions=3, heartbeat=None, trigger=Trigger(".", callback=fired.append)
            )
        )
    finally:
        stop.set()
        t.join()
        src.close()
    # every caption matches; a run of matches is one event, so the callback ran once, for the first
    assert len(caps) == 3 and all(c.triggered for c in caps) and fired == caps[:1]
    assert caps[-1].frames_static > 0  # unchanged frames between the colour changes were skipped
    assert caps[-1].frames_dropped > 0


# ----------------------------------------------------------------------------------------- live network
def test_slow_model_on_a_fast_stream_has_no_backlog(vlm):
    """A 60 fps 640x480 stream, a model taking ~0.3 s per caption: every caption starts on a fresh frame, memory
    stays flat, and the frames nobody could look at are counted as dropped."""
    port = free_port()
    server = HttpStream(port, size="640x480", rate=60, seconds=60).start()
    proc = psutil.Process()
    src = CaptureSource(server.url, retry_for=5)
    ages, latencies, rss = [], [], []
    try:
        t0 = time.monotonic()
        for c in watch(SlowModel(vlm, 0.3), src, threshold=0, max_new_tokens=4, max_captions=20):
            ages.append(c.frame_age_ms)
            latencies.append(c.latency_ms)
            rss.append(proc.memory_info().rss / 2**20)
        elapsed = time.monotonic() - t0
        stats = src.stats
    finally:
        src.close()
        server.stop()
    assert len(ages) == 20
    # no backlog: every caption starts on a fresh frame (one frame is 17 ms; the bound leaves room for a busy CI
    # machine), and latency does not grow over the run (a queue would add ~0.3 s per caption)
    assert max(ages[2:]) < 250, ages
    assert np.mean(latencies[-5:]) < np.mean(latencies[2:7]) + 200, latencies
    assert stats.frames_dropped > stats.frames_delivered  # the frames the model had no time for were dropped
    assert max(rss[5:]) - rss[5] < 40, rss  # flat memory: MB
    assert elapsed > 20 * 0.3  # the slow model really was slow


def test_stream_cut_and_restarted_mid_run(vlm):
    port = free_port()
    server = HttpStream(port, rate=30).start()
    src = CaptureSource(server.url, retry_for=20)
    got, cut_at = [], None
    try:
        for c in watch(vlm, src, threshold=0, max_new_tokens=2, min_interval=0.2):
            got.append((time.monotonic(), c))
            if len(got) == 3:
                server.stop()  # the stream goes away mid-run ...
                cut_at = time.monotonic()
                threading.Timer(2.0, server.start).start()  # ... and comes back 2 s later
            if cut_at and c.reconnects >= 1 and len([g for g in got if g[0] > cut_at]) >= 3:
                break
    finally:
        src.close()
        time.sleep(2.5)
        server.stop()
    after = [c for t, c in got if t > cut_at + 1.5]
    assert len(after) >= 3 and all(c.reconnects == 1 for c in after)
    assert src.stats.disconnected_s >= 1.5


def test_stream_that_does_not_come_back_ends_with_an_error(vlm):
    port = free_port()
    server = HttpStream(port, rate=30).start()
    src = CaptureSource(server.url, retry_for=2)
    caps = []
    with pytest.raises(SourceError, match="did not come back within 2 s"):
        for c in watch(vlm, src, threshold=0, max_new_tokens=2):
            caps.append(c)
            if len(caps) == 2:
                server.stop()
    assert len(caps) >= 2


def test_cli_watch_stream_stops_cleanly_on_sigterm(tiny256, tmp_path):
    _, bundle = tiny256
    port = free_port()
    server = HttpStream(port, rate=30).start()
    out = tmp_path / "live.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgevlm.cli",
            "watch",
            server.url,
            "-m",
            str(bundle),
            "--format",
            "jsonl",
            "-o",
            str(out),
            "--threshold",
            "0",
            "--max-new-tokens",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # three captions have streamed out
        assert all(json.loads(line)["text"] for line in lines)
        # Appended as they come (a lost stream or a kill keeps every caption shown): all three are there now.
        assert wait_until(lambda: out.exists() and out.read_text().count("\n") >= 3)
        assert [json.loads(x) for x in out.read_text().splitlines()[:3]] == [json.loads(x) for x in lines]
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.stop()
    assert proc.returncode == 0 and "stopped" in err and "Traceback" not in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) >= 3 and len(records) == 3 + len(rest.splitlines())
    assert {"timestamp", "text", "latency_ms", "frame_age_ms", "frames_dropped"} <= set(records[0])
    assert "frames read" in err


# ------------------------------------------------------------------------------------------ files, CLI
def test_cli_watch_file_in_real_time_with_motion_gate_and_trigger_exit(tiny256, tmp_path):
    _, bundle = tiny256
    path = scenes(tmp_path / "s.mp4", ("red", "blue", "green"), seconds=1)
    t0 = time.monotonic()
    r = run_cli("watch", path, "-m", bundle, "--format", "jsonl", "--max-new-tokens", "2")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [round(d["timestamp"]) for d in records] == [0, 1, 2]  # one caption per scene: static frames skipped
    assert records[-1]["frames_static"] > 10
    assert took > 2.5  # replayed at the file's own pace (3 s), not as fast as it decodes
    r = run_cli("watch", path, "-m", bundle, "--max-new-tokens", "2", "--trigger", ".", "--trigger-exit", "7")
    assert r.returncode == 7 and "TRIGGER t=0.00s" in r.stderr and len(r.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    "source,expected",
    [
        ("http://127.0.0.1:{port}/nothing.ts", "could not open the stream"),
        ("/dev/video97", "does not exist"),
        ("97", "camera 97 could not be opened"),
        ("ftp://example/x", "unsupported stream address"),
        ("nope.mp4", "is not a camera index"),
    ],
)
def test_cli_watch_missing_sources(tiny256, source, expected):
    _, bundle = tiny256
    r = run_cli("watch", source.format(port=free_port()), "-m", bundle, timeout=120)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_watch_bad_trigger_and_empty_file(tiny256, tmp_path):
    _, bundle = tiny256
    path = make(tmp_path / "v.mp4", "testsrc", 1, ["-c:v", "libx264", "-pix_fmt", "yuv420p"])
    r = run_cli("watch", path, "-m", bundle, "--trigger", "(")
    assert r.returncode == 2 and "not a valid regular expression" in r.stderr
    empty = tmp_path / "e.mp4"
    empty.write_bytes(b"")
    r = run_cli("watch", empty, "-m", bundle)
    assert r.returncode == 2 and "0 bytes" in r.stderr


def test_udp_stream(vlm):
    from videotools import ffmpeg

    port = free_port()
    sender = subprocess.Popen(
        [
            ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "quiet",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=s=320x240:r=30:d=60",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "15",
            "-f",
            "mpegts",
            f"udp://127.0.0.1:{port}?pkt_size=1316",
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        src = CaptureSource(f"udp://127.0.0.1:{port}", retry_for=5)
        caps = list(watch(vlm, src, threshold=0, max_new_tokens=2, max_captions=3))
        src.close()
    finally:
        sender.kill()
        sender.wait()
    assert len(caps) == 3 and caps[0].timestamp < caps[1].timestamp < caps[2].timestamp
    assert max(c.frame_age_ms for c in caps) < 500


# ------------------------------------------------------------------------------------ several sources
def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (96 + 8 * i, 128, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("variant", ["fp32", "q4", "mixed"])
def test_caption_batch_equals_captions_one_by_one(tiny256, variant):
    """Several frames decoded as one batch give each frame's own caption, token for token: greedy and sampled
    (each row has its own generator), and with the int8 vision encoder of `mixed`, whose activation scale is per
    run (so each frame gets its own run)."""
    import edgevlm

    vlm = edgevlm.load(tiny256[1], variant=variant, vision_cache_size=0)
    frames = _frames(4)
    for kw in ({}, {"temperature": 0.9, "top_k": 20, "seed": 5}):
        one = [vlm.caption(f, max_new_tokens=24, split=False, cache=False, **kw) for f in frames]
        many = vlm.caption_batch(frames, max_new_tokens=24, split=False, cache=False, **kw)
        assert [r.token_ids for r in many] == [r.token_ids for r in one]
        assert [r.text for r in many] == [r.text for r in one]
        assert [r.finish_reason for r in many] == [r.finish_reason for r in one]


def test_caption_batch_2_2b_and_uneven_prompts(tiny22b):
    """The 2.2B layout batches too; images whose prompts differ in length (other tile grids) are captioned one
    by one, with the same answers."""
    import edgevlm

    vlm = edgevlm.load(tiny22b[1], vision_cache_size=0)
    frames = _frames(3, seed=1)
    assert [r.token_ids for r in vlm.caption_batch(frames, max_new_tokens=16, split=False)] == [
        vlm.caption(f, max_new_tokens=16, split=False).token_ids for f in frames
    ]
    rng = np.random.default_rng(2)
    uneven = [rng.integers(0, 255, size, dtype=np.uint8) for size in ((60, 80, 3), (700, 1000, 3))]
    assert [r.token_ids for r in vlm.caption_batch(uneven, max_new_tokens=8, split=True)] == [
        vlm.caption(f, max_new_tokens=8, split=True).token_ids for f in uneven
    ]


def test_watch_several_pushed_sources_names_each_caption(vlm):
    """Four cameras through one model: every round captions each source's newest frame together; each caption
    names its source and equals that frame's own caption."""
    frames = _frames(4, seed=3)
    sources = [PushSource(name=f"cam{i}") for i in range(4)]
    for src, frame in zip(sources, frames):
        src.push(frame)
    caps = list(vlm.watch(sources, max_new_tokens=6, max_captions=4, threshold=0))
    for src in sources:
        src.close()
    assert sorted(c.source for c in caps) == ["cam0", "cam1", "cam2", "cam3"]
    for c in caps:
        i = int(c.source[3:])
        assert (
            c.text
            == vlm.caption(
                frames[i], max_new_tokens=6, prompt="Describe this image in one sentence.", split=False, cache=False
            ).text
        )
    assert json.loads(json.dumps(caps[0].to_dict()))["source"] == caps[0].source
    same = [PushSource(), PushSource()]  # equal names get their position
    for src, frame in zip(same, frames):
        src.push(frame)
    assert sorted(c.source for c in vlm.watch(same, max_new_tokens=2, max_captions=2, threshold=0)) == [
        "push#1",
        "push#2",
    ]


def test_watch_closes_the_sources_it_opened_when_a_later_one_fails(vlm, tmp_path):
    """A list whose second source cannot be opened: the error is clear, and the first one (a file read by its own
    thread, in real time) is closed, not left running."""
    good = scenes(tmp_path / "good.mp4", ("red", "blue"), seconds=2)
    before = {t for t in threading.enumerate() if t.name.startswith("edgevlm-capture")}
    with pytest.raises(InputError, match="missing.mp4"):
        next(vlm.watch([good, tmp_path / "missing.mp4"], max_new_tokens=2))
    left = [t for t in threading.enumerate() if t.name.startswith("edgevlm-capture") and t not in before]
    assert not [t for t in left if t.is_alive()], left


def test_cli_watch_two_files_names_sources(tiny256, tmp_path):
    a = scenes(tmp_path / "a.mp4", ("red", "blue"), seconds=1)
    b = scenes(tmp_path / "b.mp4", ("green", "white"), seconds=1)
    # In real time (the files' own pace): both open on a scene and change once, so each gives two captions.
    r = run_cli("watch", a, b, "-m", tiny256[1], "--format", "jsonl", "--max-captions", "4", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 4 and {x["source"] for x in lines} == {str(a), str(b)}
    assert f"{a}: frames read" in r.stderr and f"{b}: frames read" in r.stderr
