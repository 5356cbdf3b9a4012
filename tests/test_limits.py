"""Limits are checked before the work they guard, through the public API: the context budget before any image is
encoded, the pixel limit before a file is decoded, and the output target before a model is loaded."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from conftest import random_image

import edgevlm
from edgevlm.errors import ContextLengthError, InputError, OutputError
from edgevlm.media.outputs import OutputTarget


@pytest.fixture(scope="module")
def vlm(tiny256):
    return edgevlm.load(tiny256[1], threads=1)


def test_context_is_checked_before_any_image_is_encoded(vlm, monkeypatch):
    runs = []
    vision = vlm.sessions["vision_encoder"]
    real = vision.run
    monkeypatch.setattr(vision, "run", lambda *a, **kw: runs.append(1) or real(*a, **kw))
    images = [random_image(300 + i, 500, seed=i) for i in range(40)]  # 40 x (12 tiles + 1) x 64 tokens > 8192
    with pytest.raises(ContextLengthError, match="context of 8192"):
        vlm.ask(images, "What changed?")
    assert runs == []
    r = vlm.ask(images[:2], "What changed?", max_new_tokens=2)  # the same path still works within budget
    assert r.images == 2 and len(runs) == r.tiles == 26  # one encoder run per tile
    with pytest.raises(ContextLengthError):
        vlm.ask(images[0], "Describe.", max_new_tokens=8192)
    assert len(runs) == 26


def test_pixel_limit_applies_before_decoding(tiny256, tmp_path):
    path = tmp_path / "big.png"
    random_image(300, 400).save(path)
    small = edgevlm.load(tiny256[1], max_image_pixels=1000)
    with pytest.raises(InputError, match="over the limit of 1,000 pixels"):
        small.caption(path)
    with pytest.raises(InputError, match="over the limit"):
        small.caption(np.zeros((100, 100, 3), np.uint8))
    assert small.caption(np.zeros((20, 20, 3), np.uint8), max_new_tokens=1).new_tokens == 1


def test_output_target_refuses_inputs_and_model_files(tiny256, tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    os.link(video, tmp_path / "hard.srt")
    os.symlink(video, tmp_path / "soft.srt")
    for target in (video, tmp_path / "hard.srt", tmp_path / "soft.srt", tmp_path / "sub" / ".." / "v.mp4"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputError, match="is the input"):
            OutputTarget(target, inputs=[video])
    with pytest.raises(OutputError, match="inside the model folder"):
        OutputTarget(tiny256[1] / "onnx" / "x.srt", model_dir=tiny256[1])
    assert OutputTarget("-").path is None and OutputTarget(None).path is None


def test_exported_bundle_is_readable_by_others(tiny256):
    umask = os.umask(0)
    os.umask(umask)
    bundle = tiny256[1]
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((bundle / "onnx").stat().st_mode) == 0o777 & ~umask
    for p in bundle.rglob("*"):
        if p.is_file():
            assert p.stat().st_mode & 0o044 == 0o044 & ~umask, p


def test_atomic_output_takes_the_umask_without_setting_it(tmp_path, monkeypatch):
    """The temporary file gets open()'s mode under the umask, and os.umask is never called: setting it, even for a
    moment, changes it for every thread of the process."""
    old = os.umask(0o027)
    try:

        def forbidden(mask):
            raise AssertionError("os.umask was called while writing")

        monkeypatch.setattr(os, "umask", forbidden)
        stream = OutputTarget(tmp_path / "out.txt").open()
        stream.write("a line\n")
        stream.commit()
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (tmp_path / "out.txt").read_text() == "a line\n"
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_descriptor_paths_write_through_the_descriptor(tmp_path):
    """/dev/fd/N names an open descriptor: writes go through it (offset and O_APPEND kept), the file behind it is
    never replaced."""
    from edgevlm.media.outputs import open_descriptor

    log = tmp_path / "log.txt"
    log.write_text("keep\n")
    with open(log, "a") as f:
        fd = f.fileno()
        inode = log.stat().st_ino
        assert open_descriptor(f"/dev/fd/{fd}") == fd and open_descriptor(f"/proc/self/fd/{fd}") == fd
        assert open_descriptor(log) is None and open_descriptor(tmp_path / "missing") is None
        target = OutputTarget(f"/dev/fd/{fd}")
        assert target.is_stream and target.fd == fd
        stream = target.open()
        stream.write("new\n")
        stream.commit()
        f.write("after\n")  # the caller's descriptor is still open and still appends
    assert log.read_text() == "keep\nnew\nafter\n" and log.stat().st_ino == inode
    with open(log) as f, pytest.raises(OutputError, match="reading only"):
        OutputTarget(f"/dev/fd/{f.fileno()}")
