"""Captioning an archive: many real videos (and images) with one output each, a manifest, resume after SIGTERM,
worker processes, and a local Ray cluster (started here on 127.0.0.1) with a worker killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import random_image
from videotools import free_port, scenes

COLORS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple", "cyan", "magenta", "gray", "pink"]


def run_cli(*args, timeout=600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgevlm.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def outputs(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".srt", ".txt", ".vtt")
    }


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """12 short real videos in two camera folders, one corrupt video, one image."""
    root = tmp_path_factory.mktemp("archive")
    for i in range(12):
        cam = root / ("camA" if i % 2 else "camB") / "day1"
        cam.mkdir(parents=True, exist_ok=True)
        scenes(cam / f"{i:04d}.mp4", (COLORS[i], COLORS[(i + 3) % 12], COLORS[(i + 7) % 12]), seconds=1)
    (root / "camB" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    random_image(90, 120).save(root / "camA" / "still.png")
    return root


@pytest.fixture(scope="module")
def reference(archive, tiny256, tmp_path_factory):
    """The single-process run: what every other runner must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ref")
    r = run_cli("caption", archive, "-o", out, "-m", tiny256[1], "--every", "1", "--threads", "2")
    assert r.returncode == 2, r.stderr  # the broken video fails; the rest is done
    assert "done 13, failed 1, skipped 0" in r.stderr and "broken.mp4" in r.stderr
    return out


def test_one_output_per_input_and_a_manifest(archive, reference, tiny256):
    files = outputs(reference)
    assert len(files) == 13 and "camA/still.txt" in files and "camB/day1/0000.srt" in files
    for name, data in files.items():
        if name.endswith(".srt"):
            assert data.startswith(b"1\n00:00:00,000 --> ") and data.count(b" --> ") >= 2, name
    rows = manifest(reference)
    assert len(rows) == 14 and len({r["input"] for r in rows}) == 14
    broken = [r for r in rows if r["status"] == "error"]
    assert len(broken) == 1 and broken[0]["input"].endswith("broken.mp4")
    assert "broken.mp4 is a media file but has no video" in broken[0]["error"]
    import hashlib

    for r in rows:
        if r["status"] == "done":
            assert hashlib.sha256(Path(r["output"]).read_bytes()).hexdigest() == r["sha256"]
            assert r["duration"] == (3.0 if r["kind"] == "video" else 0.0) and r["seconds"] > 0
    assert not list(reference.rglob("*.partial"))
    r = run_cli("caption", archive, "-o", reference, "-m", tiny256[1], "--every", "1")  # nothing left but the error
    assert "13 already done, 1 to caption" in r.stderr and "done 0, failed 1, skipped 13" in r.stderr


def test_archive_outputs_equal_captioning_each_file_alone(archive, reference, tiny256, tmp_path):
    for name in ("camA/day1/0001.mp4", "camB/day1/0004.mp4"):
        single = tmp_path / "one.srt"
        r = run_cli("caption", archive / name, "-m", tiny256[1], "--every", "1", "--format", "srt", "-o", single)
        assert r.returncode == 0, r.stderr
        assert single.read_bytes() == (reference / name).with_suffix(".srt").read_bytes()


def test_worker_processes_give_the_same_outputs(archive, reference, tiny256, tmp_path):
    r = run_cli("caption", archive, "-o", tmp_path, "-m", tiny256[1], "--every", "1", "--jobs", "2")
    assert r.returncode == 2 and "done 13, failed 1" in r.stderr, r.stderr
    assert outputs(tmp_path) == outputs(reference)
    workers = {row["worker"] for row in manifest(tmp_path)}
    assert len(workers) == 2  # two processes shared the work


def test_resume_after_sigterm_does_only_the_unfinished_files(archive, reference, tiny256, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgevlm.cli",
            "caption",
            str(archive),
            "-o",
            str(tmp_path),
            "-m",
            str(tiny256[1]),
            "--every",
            "1",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (tmp_path / "manifest.jsonl").exists() and len(manifest(tmp_path)) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    first = {r["input"]: r for r in manifest(tmp_path)}
    assert 4 <= len(first) < 14, "SIGTERM came too late to test resuming"
    assert not list(tmp_path.rglob("*.partial"))  # the input being captioned left nothing behind
    kept = {r["output"]: os.stat(r["output"]).st_mtime_ns for r in first.values() if r["status"] == "done"}
    r = run_cli("caption", archive, "-o", tmp_path, "-m", tiny256[1], "--every", "1")
    done_before = sum(1 for row in first.values() if row["status"] == "done")
    assert f"{done_before} already done, {14 - done_before} to caption" in r.stderr, r.stderr
    assert {o: os.stat(o).st_mtime_ns for o in kept} == kept  # finished outputs were not redone
    assert outputs(tmp_path) == outputs(reference)
    rows = manifest(tmp_path)
    done = [row["input"] for row in rows if row["status"] == "done"]
    assert len(done) == len(set(done)) == 13  # each input finished exactly once


def test_changed_or_removed_outputs_and_inputs_are_redone(archive, reference, tiny256, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    (Path(rows["0003.mp4"]["output"].replace(str(reference), str(out)))).unlink()
    edited = Path(rows["0005.mp4"]["output"].replace(str(reference), str(out)))
    edited.write_text("hand edited\n")
    # The manifest names outputs under the reference folder: rewrite it as if the run had been here.
    text = (out / "manifest.jsonl").read_text().replace(str(reference), str(out))
    (out / "manifest.jsonl").write_text(text + '{"input": "/cut/short", "stat')  # a crash's half line
    r = run_cli("caption", archive, "-o", out, "-m", tiny256[1], "--every", "1")
    assert "11 already done, 3 to caption" in r.stderr, r.stderr  # removed, edited, and the broken one
    assert outputs(out) == outputs(reference)


def test_one_run_per_output_folder_and_clear_errors(archive, tiny256, tmp_path):
    import fcntl

    tmp_path.joinpath("out").mkdir()
    with open(tmp_path / "out" / ".edgevlm-archive.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = run_cli("caption", archive, "-o", tmp_path / "out", "-m", tiny256[1])
    assert r.returncode == 2 and "another edgevlm run is writing to" in r.stderr
    for args, message in [
        ((archive,), "needs -o OUT_DIR"),
        ((archive, "-o", archive / "camA" / "still.png"), "is a file"),
        ((str(archive / "nothing*.mp4"), "-o", tmp_path / "o2"), "matches no file"),
        (
            (
                archive / "camA" / "day1" / "0001.mp4",
                archive / "camB" / "day1" / "0000.mp4",
                "--mode",
                "clip",
                "-o",
                tmp_path / "o3",
            ),
            "--mode",
        ),
        ((tmp_path / "out",), "needs -o"),
    ]:
        r = run_cli("caption", *args, "-m", tiny256[1])
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_plan_mirrors_folders_and_resolves_clashes(tmp_path):
    from edgevlm.archive.plan import plan

    (tmp_path / "in" / "x").mkdir(parents=True)
    for name in ("x/a.mp4", "x/a.mkv", "b.mov", "c.png", "notes.txt", ".hidden.mp4"):
        (tmp_path / "in" / name).write_bytes(b"")
    items = plan([str(tmp_path / "in")], tmp_path / "out", "vtt")
    got = sorted(Path(i.output).relative_to(tmp_path / "out").as_posix() for i in items)
    assert got == ["b.vtt", "c.txt", "x/a.mkv.vtt", "x/a.mp4.vtt"]
    items = plan([str(tmp_path / "in" / "**" / "*.mp4")], tmp_path / "out", "jsonl")
    assert [Path(i.output).name for i in items] == ["a.jsonl"]


def test_plan_never_gives_two_inputs_one_output(tmp_path):
    """The same file name in two folders given (cam1/door.mp4, cam2/door.mp4) once wrote both to one door.srt:
    the second overwrote the first, and each resume redid one and overwrote the other."""
    from edgevlm import InputError
    from edgevlm.archive.plan import plan

    for cam in ("cam1", "cam2"):
        (tmp_path / "in" / cam).mkdir(parents=True)
        (tmp_path / "in" / cam / "door.mp4").write_bytes(b"")
    (tmp_path / "in" / "cam1" / "hall.mp4").write_bytes(b"")
    for specs in ([str(tmp_path / "in" / "cam1"), str(tmp_path / "in" / "cam2")], [str(tmp_path / "in/*/*.mp4")]):
        items = plan(specs, tmp_path / "out", "srt")
        got = sorted(Path(i.output).relative_to(tmp_path / "out").as_posix() for i in items)
        assert got == ["cam1/door.mp4.srt", "cam2/door.mp4.srt", "hall.srt"], specs
    (tmp_path / "other" / "cam1").mkdir(parents=True)
    (tmp_path / "other" / "cam1" / "door.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="would write the same output"):
        plan([str(tmp_path / "in" / "cam1"), str(tmp_path / "other" / "cam1")], tmp_path / "out", "srt")


# ------------------------------------------------------------------------------------------------- Ray
def test_ray_connection_failures_say_why(tiny256, tmp_path, ray_cluster):
    """Without the cluster's token, one line naming token authentication and where the token goes (it was ~20
    lines of InvalidAuthToken and a bare "could not reach"); nothing listening: said at once (Ray retried for
    minutes)."""
    address, env = ray_cluster
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    random_image(64, 64).save(image)
    no_token = {**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    r = run_cli("caption", image.parent, "-o", tmp_path / "out", "-m", tiny256[1], "--ray", address, env=no_token)
    assert r.returncode == 2 and "token authentication" in r.stderr and "~/.ray/auth_token" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not list((tmp_path / "out").glob("*.txt"))
    t0 = time.monotonic()
    r = run_cli("caption", image.parent, "-o", tmp_path / "out", "-m", tiny256[1], "--ray", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "could not reach the Ray cluster" in r.stderr and "ray start --head" in r.stderr
    assert time.monotonic() - t0 < 60, "an address with nothing listening must fail fast"


def test_ray_cluster_with_a_worker_killed_mid_run(archive, reference, tiny256, tmp_path, ray_cluster):
    address, env = ray_cluster
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgevlm.cli",
            "caption",
            str(archive),
            "-o",
            str(tmp_path),
            "-m",
            str(tiny256[1]),
            "--every",
            "1",
            "--ray",
            address,
            "--ray-actors",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        if (tmp_path / "manifest.jsonl").exists() and manifest(tmp_path):
            workers = [
                p
                for p in psutil.process_iter(["name", "cmdline"])
                if "Captioner" in " ".join(p.info["cmdline"] or []) + (p.info["name"] or "")
            ]
            if workers:
                killed = workers[0].pid
                workers[0].kill()
        time.sleep(0.05)
    _, err = proc.communicate(timeout=600)
    assert killed is not None, f"no Ray worker was found to kill: {err}"
    assert proc.returncode == 2 and "done 13, failed 1" in err, err
    assert outputs(tmp_path) == outputs(reference)  # every input: one complete output, identical to one process
    rows = manifest(tmp_path)
    assert sorted(r["input"] for r in rows) == sorted({r["input"] for r in rows}) and len(rows) == 14
    assert not list(tmp_path.rglob("*.partial"))


def test_detail_applies_to_the_images_of_an_archive(tiny256, tmp_path):
    """--detail medium resizes an archive's images to two tiles along the longer side before splitting (5 tiles
    here instead of 13) and leaves its videos as they are (one tile per frame)."""
    src = tmp_path / "in"
    src.mkdir()
    random_image(90, 120).save(src / "still.png")
    scenes(src / "clip.mp4", (COLORS[0], COLORS[5]), seconds=1)
    out = tmp_path / "out"
    r = run_cli(
        "caption",
        src,
        "-o",
        out,
        "-m",
        tiny256[1],
        "--every",
        "1",
        "--format",
        "jsonl",
        "--detail",
        "medium",
        "--max-new-tokens",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "still.jsonl").read_text())["tiles"] == 5
    assert [json.loads(line)["text"] is not None for line in (out / "clip.jsonl").read_text().splitlines()]
