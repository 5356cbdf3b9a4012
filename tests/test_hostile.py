"""The hostile-input corpus: what a careless or hostile user feeds the CLI, run as a real subprocess.

Every case asserts the exit code by class (0 fine, 2 bad input, 3 bad model, 4 export failed, 130 interrupted), one
`error:` line that says what was wrong (never a traceback, never "this is a bug"), no temporary file left behind
and no input or unrelated file modified (the case's folder and the shared bundle are snapshotted before and after).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import random_image, require
from hostile_tools import (
    ERROR_LINE,
    Case,
    cli_argv,
    edit_json,
    leftovers,
    link_copy,
    refresh_manifest,
    rewrite,
    run,
    snapshot,
    text,
)
from PIL import Image
from videotools import HttpStream, free_port, make, run_ffmpeg, scenes

M = ["-m", "{B}"]
T = ["--max-new-tokens", "2"]


# --------------------------------------------------------------------------------------------------- assets
@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """The standard inputs, made once: images of every kind, real videos, broken files."""
    a = tmp_path_factory.mktemp("hostile_assets")
    random_image(100, 140, seed=1).save(a / "img.png")
    random_image(90, 60, seed=2).save(a / "img.jpg")
    random_image(64, 64, seed=3, channels=4).save(a / "rgba.png")
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).save(a / "gray16.png")
    random_image(50, 70, seed=4).convert("CMYK").save(a / "cmyk.jpg")
    frames = [random_image(40, 40, seed=s) for s in range(3)]
    frames[0].save(a / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(a / "one.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    random_image(40, 80, seed=5).save(a / "exif.jpg", exif=exif)
    shutil.copy(a / "img.png", a / "png_named.jpg")
    Image.new("L", (12000, 12000)).save(a / "huge.png", optimize=True)  # 144 MP in ~150 KB
    header = b"BM" + (0).to_bytes(4, "little") + b"\0\0\0\0" + (54).to_bytes(4, "little")
    dib = (
        (40).to_bytes(4, "little")
        + (40000).to_bytes(4, "little", signed=True)
        + (40000).to_bytes(4, "little", signed=True)
        + (1).to_bytes(2, "little")
        + (24).to_bytes(2, "little")
        + bytes(24)
    )
    (a / "claims_huge.bmp").write_bytes(header + dib + bytes(64))
    png = (a / "img.png").read_bytes()
    (a / "trunc.png").write_bytes(png[: len(png) // 2])
    (a / "sig_only.png").write_bytes(png[:8])
    jpg = (a / "img.jpg").read_bytes()
    (a / "trunc.jpg").write_bytes(jpg[: len(jpg) // 3])
    (a / "garbage.png").write_bytes(os.urandom(4096))
    (a / "text.jpg").write_text("this is not a picture\n")
    (a / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    (a / "riff.webp").write_bytes(b"RIFF\x20\x00\x00\x00WEBPVP8 " + os.urandom(40))
    random_image(30, 30, seed=6).save(a / "img.tiff")
    (a / "trunc.tiff").write_bytes((a / "img.tiff").read_bytes()[:200])
    (a / "empty.png").write_bytes(b"")
    scenes(a / "vid.mp4", ("red", "blue", "green"), seconds=1)
    make(a / "long.mp4", "testsrc", 60, ["-c:v", "libx264", "-pix_fmt", "yuv420p"], size="160x120", rate=5)
    make(
        a / "stream.ts",
        "testsrc",
        6,
        ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mpegts"],
        size="160x120",
        rate=10,
    )
    data = (a / "stream.ts").read_bytes()
    (a / "cut.ts").write_bytes(data[: len(data) // 2])  # truncated mid-stream: the first half decodes
    (a / "header_only.mp4").write_bytes((a / "vid.mp4").read_bytes()[:1024])
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(a / "audio.mp4"))
    (a / "text.mp4").write_text("not a video\n")
    shutil.copy(a / "img.png", a / "png_named.mp4")
    (a / "empty.mp4").write_bytes(b"")
    return a


class Env(dict):
    """Format values for a case's argv, plus its folder."""

    @property
    def w(self) -> Path:
        return Path(self["w"])


def bundle_copy(env: Env, edit=None, name: str = "bundle") -> Path:
    dst = link_copy(Path(env["B"]), env.w / name)
    if edit is not None:
        edit(dst)
    return dst


def manifest_edit(fn, refresh: bool = False):
    def prep(env):
        def edit(b):
            fn(b)
            if refresh:
                refresh_manifest(b)

        bundle_copy(env, edit)

    return prep


def set_manifest(value: str):
    return manifest_edit(lambda b: rewrite(b / "edgevlm.json", value))


def manifest_json(fn):
    return manifest_edit(lambda b: edit_json(b / "edgevlm.json", fn))


def config_json(fn):
    return manifest_edit(lambda b: edit_json(b / "config.json", fn), refresh=True)


def swap_parts(b: Path) -> None:
    onnx = b / "onnx"
    vision, decoder = (onnx / "vision_encoder.onnx").read_bytes(), (onnx / "decoder_model_merged.onnx").read_bytes()
    rewrite(onnx / "vision_encoder.onnx", decoder)
    rewrite(onnx / "decoder_model_merged.onnx", vision)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rewrite(path, bytes(data))


def unverified_layout(b: Path) -> None:
    (b / "edgevlm.json").unlink()
    for p in (b / "onnx").glob("*_q4.onnx"):
        p.unlink()


def with_(**edits):
    def apply(m):
        m.update(edits)
        return m

    return apply


def without(*keys):
    def apply(m):
        for k in keys:
            m.pop(k, None)
        return m

    return apply


def variant_part(path):
    def apply(m):
        m["variants"]["fp32"]["vision_encoder"] = path
        return m

    return apply


def file_entry(**entry):
    def apply(m):
        first = sorted(m["files"])[0]
        m["files"][first].update(entry)
        return m

    return apply


def chmod(rel: str, mode: int, bundle: bool = False):
    def prep(env):
        root = bundle_copy(env) if bundle else env.w
        if bundle:  # hard links share modes: give the changed file its own inode first
            p = root / rel
            rewrite(p, p.read_bytes())
        os.chmod(root / rel, mode)

    return prep


def mkfifo(rel):
    return lambda env: os.mkfifo(env.w / rel)


def symlink(rel, target):
    return lambda env: os.symlink(target.format(**env), env.w / rel)


def writes_file(rel, content="old content\n"):
    return lambda env: (env.w / rel).write_text(content)


def stdout_has(pattern):
    def check(env, r):
        import re

        assert re.search(pattern, text(r.stdout)), text(r.stdout)[:500]

    return check


def srt_ok(rel, at_least=1):
    def check(env, r):
        import srt

        cues = list(srt.parse((env.w / rel).read_text()))
        assert len(cues) >= at_least

    return check


def unchanged_file(rel, content="old content\n"):
    def check(env, r):
        assert (env.w / rel).read_text() == content

    return check


def expect(predicate, what: str):
    def check(env, r):
        assert predicate(env, r), what

    return check


def both(*checks):
    def check(env, r):
        for c in checks:
            c(env, r)

    return check


# ------------------------------------------------------------------------------------------- mounts
def mount_tmpfs(env, rel, size="64k", ro=False, fill=False):
    mnt = env.w / rel
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    require(out.returncode == 0, f"this case mounts a small tmpfs, which needs root: {out.stderr.decode().strip()}")
    env.setdefault("mounts", []).append(mnt)
    if fill:
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        (mnt / "filler").chmod(0o644)
    if ro:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


def full_disk(rel):
    return lambda env: mount_tmpfs(env, rel, fill=True)


def read_only_disk(rel):
    return lambda env: mount_tmpfs(env, rel, ro=True)


# ------------------------------------------------------------------------------------------- drivers
def wait_for(predicate, timeout=120.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _default_sigint() -> None:
    """In the child before exec: a suite started in the background of a script (`pytest &`) inherits an ignored
    SIGINT, which the CLI would keep ignoring (as any program does); the cases stand for a user's Ctrl+C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_after(sig, ready, timeout=180.0):
    """Start the CLI, send `sig` once ready(env, proc) holds, return the finished process."""

    def driver(env, argv):
        proc = subprocess.Popen(
            cli_argv(*argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            preexec_fn=_default_sigint,
        )
        try:
            assert wait_for(lambda: ready(env, proc), timeout, proc), "the run ended before the signal was due"
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    return driver


def stdout_into(rel, append=True):
    """Run the CLI with its stdout on the file {w}/rel, as a shell's `>> rel` (append) or `1<> rel` does."""

    def driver(env, argv):
        with open(env.w / rel, "a" if append else "r+") as out:
            if not append:
                out.seek(0, os.SEEK_END)
            r = subprocess.run(
                cli_argv(*argv), stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=300
            )
        return subprocess.CompletedProcess(argv, r.returncode, b"", r.stderr)

    return driver


def log_kept_and_srt(rel, first="keep\n"):
    def check(env, r):
        import srt

        content = (env.w / rel).read_text()
        assert content.startswith(first), content[:200]
        assert list(srt.parse(content[len(first) :])), content[:400]

    return check


def first_stdout_byte(env, proc):
    """Ready once the caption has started printing tokens (stdout read one byte; it is put back)."""
    if "first" not in env:
        env["first"] = proc.stdout.read(1)
    return bool(env["first"])


def partial_exists(pattern):
    return lambda env, proc: any(env.w.glob(pattern))


def partial_file_has(text_piece):
    def ready(env, proc):
        return any(text_piece in p.read_text(errors="replace") for p in env.w.glob(".*.partial"))

    return ready


def file_has_lines(rel, n):
    def ready(env, proc):
        p = env.w / rel
        return p.exists() and p.read_text().count("\n") >= n

    return ready


def lost_stream(env, argv):
    """A live HTTP stream that goes away for good after a few captions: exit 2, and the file keeps every
    caption that was shown."""
    server = HttpStream(int(env["port"]), seconds=600).start()
    proc = subprocess.Popen(cli_argv(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: file_has_lines("live.jsonl", 3)(env, proc), 120, proc), "no captions came"
        server.stop()
        out, err = proc.communicate(timeout=120)
    finally:
        server.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def jsonl_matches_stdout(rel):
    def check(env, r):
        shown = [json.loads(line) for line in text(r.stdout).splitlines() if line.strip()]
        kept = [json.loads(line) for line in (env.w / rel).read_text().splitlines()]
        assert len(shown) >= 3 and kept == shown

    return check


def jsonl_complete(rel, at_least=1):
    def check(env, r):
        lines = (env.w / rel).read_text().splitlines()
        assert len(lines) >= at_least and all(json.loads(line)["text"] is not None for line in lines)

    return check


def bundle_modes(rel):
    """What `mkdir` and `open` give under the umask (0755 / 0644 with the usual 022), not mkdtemp's 0700."""

    def check(env, r):
        umask = os.umask(0)
        os.umask(umask)
        root = env.w / rel
        for p in [root, *root.rglob("*")]:
            mode = p.stat().st_mode & 0o777
            assert mode & 0o055 == (0o755 if p.is_dir() else 0o644) & 0o055 & ~umask, (p, oct(mode))

    return check


def no_partials(rel, warning=None):
    """Nothing half-written in the folder (no temporaries, no clip) and, given, the warning that said so."""

    def check(env, r):
        folder = env.w / rel
        left = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        assert not [n for n in left if n.startswith(".") or n.endswith(".mp4")], left
        stderr = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
        assert warning is None or re.search(warning, stderr), stderr

    return check


def export_tmp_gone(env, r):
    assert not list(env.w.glob(".out.partial-*")) and not (env.w / "out").exists()


# --------------------------------------------------------------------------------------------------- cases
IMG = ["{w}/img.png"]
VID = ["{w}/vid.mp4"]
C = ["caption"]
W = ["watch"]


def cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    # ---- images
    add(Case("image-missing", [*C, "{w}/nope.png", *M], 2, "does not exist"))
    add(Case("image-empty", [*C, "{w}/empty.png", *M], 2, "empty"))
    add(Case("image-garbage", [*C, "{w}/garbage.png", *M], 2, "not an image"))
    add(Case("image-truncated-png", [*C, "{w}/trunc.png", *M], 2, "corrupt|truncated"))
    add(Case("image-signature-only", [*C, "{w}/sig_only.png", *M], 2, "corrupt|truncated|not an image"))
    add(Case("image-truncated-jpeg", [*C, "{w}/trunc.jpg", *M], 2, "corrupt|truncated"))
    add(Case("image-truncated-tiff", [*C, "{w}/trunc.tiff", *M], 2, "corrupt|truncated|not an image"))
    add(Case("image-text-file", [*C, "{w}/text.jpg", *M], 2, "not an image"))
    add(Case("image-svg", [*C, "{w}/vector.svg", *M], 2, "not an image"))
    add(Case("image-bad-webp", [*C, "{w}/riff.webp", *M], 2, "not an image|corrupt"))
    add(
        Case(
            "image-is-folder",
            [*C, "{w}/folder.png", *M],
            2,
            "not a regular file",
            prep=lambda env: (env.w / "folder.png").mkdir(),
        )
    )
    add(Case("image-is-device", [*C, "/dev/zero", *M], 2, "not a regular file"))
    add(Case("image-is-fifo", [*C, "{w}/pipe.png", *M], 2, "not a regular file", prep=mkfifo("pipe.png")))
    add(
        Case(
            "image-dangling-link",
            [*C, "{w}/dead.png", *M],
            2,
            "does not exist",
            prep=symlink("dead.png", "{w}/gone.png"),
        )
    )
    add(Case("image-144-megapixels", [*C, "{w}/huge.png", *M], 2, "over the limit.*downscale"))
    add(Case("image-header-claims-40000x40000", [*C, "{w}/claims_huge.bmp", *M], 2, "over the limit"))
    add(Case("image-over-flag-limit", [*C, *IMG, *M, "--max-image-pixels", "100"], 2, "over the limit of 100"))
    add(
        Case(
            "image-over-env-limit", [*C, *IMG, *M], 2, "over the limit of 100", env={"EDGEVLM_MAX_IMAGE_PIXELS": "100"}
        )
    )
    add(Case("image-pixel-limit-zero", [*C, *IMG, *M, "--max-image-pixels", "0"], 2, "max-image-pixels"))
    add(Case("image-unreadable", [*C, "{w}/img.png", *M], 2, "permission denied", prep=chmod("img.png", 0), caps=False))
    add(Case("image-undecodable-name-missing", [*C, os.fsencode("{w}/") + b"\xff\xfe.png", *M], 2, "does not exist"))
    for ok in (
        "img.jpg",
        "rgba.png",
        "gray16.png",
        "cmyk.jpg",
        "anim.gif",
        "one.png",
        "exif.jpg",
        "png_named.jpg",
        "img.tiff",
    ):
        add(Case(f"image-fine-{ok}", [*C, f"{{w}}/{ok}", *M, *T], 0, r"\S"))
    add(
        Case(
            "image-undecodable-name-exists",
            [*C, os.fsencode("{w}/") + b"\xff.png", *M, *T],
            0,
            r"\S",
            prep=lambda env: shutil.copy(env.w / "img.png", os.fsencode(str(env.w)) + b"/\xff.png"),
            outputs=("\udcff.png",),
        )
    )
    add(Case("image-and-video-mixed", ["ask", *IMG, *VID, "what?", *M], 2, "cannot be mixed"))
    add(Case("two-videos", ["ask", *VID, "{w}/long.mp4", "what?", *M], 2, "pass one video"))
    # ---- videos
    add(Case("video-missing", [*C, "{w}/nope.mp4", *M], 2, "does not exist"))
    add(Case("video-empty", [*C, "{w}/empty.mp4", *M], 2, "empty"))
    add(Case("video-text", [*C, "{w}/text.mp4", *M], 2, "cannot be opened as a video"))
    add(Case("video-audio-only", [*C, "{w}/audio.mp4", *M], 2, "no video stream"))
    add(Case("video-header-only", [*C, "{w}/header_only.mp4", *M], 2, "video"))
    add(Case("video-is-png-decodes-as-one-frame", [*C, "{w}/png_named.mp4", *M, *T], 0, r"\S"))
    add(
        Case(
            "video-is-folder",
            [*C, "{w}/dir.mp4", *M],
            2,
            "does not exist|not a regular file",
            prep=lambda env: (env.w / "dir.mp4").mkdir(),
        )
    )
    add(
        Case(
            "video-truncated-mid-stream",
            [*C, "{w}/cut.ts", *M, *T, "--format", "srt", "-o", "{w}/cut.srt"],
            0,
            outputs=("cut.srt",),
            check=srt_ok("cut.srt"),
        )
    )
    for flag, value, why in (
        ("--fps", "0", "out of range"),
        ("--fps", "nan", "finite"),
        ("--fps", "-1", "range"),
        ("--max-frames", "0", "range"),
        ("--every", "0", "range"),
        ("--every", "nan", "finite"),
        ("--every", "inf", "finite"),
        ("--every", "-5", "range"),
        ("--threshold", "-1", "range"),
        ("--threshold", "nan", "finite"),
        ("--threshold", "300", "range"),
        ("--every", "five", "not a number"),
        ("--budget-per-minute", "0", "range"),
        ("--budget-per-minute", "-3", "range"),
        ("--budget-per-minute", "nan", "finite"),
        ("--budget-per-minute", "inf", "finite"),
        ("--budget-per-minute", "5000", "range"),
    ):
        add(Case(f"video-{flag[2:]}-{value}", [*C, *VID, *M, flag, value], 2, f"{flag}.*{why}|{why}.*{flag}"))
    add(Case("video-mode-bogus", [*C, *VID, *M, "--mode", "fast"], 2, "--mode"))
    add(Case("video-format-bogus", [*C, *VID, *M, "--format", "docx"], 2, "--format"))
    add(Case("video-json-on-timeline", [*C, *VID, *M, "--json"], 2, "--format jsonl"))
    add(Case("video-output-with-clip", [*C, *VID, *M, "--mode", "clip", "-o", "{w}/x.txt"], 2, "--output.*clip"))
    add(Case("video-format-with-clip", [*C, *VID, *M, "--mode", "clip", "--format", "srt"], 2, "--format.*clip"))
    add(Case("video-stream-flag", [*C, *VID, *M, "--stream"], 2, "--stream.*not apply"))
    add(Case("video-no-split-with-clip", [*C, *VID, *M, "--mode", "clip", "--no-split"], 2, "--no-split"))
    add(Case("video-fps-on-timeline", [*C, *VID, *M, "--fps", "2"], 2, "--fps.*clip"))
    add(Case("video-budget-with-clip", [*C, *VID, *M, "--mode", "clip", "--budget-per-minute", "5"], 2, "--budget"))
    add(Case("image-budget-per-minute", [*C, *IMG, *M, "--budget-per-minute", "5"], 2, "--budget-per-minute"))
    add(Case("ask-video-no-split", ["ask", *VID, "what?", *M, "--no-split"], 2, "--no-split"))
    add(Case("ask-video-fps-zero", ["ask", *VID, "what?", *M, "--fps", "0"], 2, "--fps"))
    add(Case("ask-image-fps", ["ask", *IMG, "what?", *M, "--fps", "1"], 2, "--fps.*video"))
    add(Case("video-max-new-tokens-zero", [*C, *VID, *M, "--max-new-tokens", "0"], 2, "--max-new-tokens"))
    add(
        Case(
            "video-timeline-srt",
            [*C, *VID, *M, *T, "--format", "srt", "-o", "{w}/v.srt"],
            0,
            outputs=("v.srt",),
            check=srt_ok("v.srt", 3),
        )
    )
    add(Case("video-clip-json", [*C, *VID, *M, *T, "--mode", "clip", "--json"], 0, r'"new_tokens": 2'))
    add(Case("video-timeline-to-dash", [*C, *VID, *M, *T, "--format", "vtt", "-o", "-"], 0, "WEBVTT"))
    # ---- live sources
    R = ["--retry-for", "0"]
    add(Case("watch-unreachable-url", [*W, "http://127.0.0.1:9/live.ts", *M, *R], 2, "cannot open|could not"))
    add(Case("watch-ftp", [*W, "ftp://127.0.0.1/x.ts", *M], 2, "ftp"))
    add(Case("watch-missing-device", [*W, "/dev/video97", *M], 2, "video97"))
    add(Case("watch-missing-camera", [*W, "97", *M], 2, "camera"))
    add(Case("watch-missing-file", [*W, "{w}/nope.mp4", *M], 2, "not a camera index.*existing video file"))
    add(Case("watch-empty-file", [*W, "{w}/empty.mp4", *M], 2, "empty"))
    add(Case("watch-text-file", [*W, "{w}/text.mp4", *M], 2, "video"))
    add(Case("watch-bad-regex", [*W, *VID, *M, "--trigger", "("], 2, "regular expression"))
    add(Case("watch-trigger-exit-alone", [*W, *VID, *M, "--trigger-exit", "3"], 2, "needs --trigger"))
    for value in ("300", "0", "-1", "x"):
        add(
            Case(
                f"watch-trigger-exit-{value}",
                [*W, *VID, *M, "--trigger", "a", "--trigger-exit", value],
                2,
                "--trigger-exit",
            )
        )
    # ---- the realtime session's limits (its frames and messages: tests/test_realtime.py)
    for flag, value in (
        ("--max-realtime", "-1"),
        ("--max-realtime", "1000"),
        ("--realtime-timeout", "0"),
        ("--realtime-timeout", "nan"),
    ):
        add(Case(f"serve{flag[1:]}-{value}", ["serve", "{B}", flag, value], 2, flag))
    # ---- events (issue 28): hold, cooldown, the evidence folder and its clips
    TR = ["--trigger", "."]
    for flag, values in (
        ("--hold", ("0", "-1", "1.5", "nan", "99999", "x")),
        ("--hold-s", ("-1", "nan", "inf")),
        ("--cooldown", ("-3", "nan", "inf", "1e9", "soon")),
        ("--lookback", ("-1", "nan", "601")),
        ("--after", ("-1", "inf")),
    ):
        for value in values:
            add(Case(f"watch{flag[1:]}-{value}", [*W, *VID, *M, *TR, flag, value], 2, flag))
    add(Case("watch-hold-alone", [*W, *VID, *M, "--hold", "2"], 2, "--hold needs --trigger"))
    add(Case("watch-cooldown-alone", [*W, *VID, *M, "--cooldown", "5"], 2, "--cooldown needs --trigger"))
    add(Case("watch-evidence-alone", [*W, *VID, *M, "--evidence", "{w}/ev"], 2, "--evidence needs --trigger"))
    add(Case("watch-lookback-alone", [*W, *VID, *M, *TR, "--lookback", "3"], 2, "give --evidence"))
    add(Case("watch-evidence-is-a-file", [*W, *VID, *M, *TR, "--evidence", "{w}/vid.mp4"], 2, "--evidence"))
    add(
        Case(
            "watch-evidence-read-only",
            [*W, *VID, *M, *TR, "--evidence", "{w}/ro/events"],
            2,
            "events folder .* cannot be written.*read-only",
            prep=read_only_disk("ro"),
            caps=False,
        )
    )
    add(
        Case(
            "watch-evidence-disk-full",
            [*W, *VID, *M, *T, *TR, "--threshold", "0", "--no-realtime", "--evidence", "{w}/full/events"],
            2,
            "disk is full",
            prep=full_disk("full"),
            check=no_partials("full/events"),
        )
    )
    add(
        Case(
            "watch-clip-on-full-disk",  # room for the record and the frame, not for the clip: a warning, no file
            [*W, "{w}/long.mp4", *M, *T, *TR, "--threshold", "0", "--evidence", "{w}/full/events", "--after", "8"],
            0,
            prep=lambda env: mount_tmpfs(env, "full", size="40k"),
            check=no_partials("full/events", "clip .* was not written: the disk is full"),
        )
    )
    for flag, value in (
        ("--retry-for", "-1"),
        ("--retry-for", "nan"),
        ("--heartbeat", "0"),
        ("--min-interval", "nan"),
        ("--min-interval", "-2"),
        ("--max-captions", "0"),
        ("--threshold", "-3"),
        ("--max-new-tokens", "0"),
        ("--threads", "0"),
    ):
        add(Case(f"watch{flag[1:]}-{value}", [*W, *VID, *M, flag, value], 2, flag))
    add(Case("watch-format-srt", [*W, *VID, *M, "--format", "srt"], 2, "--format"))
    add(Case("watch-detail-ultra", [*W, *VID, *M, "--detail", "ultra"], 2, "--detail"))
    add(Case("watch-detail-empty", [*W, *VID, *M, "--detail", ""], 2, "--detail"))
    for value in ("0", "-1", "nan", "inf", "99999", "abc"):
        add(Case(f"watch-budget-{value}", [*W, *VID, *M, "--budget", value], 2, "--budget"))
    add(Case("watch-budget-tiny", [*W, *VID, *M, *T, "--budget", "0.000001"], 2, "below what this machine can do"))
    add(Case("watch-budget-and-detail", [*W, *VID, *M, "--budget", "1", "--detail", "high"], 2, "drop --detail"))
    add(Case("watch-output-is-source", [*W, *VID, *M, "-o", "{w}/vid.mp4"], 2, "is the input"))
    add(Case("watch-output-is-folder", [*W, *VID, *M, "-o", "{w}"], 2, "is a folder"))
    add(
        Case(
            "watch-output-disk-full",
            [*W, *VID, *M, *T, "--threshold", "0", "--no-realtime", "-o", "/dev/full"],
            2,
            "disk is full",
        )
    )
    add(Case("watch-undecodable-prompt", [*W, *VID, *M, "-p", b"caption \xff"], 2, "UTF-8"))
    add(Case("watch-prompt-with-image-token", [*W, *VID, *M, *T, "--no-realtime", "-p", "see <image>"], 2, "reserves"))
    add(
        Case(
            "watch-lost-stream-keeps-captions",
            [
                *W,
                "http://127.0.0.1:{port}/live.ts",
                *M,
                *T,
                "--threshold",
                "0",
                "--retry-for",
                "1",
                "--format",
                "jsonl",
                "-o",
                "{w}/live.jsonl",
            ],
            2,
            "did not come back",
            driver=lost_stream,
            outputs=("live.jsonl",),
            check=jsonl_matches_stdout("live.jsonl"),
        )
    )
    add(
        Case(
            "watch-sigterm-keeps-lines",
            [*W, *VID, *M, *T, "--threshold", "0", "--format", "jsonl", "-o", "{w}/w.jsonl"],
            0,
            driver=signal_after(signal.SIGTERM, file_has_lines("w.jsonl", 1)),
            outputs=("w.jsonl",),
            check=jsonl_complete("w.jsonl"),
        )
    )
    add(
        Case(
            "watch-appends-to-existing-log",
            [*W, *VID, *M, *T, "--no-realtime", "--max-captions", "1", "--format", "jsonl", "-o", "{w}/log.jsonl"],
            0,
            prep=writes_file("log.jsonl", '{"text": "earlier"}\n'),
            outputs=("log.jsonl",),
            check=expect(
                lambda env, r: (
                    (env.w / "log.jsonl").read_text().startswith('{"text": "earlier"}\n')
                    and (env.w / "log.jsonl").read_text().count("\n") == 2
                ),
                "earlier line kept, one added",
            ),
        )
    )
    # ---- bundles and manifests
    add(Case("model-missing-folder", [*C, *IMG, "-m", "{w}/no_such_bundle"], 3, "does not exist"))
    add(Case("model-mistyped-relative-path", [*C, *IMG, "-m", "{w}/bundel/x"], 3, "does not exist"))
    add(
        Case(
            "model-mistyped-path-that-looks-like-a-hub-id",
            [*C, *IMG, "-m", "models/smolvlm2-bundel"],
            3,
            "does not exist",
            cwd="{w}",
            prep=lambda env: (env.w / "models").mkdir(),
            check=expect(lambda env, r: "download" not in text(r.stderr), "no hub download advice"),
        )
    )
    add(Case("model-is-file", [*C, *IMG, "-m", "{w}/img.png"], 3, "does not exist|not a"))
    add(
        Case(
            "model-empty-folder",
            [*C, *IMG, "-m", "{w}/emptydir"],
            3,
            "config.json",
            prep=lambda env: (env.w / "emptydir").mkdir(),
        )
    )
    for name in ("config.json", "tokenizer.json"):
        add(
            Case(
                f"model-without-{name}",
                [*C, *IMG, "-m", "{w}/bundle"],
                3,
                name,
                prep=manifest_edit(lambda b, n=name: (b / n).unlink()),
            )
        )
    add(
        Case(
            "config-not-json",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "not valid JSON",
            prep=manifest_edit(lambda b: rewrite(b / "config.json", "{oops"), refresh=True),
        )
    )
    add(Case("config-is-list", [*C, *IMG, "-m", "{w}/bundle"], 3, "JSON object", prep=config_json(lambda m: [m])))
    add(
        Case(
            "config-is-folder",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "config.json",
            prep=manifest_edit(lambda b: ((b / "config.json").unlink(), (b / "config.json").mkdir())),
        )
    )
    add(
        Case(
            "config-wrong-model-type",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "not a SmolVLM config",
            prep=config_json(with_(model_type="llama")),
        )
    )
    add(
        Case(
            "config-without-text-config",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "text_config",
            prep=config_json(without("text_config")),
        )
    )
    add(
        Case(
            "config-without-vision-config",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "vision_config",
            prep=config_json(without("vision_config")),
        )
    )
    add(
        Case(
            "config-text-config-list",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "wrong kind",
            prep=config_json(with_(text_config=[1, 2])),
        )
    )
    add(
        Case(
            "config-hidden-size-string",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "wrong kind",
            prep=config_json(lambda m: (m["text_config"].update(hidden_size="big"), m)[1]),
        )
    )
    for label, value in (("object-empty", "{}"), ("list", "[]"), ("null", "null"), ("string", '"x"'), ("number", "42")):
        add(
            Case(
                f"manifest-{label}",
                [*C, *IMG, "-m", "{w}/bundle"],
                3,
                "not a valid edgevlm manifest",
                prep=set_manifest(value),
            )
        )
    add(Case("manifest-not-json", [*C, *IMG, "-m", "{w}/bundle"], 3, "not valid JSON", prep=set_manifest("{")))
    add(
        Case(
            "manifest-binary",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "not valid JSON",
            prep=manifest_edit(lambda b: rewrite(b / "edgevlm.json", os.urandom(256))),
        )
    )
    add(
        Case(
            "manifest-without-variants",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "variants",
            prep=manifest_json(without("variants")),
        )
    )
    add(
        Case(
            "manifest-variants-list",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "variants",
            prep=manifest_json(with_(variants=[])),
        )
    )
    add(
        Case(
            "manifest-without-files", [*C, *IMG, "-m", "{w}/bundle"], 3, "'files'", prep=manifest_json(without("files"))
        )
    )
    add(
        Case(
            "manifest-absolute-path",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "outside the bundle",
            prep=manifest_json(variant_part("/etc/passwd")),
        )
    )
    add(
        Case(
            "manifest-dotdot-path",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "outside the bundle",
            prep=manifest_json(variant_part("../img.png")),
        )
    )
    add(
        Case(
            "manifest-path-not-string",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "path string",
            prep=manifest_json(variant_part(7)),
        )
    )
    add(
        Case(
            "manifest-variant-missing-part",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "exactly the parts",
            prep=manifest_json(lambda m: (m["variants"]["fp32"].pop("embed_tokens"), m)[1]),
        )
    )
    add(
        Case(
            "manifest-sha-not-hex",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "sha256",
            prep=manifest_json(file_entry(sha256="zz")),
        )
    )
    add(
        Case(
            "manifest-negative-size", [*C, *IMG, "-m", "{w}/bundle"], 3, "size", prep=manifest_json(file_entry(size=-1))
        )
    )
    add(
        Case(
            "manifest-file-entry-absolute",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "outside the bundle",
            prep=manifest_json(lambda m: (m["files"].update({"/etc/hosts": {"sha256": "0" * 64, "size": 1}}), m)[1]),
        )
    )
    add(
        Case(
            "manifest-wrong-format",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "format",
            prep=manifest_json(with_(format="other")),
        )
    )
    add(
        Case(
            "manifest-future-version",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "Upgrade edgevlm",
            prep=manifest_json(with_(format_version=99)),
        )
    )
    add(
        Case(
            "manifest-version-string",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "version",
            prep=manifest_json(with_(format_version="1")),
        )
    )
    add(
        Case(
            "manifest-file-unlisted",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "not listed",
            prep=manifest_json(lambda m: (m["files"].pop("onnx/vision_encoder.onnx"), m)[1]),
        )
    )
    add(
        Case(
            "onnx-altered",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "checksum",
            prep=manifest_edit(lambda b: flip_byte(b / "onnx/embed_tokens.onnx")),
        )
    )
    add(
        Case(
            "onnx-truncated",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "checksum",
            prep=manifest_edit(lambda b: rewrite(b / "onnx/vision_encoder.onnx", b"\x08\x07")),
        )
    )
    add(
        Case(
            "onnx-missing",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "missing",
            prep=manifest_edit(lambda b: (b / "onnx/decoder_model_merged.onnx").unlink()),
        )
    )
    add(
        Case(
            "onnx-garbage-with-matching-manifest",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "could not load",
            prep=manifest_edit(lambda b: rewrite(b / "onnx/vision_encoder.onnx", os.urandom(999)), refresh=True),
        )
    )
    add(
        Case(
            "parts-swapped-with-manifest",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "mixed up",
            prep=manifest_edit(swap_parts, refresh=True),
        )
    )
    add(
        Case(
            "parts-swapped-hf-layout",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "mixed up",
            prep=manifest_edit(lambda b: (unverified_layout(b), swap_parts(b))),
        )
    )
    add(
        Case(
            "tokenizer-altered",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "checksum",
            prep=manifest_edit(lambda b: rewrite(b / "tokenizer.json", "{}")),
        )
    )
    add(
        Case(
            "tokenizer-garbage-hf-layout",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "tokenizer",
            prep=manifest_edit(lambda b: (unverified_layout(b), rewrite(b / "tokenizer.json", "[1,2"))),
        )
    )
    add(
        Case(
            "hf-layout-loads-unverified-once",
            [*C, *IMG, "{w}/img.jpg", "-m", "{w}/bundle", *T],
            0,
            prep=manifest_edit(unverified_layout),
            check=expect(lambda env, r: text(r.stderr).count("unverified") == 1, "one unverified warning"),
        )
    )
    add(
        Case(
            "model-file-unreadable",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "cannot be read|permission",
            prep=chmod("onnx/vision_encoder.onnx", 0, bundle=True),
            caps=False,
        )
    )
    add(
        Case(
            "config-unreadable",
            [*C, *IMG, "-m", "{w}/bundle"],
            3,
            "cannot be read",
            prep=chmod("config.json", 0, bundle=True),
            caps=False,
        )
    )
    add(Case("variant-unknown", [*C, *IMG, *M, "--variant", "int2"], 3, "int2.*Pick one"))
    add(Case("variant-empty", [*C, *IMG, *M, "--variant", ""], 3, "variant"))
    add(Case("providers-cuda", [*C, *IMG, *M, "--providers", "cuda"], 3, "not available"))
    add(Case("providers-bogus", [*C, *IMG, *M, "--providers", "warp"], 3, "not available"))
    add(Case("info-missing", ["info", "{w}/nothing"], 3, "does not exist"))
    add(Case("info-on-image", ["info", "{w}/img.png"], 3, "does not exist|not a"))
    # ---- arguments
    for value in ("0", "-1", "abc", "1.5"):
        add(Case(f"max-new-tokens-{value}", [*C, *IMG, *M, "--max-new-tokens", value], 2, "--max-new-tokens"))
    add(
        Case(
            "max-new-tokens-past-context",
            [*C, *IMG, *M, "--max-new-tokens", "9000"],
            2,
            r"context.*\(--detail low\).*lower --max-new-tokens",
        )
    )
    add(
        Case(
            "forty-images-past-context",
            [*C, *[f"{{w}}/img{i}.png" for i in range(40)], *M],
            2,
            "context of 8192",
            prep=lambda env: [shutil.copy(env.w / "img.png", env.w / f"img{i}.png") for i in range(40)],
        )
    )
    for value in ("0", "-2"):
        add(Case(f"threads-{value}", [*C, *IMG, *M, "--threads", value], 2, "--threads"))
    add(Case("prompt-undecodable", [*C, *IMG, *M, "-p", b"describe \xff\xfe"], 2, "UTF-8"))
    add(Case("question-undecodable", ["ask", *IMG, b"what \xc3\x28 is it?", *M], 2, "UTF-8"))
    for token in ("<image>", "<video>", "<fake_token_around_image>", "<global-img>"):
        add(Case(f"question-with-{token.strip('<>')}", ["ask", *IMG, f"what is {token} here?", *M], 2, "reserves"))
    add(Case("question-empty", ["ask", *IMG, "", *M], 2, "empty"))
    add(Case("question-blank", ["ask", *IMG, "   \n ", *M], 2, "empty"))
    add(Case("image-with-output", [*C, *IMG, *M, "-o", "{w}/x.txt"], 2, "--output.*not apply"))
    add(Case("image-with-format", [*C, *IMG, *M, "--format", "srt"], 2, "--format.*not apply"))
    add(Case("image-with-every", [*C, *IMG, *M, "--every", "2"], 2, "--every.*not apply"))
    add(Case("image-with-mode", [*C, *IMG, *M, "--mode", "clip"], 2, "--mode.*not apply"))
    add(Case("stream-and-json", [*C, *IMG, *M, "--stream", "--json"], 2, "cannot be combined"))
    add(Case("unknown-command", ["describe", *IMG], 2, "No such command"))
    add(Case("no-arguments", [], 2, "", check=expect(lambda env, r: "Usage" in text(r.stderr), "usage shown")))
    add(Case("caption-without-input", [*C, *M], 2, "Missing argument"))
    add(Case("unknown-option", [*C, *IMG, *M, "--turbo"], 2, "No such option"))
    add(Case("bench-runs-zero", ["bench", "{B}", "--runs", "0"], 2, "--runs"))
    add(Case("bench-new-tokens-zero", ["bench", "{B}", "--new-tokens", "0"], 2, "--new-tokens"))
    add(Case("bench-unknown-variant", ["bench", "{B}", "--variants", "int2"], 3, "int2"))
    add(Case("bench-no-variant", ["bench", "{B}", "--variants", ""], 2, "empty"))
    add(Case("bench-bad-provider", ["bench", "{B}", "--providers", "cuda"], 3, "not available"))
    # ---- export
    add(Case("export-unknown-variant", ["export", "{ckpt}", "-o", "{w}/out", "--variants", "int3"], 4, "int3"))
    add(Case("export-missing-source", ["export", "{w}/nockpt", "-o", "{w}/out"], 4, "does not exist"))
    add(Case("export-source-is-file", ["export", "{w}/img.png", "-o", "{w}/out"], 4, "is a file"))
    add(
        Case(
            "export-source-not-smolvlm",
            ["export", "{w}/notvlm", "-o", "{w}/out"],
            4,
            "not SmolVLM",
            prep=lambda env: (
                (env.w / "notvlm").mkdir(),
                (env.w / "notvlm/config.json").write_text('{"model_type": "llama"}'),
            ),
        )
    )
    add(
        Case(
            "export-source-without-weights",
            ["export", "{w}/noweights", "-o", "{w}/out"],
            4,
            "no weights",
            prep=lambda env: (
                (env.w / "noweights").mkdir(),
                (env.w / "noweights/config.json").write_text('{"model_type": "smolvlm"}'),
            ),
        )
    )
    add(
        Case(
            "export-output-not-empty",
            ["export", "{ckpt}", "-o", "{w}/full"],
            4,
            "--force",
            prep=lambda env: ((env.w / "full").mkdir(), (env.w / "full/keep.txt").write_text("keep")),
        )
    )
    add(
        Case(
            "export-force-onto-its-source",
            ["export", "{w}/ck", "-o", "{w}/ck", "--force"],
            4,
            "delete it",
            prep=lambda env: shutil.copytree(env["ckpt"], env.w / "ck"),
        )
    )
    add(
        Case(
            "export-force-onto-source-parent",
            ["export", "{w}/p/ck", "-o", "{w}/p", "--force"],
            4,
            "delete it",
            prep=lambda env: shutil.copytree(env["ckpt"], env.w / "p/ck"),
        )
    )
    add(
        Case(
            "export-bundle-readable-by-others",
            ["export", "{ckpt}", "-o", "{w}/shared", "--variants", "fp32"],
            0,
            outputs=("shared",),
            check=bundle_modes("shared"),
        )
    )
    add(Case("export-threads-zero", ["export", "{ckpt}", "-o", "{w}/out", "--threads", "0"], 2, "--threads"))
    add(
        Case(
            "export-onto-read-only-disk",
            ["export", "{ckpt}", "-o", "{w}/ro/out", "--variants", "fp32"],
            4,
            "read-only|could not write",
            prep=read_only_disk("ro"),
        )
    )
    # ---- output targets
    V = [*C, *VID, *M, *T, "--format", "srt"]
    add(Case("output-is-input", [*V, "-o", "{w}/vid.mp4"], 2, "is the input"))
    add(
        Case(
            "output-is-input-other-spelling",
            [*V, "-o", "{w}/./sub/../vid.mp4"],
            2,
            "is the input",
            prep=lambda env: (env.w / "sub").mkdir(),
        )
    )
    add(
        Case(
            "output-hard-link-to-input",
            [*V, "-o", "{w}/hard.srt"],
            2,
            "is the input",
            prep=lambda env: os.link(env.w / "vid.mp4", env.w / "hard.srt"),
        )
    )
    add(
        Case(
            "output-symlink-to-input",
            [*V, "-o", "{w}/soft.srt"],
            2,
            "is the input",
            prep=symlink("soft.srt", "{w}/vid.mp4"),
        )
    )
    add(Case("output-is-folder", [*V, "-o", "{w}"], 2, "is a folder"))
    add(Case("output-folder-missing", [*V, "-o", "{w}/no/dir/v.srt"], 2, "does not exist"))
    add(Case("output-empty-name", [*V, "-o", ""], 2, "empty"))
    add(Case("output-inside-model", [*V, "-o", "{B}/captions.srt"], 2, "inside the model folder"))
    add(Case("output-device-full", [*V, "-o", "/dev/full"], 2, "disk is full"))
    add(Case("output-on-full-disk", [*V, "-o", "{w}/full/v.srt"], 2, "disk is full", prep=full_disk("full")))
    add(Case("output-on-read-only-disk", [*V, "-o", "{w}/ro/v.srt"], 2, "read-only", prep=read_only_disk("ro")))
    add(
        Case(
            "output-read-only-file",
            [*V, "-o", "{w}/locked.srt"],
            2,
            "read-only",
            prep=lambda env: ((env.w / "locked.srt").write_text("old content\n"), (env.w / "locked.srt").chmod(0o444)),
            caps=False,
        )
    )
    add(
        Case(
            "output-folder-not-writable",
            [*V, "-o", "{w}/closed/v.srt"],
            2,
            "permission|cannot write",
            prep=lambda env: ((env.w / "closed").mkdir(), (env.w / "closed").chmod(0o555)),
            caps=False,
        )
    )
    add(
        Case(
            "output-through-symlink",
            [*V, "-o", "{w}/link.srt"],
            0,
            prep=lambda env: (
                (env.w / "real.srt").write_text("old content\n"),
                os.symlink(env.w / "real.srt", env.w / "link.srt"),
            ),
            outputs=("real.srt",),
            check=both(expect(lambda env, r: (env.w / "link.srt").is_symlink(), "link kept"), srt_ok("real.srt")),
        )
    )
    add(
        Case(
            "output-dangling-symlink",
            [*V, "-o", "{w}/dangling.srt"],
            0,
            prep=symlink("dangling.srt", "{w}/target.srt"),
            outputs=("target.srt",),
            check=both(expect(lambda env, r: (env.w / "dangling.srt").is_symlink(), "link kept"), srt_ok("target.srt")),
        )
    )
    add(
        Case(
            "output-replaces-file-atomically",
            [*V, "-o", "{w}/old.srt"],
            0,
            prep=writes_file("old.srt"),
            outputs=("old.srt",),
            check=srt_ok("old.srt"),
        )
    )
    add(Case("output-dash-is-stdout", [*V, "-o", "-"], 0, r"00:00:00,000 -->"))
    add(Case("output-dev-stdout", [*V, "-o", "/dev/stdout"], 0, r"00:00:00,000 -->"))
    # `-o /dev/stdout >> log`: the path resolves to log.txt itself; renaming over it once destroyed the log.
    for name, path in (("dev-stdout", "/dev/stdout"), ("dev-fd-1", "/dev/fd/1"), ("proc-self-fd-1", "/proc/self/fd/1")):
        add(
            Case(
                f"output-{name}-appended-log-kept",
                [*V, "-o", path],
                0,
                prep=writes_file("log.txt", "keep\n"),
                driver=stdout_into("log.txt"),
                outputs=("log.txt",),
                check=log_kept_and_srt("log.txt"),
            )
        )
    add(
        Case(
            "output-dev-fd-1-read-write-log-kept",
            [*V, "-o", "/dev/fd/1"],
            0,
            prep=writes_file("log.txt", "keep\n"),
            driver=stdout_into("log.txt", append=False),
            outputs=("log.txt",),
            check=log_kept_and_srt("log.txt"),
        )
    )
    add(
        Case(
            "output-link-to-dev-stdout-log-kept",
            [*V, "-o", "{w}/out.srt"],
            0,
            prep=lambda env: ((env.w / "log.txt").write_text("keep\n"), os.symlink("/dev/stdout", env.w / "out.srt")),
            driver=stdout_into("log.txt"),
            outputs=("log.txt",),
            check=log_kept_and_srt("log.txt"),
        )
    )
    add(Case("output-closed-descriptor", [*V, "-o", "/dev/fd/9"], 2, "not open"))
    add(
        Case(
            "output-kept-when-input-bad",
            [*C, "{w}/text.mp4", *M, "--format", "srt", "-o", "{w}/keep.srt"],
            2,
            "video",
            prep=writes_file("keep.srt"),
            check=unchanged_file("keep.srt"),
        )
    )
    add(
        Case(
            "output-kept-when-model-bad",
            [*V, "-m", "{w}/nothing", "-o", "{w}/keep.srt"],
            3,
            "does not exist",
            prep=writes_file("keep.srt"),
            check=unchanged_file("keep.srt"),
        )
    )
    # ---- signals
    long_caption = [*C, *IMG, *M, "--no-split", "--stream", "--max-new-tokens", "6000"]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        add(
            Case(
                f"image-caption-{sig.name}",
                long_caption,
                130,
                "interrupted",
                driver=signal_after(sig, first_stdout_byte),
            )
        )
    for sig in (signal.SIGTERM, signal.SIGINT):
        add(
            Case(
                f"export-{sig.name}-cleans-up",
                ["export", "{ckpt}", "-o", "{w}/out", "--variants", "fp32,q4"],
                130,
                "interrupted",
                driver=signal_after(sig, partial_exists(".out.partial-*/onnx")),
                check=export_tmp_gone,
            )
        )
    add(
        Case(
            "timeline-SIGTERM-keeps-cues",
            [
                *C,
                "{w}/long.mp4",
                *M,
                *T,
                "--every",
                "1",
                "--no-scene",
                "--threshold",
                "0",
                "--format",
                "srt",
                "-o",
                "{w}/long.srt",
            ],
            130,
            "stopped",
            driver=signal_after(signal.SIGTERM, partial_file_has("-->")),
            outputs=("long.srt",),
            check=srt_ok("long.srt"),
        )
    )
    return c


CASES = cases()


def test_corpus_is_wide_enough():
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def hostile_env(tiny256, assets):
    ckpt, bundle = tiny256
    return {"B": str(bundle), "ckpt": str(ckpt), "assets": assets}


def _fmt(arg, env):
    if isinstance(arg, bytes):
        return os.fsencode(os.fsdecode(arg).format(**env))
    return arg.format(**env)


OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")  # <_io.BytesIO object at 0x7f...>


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, hostile_env, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(hostile_env["assets"], w)
    env = Env(hostile_env, w=str(w), port=str(free_port()))
    bundle = Path(env["B"])
    try:
        if case.prep:
            case.prep(env)
        before, bundle_before = snapshot(w), snapshot(bundle)
        argv = [_fmt(a, env) for a in case.argv]
        cwd = Path(case.cwd.format(**env)) if case.cwd else None
        r = case.driver(env, argv) if case.driver else run(argv, env=case.env, caps=case.caps, cwd=cwd)
        out, err = text(r.stdout), text(r.stderr)
        assert r.returncode == case.code, f"exit {r.returncode}, expected {case.code}\nstderr: {err[-1500:]}"
        assert "Traceback" not in err and "this is a bug" not in err, err[-1500:]
        assert not OBJECT_REPR.search(err + out), "a Python object's repr reached the user: " + err[-1500:]
        if case.code in (2, 3, 4) and case.err:
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, err
            assert ERROR_LINE.match(errors[0]), errors[0]
            assert re.search(case.err, errors[0], re.IGNORECASE), errors[0]
        elif case.code == 130:
            assert case.err in err, err
        elif case.code == 0 and case.err:
            assert re.search(case.err, out), out[-800:]
        after = snapshot(w)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        allowed = set(case.outputs)
        assert not {
            k
            for k in changed
            if k not in allowed and not k.startswith(("full/", "ro/", *(f"{o}/" for o in case.outputs)))
        }, changed
        assert snapshot(bundle) == bundle_before, "the shared bundle was modified"
        assert not leftovers(w) and not leftovers(bundle), leftovers(w)
        if case.check:
            case.check(env, r)
    finally:
        for mnt in reversed(env.get("mounts", [])):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        for p in w.rglob("*"):  # the permission cases leave modes that would stop pytest's cleanup
            if not p.is_symlink():
                try:
                    p.chmod(0o755 if p.is_dir() else 0o644)
                except OSError:
                    pass
