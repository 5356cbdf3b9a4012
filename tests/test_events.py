"""Events with proof (issue 28): hold and cooldown, the event record and its schema, the evidence frame, the
lookback clip, and what is left when a watch is stopped mid-clip.

The tiny test model has random weights, so what it answers about a frame is arbitrary, but it is a function of the
frame: the end-to-end tests pick an object whose frames the model answers differently from the empty scene (by
running it on the scene's decoded frames), then trigger on that answer. What is under test is the watch's event
logic, evidence and clips over a real stream, not the model's eyesight.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
from conftest import require
from videotools import HttpStream, free_port, run_ffmpeg

import edgevlm
from edgevlm.errors import InputError
from edgevlm.media.events import EventState, Trigger, end_event, event_schema, new_event
from edgevlm.media.lookback import FrameRing
from edgevlm.media.video import Frame
from edgevlm.records import LiveCaption

PROMPT = "Is there a box?"
CHOICES = ["yes", "no"]
SIZE = (320, 240)
BOX = (100, 60, 120, 120)  # x, y, w, h
RATE = 10


def caption(t: float, text: str = "x") -> LiveCaption:
    return LiveCaption(t, text, 0.0, 0.0, 0.0, 0, 0, 0, 0)


def run_states(trigger: Trigger, answers: list[tuple[float, bool | None]]) -> list[tuple[float, str]]:
    state, phases = EventState(trigger), []
    for t, matched in answers:
        phase = state.update(caption(t), matched)
        if phase == "start":
            new_event(state, caption(t), "cam", {})
        elif phase == "end":
            end_event(state, "cooldown")
        if phase:
            phases.append((t, phase))
    return phases


def test_hold_and_cooldown_ride_out_flicker():
    t = Trigger("x", hold=2, cooldown=10)
    # appears at 2 s, one frame missing at 8 s, stays to 12 s, then gone: one event, ending 10 s after it went
    answers = [(i / 2, 2 <= i / 2 < 12 and i != 16) for i in range(0, 60)]
    assert run_states(t, answers) == [(2.5, "start"), (22.0, "end")]
    # a single matching caption (noise) never starts an event with hold=2
    assert run_states(t, [(0, False), (1, True), (2, False), (3, True), (4, False)]) == []
    # hold_s: two matches are not enough until 3 s have passed since the first
    assert run_states(Trigger("x", hold=2, hold_s=3), [(0, True), (1, True), (2, True), (3, True)]) == [(3, "start")]
    # after the cooldown the trigger re-arms: a second run is a second event
    answers = [(0, True), (1, False), (2, False), (3, True), (4, False), (4.5, True), (5, False), (6, False)]
    assert run_states(Trigger("x", cooldown=1), answers) == [(0, "start"), (2, "end"), (3, "start"), (6, "end")]
    assert run_states(Trigger("x"), [(0, True), (1, True), (2, False), (3, True)]) == [
        (0, "start"),
        (2, "end"),
        (3, "start"),
    ]
    # an answer that could not complete (None) neither counts nor breaks a run
    assert run_states(Trigger("x", hold=2), [(0, True), (1, None), (2, True)]) == [(2, "start")]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"hold": 0}, "hold=0"),
        ({"hold": 1.5}, "whole number"),
        ({"hold": True}, "hold=True"),
        ({"cooldown": -1}, "cooldown=-1"),
        ({"hold_s": float("nan")}, "hold_s=nan"),
        ({"cooldown": "10"}, "cooldown='10'"),
    ],
)
def test_bad_trigger_values_say_what_to_give(kw, message):
    with pytest.raises(InputError, match=re.escape(message)):
        Trigger("x", **kw)


def test_ring_stays_under_its_cap_and_keeps_the_lookback():
    ready = []
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (240, 320, 3), np.uint8)  # incompressible JPEGs
    size = len(cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 85])[1])
    ring = FrameRing(2.0, ready.append, cap_mb=30 * size / 2**20)  # 2 s at 10 per second, and 10 more frames
    for i in range(300):
        ring.add(Frame(noise, i / 30, i, 0.0))
        if i == 150:
            ring.start_clip("e", 150 / 30 - 1.0, 150 / 30 + 20)  # longer than the cap allows
        assert ring.nbytes <= ring.cap
    assert ring.peak_bytes <= ring.cap
    (clip,) = ready
    assert not clip.complete and clip.frames[0][0] <= 150 / 30 - 0.9  # cut by the cap, but started in the past
    ready.clear()
    ring2 = FrameRing(1.0, ready.append)
    for i in range(100):
        ring2.add(Frame(noise[:60, :80], i / 30, i, 0.0))
    kept = [t for t, _ in ring2._frames]
    assert kept[-1] - kept[0] <= 1.0 and len(kept) >= 9  # ~10 per second of the last second


# ------------------------------------------------------------------------------------------------ a real stream
def scene_filter(color: str, missing_frame: int) -> str:
    """Empty grey scene; the box appears at 6 s, is gone for one frame at 12 s, stays until 16 s, then leaves."""
    x, y, w, h = BOX
    enable = f"between(t,6,15.99)*not(eq(n,{missing_frame}))"
    return f"drawbox=x={x}:y={y}:w={w}:h={h}:color={color}:t=fill:enable='{enable}'"


def scene_inputs(color: str, seconds: int, enable: str | None = None) -> list[str]:
    x, y, w, h = BOX
    box = (
        scene_filter(color, 12 * RATE)
        if enable is None
        else f"drawbox=x={x}:y={y}:w={w}:h={h}:color={color}:t=fill:enable='{enable}'"
    )
    return [
        "-f",
        "lavfi",
        "-i",
        f"color=c=0x808080:s={SIZE[0]}x{SIZE[1]}:r={RATE}:d={seconds}",
        "-vf",
        box + ",format=yuv444p",
    ]


LOSSLESS = ["-c:v", "libx264", "-qp", "0", "-g", str(RATE)]  # the pixels the scene fixture captioned, every frame


@pytest.fixture(scope="module")
def scene(tiny256, tmp_path_factory):
    """(box colour, the answer that means 'box'): the first colour whose decoded frames the model answers
    differently from the empty scene."""
    vlm = edgevlm.load(tiny256[1])
    folder = tmp_path_factory.mktemp("scene")
    for color in ("0xFFFFFF", "0x1EE61E", "0xE61E1E", "0x1E1EE6", "0x000000"):
        path = folder / f"{color}.mkv"
        run_ffmpeg(*scene_inputs(color, 8), *LOSSLESS, str(path))
        cap = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
        # one tile per frame, as a watch captions them by default
        empty = {vlm.caption(f, prompt=PROMPT, choices=CHOICES, split=False).value for f in frames[:5]}
        boxed = {vlm.caption(f, prompt=PROMPT, choices=CHOICES, split=False).value for f in frames[65:70]}
        if len(empty) == 1 and len(boxed) == 1 and empty != boxed:
            return color, boxed.pop()
    pytest.fail("no box colour changes the tiny model's answer; pick other colours")


def probe(clip: Path) -> tuple[float, int]:
    """(duration, frames) as ffprobe reads the file, decoding every frame (so it plays)."""
    ffprobe = shutil.which("ffprobe")
    require(ffprobe, "the clip test reads clips with ffprobe: apt install ffmpeg (.ci/run does)")
    run = subprocess.run(
        [
            ffprobe,
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames:format=duration",
            "-of",
            "json",
            str(clip),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    info = json.loads(run.stdout)
    return float(info["format"]["duration"]), int(info["streams"][0]["nb_read_frames"])


def test_one_event_with_evidence_and_a_clip_from_a_live_stream(tiny256, scene, tmp_path):
    color, answer = scene
    stream = HttpStream(free_port(), rate=RATE, inputs=scene_inputs(color, 40), lossless=True).start()
    records = []
    lookback, after = 2.0, 3.0
    trigger = Trigger(when=f"value == {answer}", hold=2, cooldown=10, on_event=records.append)
    vlm = edgevlm.load(tiny256[1])
    caps = []
    try:
        for c in vlm.watch(
            stream.url,
            prompt=PROMPT,
            choices=CHOICES,
            threshold=0,
            trigger=trigger,
            evidence=tmp_path / "events",
            lookback=lookback,
            after=after,
        ):
            caps.append(c)
            if c.event is not None and c.event.phase == "end":
                break
    finally:
        stream.stop()
    # a stream's times count from when the watch joined it: the box is in view for 10 s of them, and the empty
    # scene before it for long enough to fill the lookback
    matches = [c.timestamp for c in caps if c.triggered]
    assert matches and 9.5 < max(matches) - min(matches) < 10.2 and min(matches) > lookback + 0.5, matches
    assert [r.phase for r in records] == ["start", "clip", "end"], records
    start, clip_record, end = records
    assert start.id == clip_record.id == end.id and end.reason == "cooldown"
    assert start.start == min(matches) and start.fired == matches[1] and end.end == max(matches)
    assert end.fired == start.fired and caps[-1].timestamp - end.end >= 10  # the cooldown, from the box's leaving
    # the same records, in order, in events.jsonl, each valid against the published schema
    lines = [json.loads(line) for line in (tmp_path / "events" / "events.jsonl").read_text().splitlines()]
    assert lines == [r.to_dict() for r in records]
    for line in lines:
        jsonschema.validate(line, event_schema(), format_checker=jsonschema.FormatChecker())
    assert start.model["prompt"] == PROMPT and start.model["constraint"]["kind"] == "choices"
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in start.model["files"].values())
    # the evidence frame shows the box
    jpeg = cv2.imread(str(tmp_path / "events" / start.evidence))
    x, y, w, h = BOX
    box_pixels = jpeg[y + 10 : y + h - 10, x + 10 : x + w - 10].reshape(-1, 3).mean(0)
    want = np.array([int(color[6:8], 16), int(color[4:6], 16), int(color[2:4], 16)])  # BGR
    assert np.abs(box_pixels - want).max() < 20, (box_pixels, want)
    # the clip: from lookback before the first matching caption to after past the one that fired, and it plays
    clip = clip_record.clip
    assert (
        clip["complete"]
        and clip["start"] <= start.start - lookback + 0.15
        and clip["end"] >= start.fired + after - 0.01
    )
    duration, frames = probe(tmp_path / "events" / clip["file"])
    assert frames == clip["frames"] and abs(duration - (clip["end"] - clip["start"])) < 0.5, (duration, clip)
    assert duration >= lookback + after - 0.2
    assert not [p for p in (tmp_path / "events").iterdir() if p.name.startswith(".")]  # no temporaries left
    # the captions carry the records of the moments they started and ended the event
    assert [c.event.phase for c in caps if c.event] == ["start", "end"]


def test_cli_watch_stopped_mid_clip_leaves_nothing_half_written(tiny256, scene, tmp_path):
    color, answer = scene
    stream = HttpStream(free_port(), rate=RATE, inputs=scene_inputs(color, 60), lossless=True).start()
    events = tmp_path / "events"
    cmd = [sys.executable, "-m", "edgevlm.cli", "watch", stream.url, "-m", str(tiny256[1]), "--prompt", PROMPT]
    cmd += ["--choices", ",".join(CHOICES), "--threshold", "0", "--trigger", f"value == {answer}", "--hold", "2"]
    cmd += ["--cooldown", "10", "--evidence", str(events), "--lookback", "1", "--after", "30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (events / "events.jsonl").is_file() or not (events / "events.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        time.sleep(1.0)  # the clip is collecting frames (30 s after the event)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        stream.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), err[-2000:]
    assert "TRIGGER t=" in err and "Traceback" not in err, err[-2000:]
    names = sorted(p.name for p in events.iterdir())
    assert not [n for n in names if n.startswith(".") or n.endswith(".mp4")], names  # no clip, no temporary
    (start,) = [json.loads(line) for line in (events / "events.jsonl").read_text().splitlines()][:1]
    assert start["phase"] == "start" and start["evidence"] in names
    jsonschema.validate(start, event_schema())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hold", "0"], "--hold"),
        (["--cooldown", "-3"], "--cooldown"),
        (["--lookback", "5"], "--evidence"),
        (["--evidence", "EVENTS"], "--trigger"),
    ],
)
def test_cli_event_flags_refuse_bad_values(tiny256, tmp_path, args, message):
    args = [a.replace("EVENTS", str(tmp_path / "ev")) for a in args]
    if "--hold" in args or "--cooldown" in args or "--lookback" in args:
        args += ["--trigger", "x"]
    run = subprocess.run(
        [sys.executable, "-m", "edgevlm.cli", "watch", "nowhere.mp4", "-m", str(tiny256[1]), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "ev").exists()


def test_a_killed_watchs_temporaries_are_removed_by_the_next(tmp_path):
    """SIGKILL leaves a hidden temporary (nothing can remove it then); the next watch on the folder removes ours
    once nobody has written to them for an hour, and leaves everything else."""
    from edgevlm.media.evidence import EventLog

    folder = tmp_path / "events"
    folder.mkdir()
    stale, fresh, other = (folder / n for n in (".a.mp4.0123abcd.partial.mp4", ".b.jpg.89abcdef.partial", ".keep"))
    for path in (stale, fresh, other):
        path.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    log = EventLog(folder)
    log.drain()
    log.close()
    assert not stale.exists() and fresh.exists() and other.exists()


def test_an_events_folder_that_cannot_be_written_fails_before_any_frame(tiny256, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    src = edgevlm.PushSource()
    vlm = edgevlm.load(tiny256[1])
    with pytest.raises(edgevlm.OutputError, match="cannot be written"):
        next(iter(vlm.watch(src, trigger=Trigger("x"), evidence=blocker / "events")))
    assert blocker.read_text() == "not a folder"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(edgevlm.OutputError, match="cannot be written"):
            next(iter(vlm.watch(src, trigger=Trigger("x"), evidence=ro)))


# ------------------------------------------------------------------------------------------------------- RTSP
def rtsp_python() -> str:
    python = os.environ.get("EDGEVLM_GST_PYTHON", "/usr/bin/python3")
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    ok = Path(python).exists() and subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    require(
        ok,
        "the RTSP tests serve a stream with GStreamer's RTSP server: apt install python3-gi gir1.2-gst-rtsp-server-1.0 "
        "gstreamer1.0-plugins-good, and set EDGEVLM_GST_PYTHON to a python that imports gi (.ci/gstreamer-venv)",
    )
    return python


class RtspServer:
    """tests/rtsp_server.py in its own process: rtsp://127.0.0.1:PORT/cam streaming FILE in real time."""

    def __init__(self, python: str, port: int, path: Path):
        script = Path(__file__).with_name("rtsp_server.py")
        self.proc = subprocess.Popen([python, str(script), str(port), str(path)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready", "no RTSP server"
        self.url = f"rtsp://127.0.0.1:{port}/cam"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_rtsp_camera_restarting_mid_event(tiny256, scene, tmp_path):
    """The scripted scene over real RTSP; the camera's server dies while the box is in view and comes back a second
    later with the box still there: the watch reconnects, captions resume, and it stays one event."""
    python = rtsp_python()
    color, answer = scene
    first, second = tmp_path / "a.mp4", tmp_path / "b.mp4"
    run_ffmpeg(*scene_inputs(color, 30, f"between(t,8,30)*not(eq(n,{12 * RATE}))"), *LOSSLESS, str(first))
    run_ffmpeg(*scene_inputs(color, 30, "lt(t,10)"), *LOSSLESS, str(second))  # the box, then it leaves
    port = free_port()
    servers = [RtspServer(python, port, first)]
    records: list[edgevlm.Event] = []
    started = threading.Event()

    def on_event(e: edgevlm.Event) -> None:
        records.append(e)
        if e.phase == "start":
            started.set()

    def restart() -> None:
        if started.wait(120):
            time.sleep(2)
            servers[0].stop()
            time.sleep(1)
            servers.append(RtspServer(python, port, second))

    restarter = threading.Thread(target=restart, daemon=True)
    restarter.start()
    trigger = Trigger(when=f"value == {answer}", hold=2, cooldown=10, on_event=on_event)
    vlm = edgevlm.load(tiny256[1])
    caps = []
    try:
        for c in vlm.watch(
            servers[0].url,
            prompt=PROMPT,
            choices=CHOICES,
            threshold=0,
            trigger=trigger,
            evidence=tmp_path / "events",
            lookback=2,
            after=1,
            source_options={"retry_for": 30},
        ):
            caps.append(c)
            if c.event is not None and c.event.phase == "end":
                break
    finally:
        restarter.join(30)
        for server in servers:
            server.stop()
    assert len(servers) == 2 and caps[-1].reconnects >= 1
    assert [r.phase for r in records] == ["start", "clip", "end"], [(r.phase, r.start, r.end) for r in records]
    after_reconnect = [c for c in caps if c.reconnects >= 1]
    assert any(c.triggered for c in after_reconnect), "the box was still in view after the camera came back"
    assert records[-1].end > max(c.timestamp for c in caps if c.reconnects == 0)  # the same event went on after it
    assert records[1].clip["complete"] and (tmp_path / "events" / records[1].clip["file"]).is_file()
