"""Video files: decoding (codecs, containers, odd sizes, rotation, variable frame rate), SmolVLM2's whole-clip
video prompt against transformers, timeline captions, and the SRT / WebVTT / JSONL outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
from videotools import make, run_ffmpeg, scenes

from edgevlm.errors import InputError
from edgevlm.media.video import clip_indices, frames_at, probe, read_frames

H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
CODECS = {  # name: (file suffix, encoder args, size)
    "mp4-h264": (".mp4", H264, "320x240"),
    "mkv-vp9": (".mkv", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"], "320x240"),
    "avi-mjpeg": (".avi", ["-c:v", "mjpeg", "-q:v", "3"], "320x240"),
    "webm-vp8": (".webm", ["-c:v", "libvpx", "-deadline", "realtime", "-b:v", "1M"], "320x240"),
    "mov-mpeg4": (".mov", ["-c:v", "mpeg4", "-q:v", "3"], "320x240"),
    "mkv-ffv1-odd": (".mkv", ["-c:v", "ffv1"], "161x97"),
    "mp4-h264-odd": (".mp4", ["-c:v", "libx264", "-pix_fmt", "yuv444p"], "333x251"),
}


def run_cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgevlm.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


# ----------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("name", list(CODECS))
def test_decodes_codecs_and_containers_with_stream_timestamps(tmp_path, name):
    suffix, codec, size = CODECS[name]
    path = make(tmp_path / f"v{suffix}", "color=c=red", 3, codec, size=size, rate=10)
    info = probe(path)
    w, h = map(int, size.split("x"))
    assert (info.width, info.height) == (w, h) and info.fps == pytest.approx(10)
    frames = list(read_frames(path))
    assert len(frames) == 30
    assert frames[0].image.shape == (h, w, 3) and frames[0].image.dtype == np.uint8
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(30) / 10, atol=2e-3)
    r, g, b = frames[15].image.reshape(-1, 3).mean(0)  # RGB order, not OpenCV's BGR
    assert r > 200 and g < 60 and b < 60


def test_rotation_metadata_is_applied(tmp_path):
    plain = make(tmp_path / "plain.mp4", "testsrc", 2, H264, size="320x240")
    rotated = tmp_path / "rotated.mp4"
    run_ffmpeg("-display_rotation", "90", "-i", str(plain), "-c", "copy", str(rotated))
    info = probe(rotated)
    assert (info.width, info.height) == (240, 320) and info.rotation in (90, 270)
    frame = next(iter(read_frames(rotated)))
    assert frame.image.shape == (320, 240, 3)
    # ffmpeg's own player-side decoding (it applies the display matrix too) is the reference picture
    png = tmp_path / "first.png"
    run_ffmpeg("-i", str(rotated), "-frames:v", "1", str(png))
    from PIL import Image

    expected = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert expected.shape == frame.image.shape
    assert np.abs(frame.image.astype(int) - expected).mean() < 3
    assert np.abs(np.rot90(frame.image, 2).astype(int) - expected).mean() > 30  # not upside down


def test_variable_frame_rate_timestamps_come_from_the_stream(tmp_path):
    path = make(
        tmp_path / "vfr.mp4",
        "testsrc",
        4,
        [*H264, "-fps_mode", "passthrough"],
        rate=30,
        filters="settb=1/30,setpts='if(lt(N,30),N,30+(N-30)*3)'",
    )
    times = [f.timestamp for f in read_frames(path)]
    expected = [n / 30 if n < 30 else 1 + (n - 30) / 10 for n in range(len(times))]
    np.testing.assert_allclose(times, expected, atol=2e-3)
    assert len(times) > 40
    # sampling at 2 per second picks frames by time, not by count
    picked = [round(f.timestamp, 2) for f in read_frames(path, every=0.5)]
    assert picked[:6] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_seeking_and_sampled_frames(tmp_path):
    path = make(tmp_path / "long.mp4", "testsrc", 30, [*H264, "-g", "25"], size="160x120", rate=25)
    frames = frames_at(path, [0.0, 0.4, 20.0, 29.96])  # 20 s is reached by seeking, not by decoding all
    assert [f.index for f in frames] == [0, 10, 500, 749]
    assert [round(f.timestamp, 2) for f in frames] == [0.0, 0.4, 20.0, 29.96]
    every = [f.timestamp for f in read_frames(path, every=10.0, start=5.0)]
    np.testing.assert_allclose(every, [5.0, 15.0, 25.0], atol=1e-3)


BAD_VIDEOS = ["missing", "empty", "garbage", "audio_only", "truncated_header"]


def bad_video(tmp_path, kind: str):
    """A file that is not a usable video, of the given kind ('missing' leaves no file)."""
    path = tmp_path / "bad.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        # Fixed bytes: unseeded noise once probed as a playable stream (FFmpeg guesses formats from content) and
        # the CLI captioned it; this seed's bytes are refused as "cannot be opened".
        path.write_bytes(np.random.default_rng(0).bytes(50_000))
    elif kind == "audio_only":
        run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(path))
    elif kind == "truncated_header":
        good = make(tmp_path / "good.mp4", "testsrc", 3, H264)  # moov atom at the end: cut it off
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


@pytest.mark.parametrize("kind", BAD_VIDEOS)
def test_bad_videos_raise_clear_errors(tmp_path, kind):
    path = bad_video(tmp_path, kind)
    with pytest.raises(InputError) as e:
        probe(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    assert {
        "missing": "does not exist",
        "empty": "0 bytes",
        "garbage": "cannot be opened",
        "audio_only": "no video stream",
        "truncated_header": "no video stream",
    }[kind] in msg


def test_truncated_stream_yields_the_frames_that_decode(tmp_path):
    good = make(tmp_path / "good.mp4", "testsrc", 6, [*H264, "-movflags", "+faststart"])
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.6)])
    frames = list(read_frames(cut))
    assert 5 < len(frames) < 60
    sampled = frames_at(cut, [0.0, 1.0, 5.9])  # past the end: the last frame that decodes
    assert len(sampled) == 3 and sampled[-1].index == frames[-1].index


# ------------------------------------------------------------------------------- whole-clip parity (prompt)
def _reference_video(ckpt, cache, path):
    import torch
    from conftest import reference
    from transformers.video_utils import load_video, read_video_opencv

    model, proc = reference(ckpt, cache)
    vp = proc.video_processor
    frames, meta = read_video_opencv(
        str(path), sample_indices_fn=partial(vp.sample_frames, num_frames=vp.num_frames, fps=vp.fps)
    )

    # The model card's path, apply_chat_template(tokenize=True). Its default video decoders (torchcodec, else
    # torchvision's read_video, gone in torchvision 0.29) are not available here, so the processor fetches the
    # file with transformers' own OpenCV reader instead; sampling and everything after it are the processor's.
    def fetch_videos(urls, sample_indices_fn=None):
        if isinstance(urls, list):
            return list(zip(*[fetch_videos(u, sample_indices_fn) for u in urls]))
        return load_video(urls, backend="opencv", sample_indices_fn=sample_indices_fn)

    vp.fetch_videos = fetch_videos
    msgs = [
        {"role": "user", "content": [{"type": "video", "path": str(path)}, {"type": "text", "text": "What happens?"}]}
    ]
    inputs = proc.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return inputs, out[0, inputs["input_ids"].shape[1] :].tolist(), meta


@pytest.mark.parametrize("seconds,rate", [(12, 10), (70, 2)])  # 70 s > 64 frames + 2 s: the ends are skipped
def test_whole_clip_prompt_and_tokens_match_transformers(tiny256, reference_cache, tmp_path, seconds, rate):
    import edgevlm
    from edgevlm.engine.preprocess import process_video_frame

    ckpt, bundle = tiny256
    path = make(tmp_path / "clip.mp4", "testsrc", seconds, H264, size="192x144", rate=rate)
    inputs, ref_tokens, meta = _reference_video(ckpt, reference_cache, path)
    vlm = edgevlm.load(bundle)
    assert list(clip_indices(probe(path), vlm.spec.video_fps, vlm.spec.video_max_frames)) == list(meta.frames_indices)
    item = {"type": "video", "video": path}
    prepared = vlm.prepare([{"role": "user", "content": [item, {"type": "text", "text": "What happens?"}]}])
    assert prepared.input_ids == inputs["input_ids"][0].tolist()
    # pixels: Pillow's bicubic against torchvision's, within one grey level on a tiny fraction of pixels
    frames = frames_at(path, [i / meta.fps for i in meta.frames_indices])
    ours = np.stack([process_video_frame(f.image, vlm.spec) for f in frames])
    diff = np.abs(ours - inputs["pixel_values"][0].numpy()) * 127.5
    assert diff.max() <= 2.01 and (diff > 0.01).mean() < 2e-3 and (diff > 1.01).mean() < 1e-5
    r = vlm.ask_video(path, "What happens?", max_new_tokens=12)
    assert r.token_ids == ref_tokens
    assert r.tiles == len(meta.frames_indices)


def test_video_frames_from_the_caller(tiny256, tmp_path):
    """Frames pushed by the caller (not a file) go through the same video prompt."""
    import edgevlm
    from edgevlm.media.video import Frame

    _, bundle = tiny256
    vlm = edgevlm.load(bundle)
    rng = np.random.default_rng(0)
    frames = [Frame(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8), t) for t in (0.0, 61.0, 125.5)]
    prepared = vlm.prepare(
        [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "Hi"}]}]
    )
    text = vlm.tokenizer.decode(prepared.input_ids, skip_special_tokens=False)
    assert "three frames from a 0:02:05 [H:MM:SS] video" in text
    assert "Frame from 00:00:" in text and "Frame from 01:01:" in text and "Frame from 02:05:" in text
    with pytest.raises(InputError):
        vlm.ask_video([], "Hi")


# --------------------------------------------------------------------------------------------- timeline
def test_timeline_cuts_at_scenes_and_merges_static_stretches(tiny256, tmp_path):
    import edgevlm

    _, bundle = tiny256
    path = scenes(tmp_path / "scenes.mp4", ("red", "blue", "green"), seconds=4)
    vlm = edgevlm.load(bundle)
    segs = list(vlm.timeline(path, every=1.0, max_new_tokens=4))
    assert [(s.start, s.end) for s in segs] == [(0.0, 4.0), (4.0, 8.0), (8.0, 12.0)]
    assert [s.merged for s in segs] == [3, 3, 3]  # 1 s sample points inside a static scene are not captioned
    assert all(s.text and s.timings["new_tokens"] == 4 for s in segs)
    # without scene cuts and with a long interval, the cut is found at the next sample point only
    coarse = list(vlm.timeline(path, every=5.0, scene=False, max_new_tokens=2))
    assert [(s.start, s.end) for s in coarse] == [(0.0, 5.0), (5.0, 10.0), (10.0, 12.0)]


def _check_cues(cues):
    assert cues, "no cues"
    for a, b in zip(cues, cues[1:]):
        assert a[0] < a[1] <= b[0] < b[1]  # increasing, non-overlapping
    assert all(text.strip() for _, _, text in cues)


@pytest.mark.parametrize("fmt", ["srt", "vtt", "jsonl", "text"])
def test_cli_caption_video_writes_valid_files(tiny256, tmp_path, fmt):
    _, bundle = tiny256
    path = scenes(tmp_path / "scenes.mp4", ("red", "white", "blue", "black"), seconds=3)
    out = tmp_path / f"out.{fmt}"
    r = run_cli("caption", path, "-m", bundle, "--format", fmt, "-o", out, "--every", "1", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.glob(".*partial"))
    content = out.read_text(encoding="utf-8")
    if fmt == "srt":
        import srt

        subs = list(srt.parse(content))
        assert [s.index for s in subs] == [1, 2, 3, 4]
        cues = [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs]
    elif fmt == "vtt":
        import io

        import webvtt

        assert content.startswith("WEBVTT\n\n")
        cues = [
            (
                c.start_in_seconds + c.start_time.milliseconds / 1e3,
                c.end_in_seconds + c.end_time.milliseconds / 1e3,
                c.text,
            )
            for c in webvtt.from_buffer(io.StringIO(content))
        ]
    elif fmt == "jsonl":
        records = [json.loads(line) for line in content.splitlines()]
        assert {"start", "end", "text", "frame_time", "timings"} <= set(records[0])
        cues = [(d["start"], d["end"], d["text"]) for d in records]
    else:
        lines = content.splitlines()
        assert lines[0].startswith("[00:00:00.000 --> 00:00:03.000] ")
        cues = [(i * 3, i * 3 + 3, line.split("] ", 1)[1]) for i, line in enumerate(lines)]
    _check_cues(cues)
    assert [(round(a, 3), round(b, 3)) for a, b, _ in cues] == [(0, 3), (3, 6), (6, 9), (9, 12)]


def test_cli_clip_mode_and_ask_on_video(tiny256, tmp_path):
    _, bundle = tiny256
    path = make(tmp_path / "v.webm", "testsrc", 4, CODECS["webm-vp8"][1])
    r = run_cli("caption", path, "-m", bundle, "--mode", "clip", "--max-new-tokens", "3", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["tiles"] == 4 and rec["new_tokens"] == 3
    r = run_cli("ask", path, "What happens?", "-m", bundle, "--max-new-tokens", "3", "--max-frames", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tiles"] == 2


@pytest.mark.parametrize("kind", BAD_VIDEOS)
def test_cli_bad_video_is_one_line_and_no_file(tiny256, tmp_path, kind):
    _, bundle = tiny256
    path = bad_video(tmp_path, kind)
    out = tmp_path / "out.srt"
    r = run_cli("caption", path, "-m", bundle, "--format", "srt", "-o", out)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_cli_caption_interrupted_leaves_a_complete_file(tiny256, tmp_path):
    import signal
    import time

    import srt

    _, bundle = tiny256
    path = make(tmp_path / "long.mp4", "testsrc", 120, H264, size="160x120", rate=5)
    out = tmp_path / "out.srt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgevlm.cli",
            "caption",
            str(path),
            "-m",
            str(bundle),
            "--format",
            "srt",
            "-o",
            str(out),
            "--every",
            "0.5",
            "--threshold",
            "0",
            "--max-new-tokens",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the partial file to hold a few cues
        partial = list(tmp_path.glob(".out.srt.*.partial"))
        if partial and partial[0].read_text().count(" --> ") >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "stopped: wrote" in err
    subs = list(srt.parse(out.read_text()))  # complete and valid, with what was done
    assert len(subs) >= 3 and subs[0].start.total_seconds() == 0
    _check_cues([(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs])
    assert not list(tmp_path.glob(".*partial"))


def test_progress_bar_on_a_terminal_only(tiny256, tmp_path):
    import pty

    _, bundle = tiny256
    path = scenes(tmp_path / "s.mp4", ("red", "blue", "green", "white"), seconds=2)
    args = [
        sys.executable,
        "-m",
        "edgevlm.cli",
        "caption",
        str(path),
        "-m",
        str(bundle),
        "--format",
        "srt",
        "-o",
        str(tmp_path / "a.srt"),
        "--every",
        "1",
        "--max-new-tokens",
        "2",
    ]
    master, slave = pty.openpty()  # stderr is a terminal: a bar with elapsed<remaining (the ETA)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    tty_err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "/8 s [" in tty_err and "<" in tty_err and "\r" in tty_err
    piped = run_cli(*args[3:])  # stderr is a pipe: no bar, just the summary line
    assert piped.returncode == 0
    assert piped.stderr.strip() == f"wrote 4 caption(s) to {tmp_path / 'a.srt'}"
