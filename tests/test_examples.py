"""The examples run as users would run them: a real OpenCV capture loop, a callback-style camera SDK, and a real
GStreamer pipeline (videotestsrc -> appsink, through Debian's PyGObject; .ci/run prepares EDGEVLM_GST_PYTHON)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import require
from videotools import scenes

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
    assert len(alarms) == sum(fired)  # the trigger fired exactly on the captions whose value meets the condition
