"""Limits are checked before the work they guard, through the public API: the context budget before any image is
encoded, the pixel limit before a file is decoded, and the output target before a model is loaded."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import edgevlm
from conftest import random_image
from edgevlm.errors import ContextLengthError, InputError, OutputError
from edgevlm.media.outputs import OutputTarget


@pytest.fixture(scope="module")
def vlm(tiny256):
    return edgevlm.load(tiny256[1], threads=1)


def test_context_is_checked_before_any_image_is_encoded(vlm, monkeypatch):
    runs = []
    real = vlm.encode_pixels
    monkeypatch.setattr(vlm, "encode_pixels", lambda pixels: runs.append(pixels.shape) or real(pixels))
    images = [random_image(300 + i, 500, seed=i) for i in range(40)]  # 40 x (12 tiles + 1) x 64 tokens > 8192
    with pytest.raises(ContextLengthError, match="context of 8192"):
        vlm.ask(images, "What changed?")
    assert runs == []
    r = vlm.ask(images[:2], "What changed?", max_new_tokens=2)  # the same path still works within budget
    assert r.images == 2 and len(runs) == 2
    with pytest.raises(ContextLengthError):
        vlm.ask(images[0], "Describe.", max_new_tokens=8192)
    assert len(runs) == 2


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
