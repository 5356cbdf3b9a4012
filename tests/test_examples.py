"""The examples run as users would run them: a real OpenCV capture loop, a callback-style camera SDK, and a real
GStreamer pipeline (videotestsrc -> appsink, through Debian's PyGObject; .ci/run prepares EDGEVLM_GST_PYTHON)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
from conftest import require
from videotools import run_ffmpeg, scenes

from edgevlm.media.events import event_schema

H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(python: str, script: str, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_opencv_capture_loop_example(tiny256, tmp_path):
    path = scenes(tmp_path / "s.mp4", ("red", "blue", "green"), seconds=2)
    r = run(sys.executable, "opencv_capture_loop.py", tiny256[1], path, 2)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all("latency" in line for line in lines)


def test_callback_integration_example(tiny256):
    r = run(sys.executable, "callback_integration.py", tiny256[1], ".", 3)
    assert r.returncode == 0, r.stderr
    assert "ALERT" in r.stdout and "alert(s) for /./" in r.stdout


def test_caption_image_example(tiny256, tmp_path):
    from conftest import random_image

    random_image(120, 90).save(tmp_path / "a.png")
    r = run(sys.executable, "caption_image.py", tiny256[1], tmp_path / "a.png")
    assert r.returncode == 0, r.stderr
    assert "tiles" in r.stdout


def test_gstreamer_appsink_example(tiny256):
    python = os.environ.get("EDGEVLM_GST_PYTHON")
    require(
        python,
        "set EDGEVLM_GST_PYTHON to a python with PyGObject + GStreamer and edgevlm: "
        ".ci/gstreamer-venv .venv-gst && export EDGEVLM_GST_PYTHON=$PWD/.venv-gst/bin/python",
    )
    r = run(python, "gstreamer_appsink.py", tiny256[1], "", 3)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all("latency" in line for line in lines)


def test_structured_alarm_example(tiny256, tmp_path):
    path = scenes(tmp_path / "s.mp4", ("red", "blue", "green"), seconds=1)
    r = run(sys.executable, "structured_alarm.py", tiny256[1], path, 3)
    assert r.returncode == 0, r.stderr
    captions = [line for line in r.stdout.splitlines() if line.startswith("[")]
    alarms = [line for line in r.stdout.splitlines() if line.startswith("ALARM")]
    assert 1 <= len(captions) <= 3 and all("Scene(person=" in line for line in captions)
    fired = [("person=True" in line) or ("people=0" not in line) for line in captions]
    # one alarm per run of captions whose value meets the condition (an event; hold 1, cooldown 0)
    assert len(alarms) == sum(f and (i == 0 or not fired[i - 1]) for i, f in enumerate(fired))


def test_doorbell_example(tiny256, tmp_path):
    """A dark porch where a bright shape stands from 6 s to 10 s (the tiny model answers person=true for it, false
    for the empty porch): the alerts, clips and ends the example prints are exactly those that hold 2 and
    cooldown 10 s make of its captions, and each comes with its files and a record valid against the schema."""
    video = tmp_path / "porch.mp4"
    box = "drawbox=x=100:y=60:w=120:h=120:color=white:t=fill:enable='between(t,6,10)'"
    run_ffmpeg("-f", "lavfi", "-i", "color=c=black:s=320x240:r=10:d=22", "-vf", box, *H264, str(video))
    events = tmp_path / "events"
    r = run(sys.executable, "doorbell.py", tiny256[1], video, events, 60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    captions = [
        (float(m[1]), m[2] == "True") for line in lines if (m := re.match(r"\[\s*([\d.]+)s\] Door\(person=(\w+)", line))
    ]
    expected, run_length, active, false_since = [], 0, False, None
    for t, person in captions:  # the rules, written out independently of edgevlm.media.events
        if active:
            false_since = None if person else (t if false_since is None else false_since)
            if false_since is not None and t - false_since >= 10:
                expected.append("END")
                active, run_length = False, 0
        else:
            run_length = run_length + 1 if person else 0
            if run_length >= 2:
                expected.append("ALERT")
                active, false_since = True, None
    if active:
        expected.append("END")  # the video ended first
    said = [line.split()[0] for line in lines if line.startswith(("ALERT", "END"))]
    assert "ALERT" in expected and said == expected, (captions, said)
    records = [json.loads(line) for line in (events / "events.jsonl").read_text().splitlines()]
    for record in records:
        jsonschema.validate(record, event_schema())
    starts = [rec for rec in records if rec["phase"] == "start"]
    assert len(starts) == expected.count("ALERT") and all((events / rec["evidence"]).is_file() for rec in starts)
    clips = [rec for rec in records if rec["phase"] == "clip"]
    assert len(clips) == len(starts) and all((events / rec["clip"]["file"]).stat().st_size > 0 for rec in clips)
