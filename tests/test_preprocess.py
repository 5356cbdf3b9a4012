"""Pixel values, tile grid and prompt equal transformers' SmolVLMImageProcessor / SmolVLMProcessor."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from conftest import random_image
from PIL import Image

from edgevlm.engine.bundle import read_spec
from edgevlm.engine.preprocess import load_image, process_image, tile_grid
from edgevlm.errors import InputError

SIZES = [
    (1, 1),
    (1, 2),
    (2, 1),
    (1, 2000),
    (2000, 1),
    (3, 7),
    (16, 16),
    (31, 17),
    (64, 64),
    (100, 30),
    (30, 100),
    (224, 224),
    (256, 511),
    (333, 500),
    (383, 385),
    (384, 384),
    (480, 640),
    (511, 512),
    (512, 512),
    (513, 512),
    (600, 800),
    (720, 1280),
    (768, 1024),
    (1000, 999),
    (1024, 1),
    (1080, 1920),
    (1536, 1536),
    (2048, 2048),
    (2049, 1000),
    (3000, 4000),
    (5000, 700),
    (6000, 6000),
]


@pytest.fixture(scope="module", params=["256M", "2.2B"])
def arch(request, tiny256, tiny22b):
    from transformers import SmolVLMImageProcessor

    ckpt = {"256M": tiny256, "2.2B": tiny22b}[request.param][0]
    return read_spec(ckpt), SmolVLMImageProcessor.from_pretrained(str(ckpt))


def reference(processor, image: Image.Image, split: bool, **kw):
    # channels_last stated explicitly: transformers guesses channels-first for images 1, 3 or 4 pixels high.
    out = processor(
        images=[image],
        do_image_splitting=split,
        return_tensors="np",
        return_row_col_info=True,
        input_data_format="channels_last",
        **kw,
    )
    return out["pixel_values"][0], out["rows"][0][0], out["cols"][0][0]


@pytest.mark.parametrize("hw", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_pixels_and_grid_equal_reference(arch, hw):
    spec, processor = arch
    h, w = hw
    split = (h * w) % 3 != 1 or h < 10  # mix: most sizes split, some not
    image = random_image(h, w, seed=h * 7 + w)
    ref_pixels, ref_rows, ref_cols = reference(processor, image, split)
    ours = process_image(image, spec, split=split)
    assert (ours.rows, ours.cols) == (ref_rows, ref_cols)
    assert ours.pixel_values.shape == ref_pixels.shape
    np.testing.assert_allclose(ours.pixel_values, ref_pixels, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw", [(300, 420), (768, 1024), (1000, 40), (2000, 3000)])
@pytest.mark.parametrize("tiles", [1, 2, 3])
def test_longest_edge_pixels_and_grid_equal_reference(arch, hw, tiles):
    """A caller's longest_edge is transformers' size={"longest_edge": N}: same pixels and grid (split or not)."""
    spec, processor = arch
    edge, image = tiles * spec.tile, random_image(*hw, seed=hw[0] + tiles)
    for split in (True, False):
        ref_pixels, ref_rows, ref_cols = reference(processor, image, split, size={"longest_edge": edge})
        ours = process_image(image, spec, split=split, longest_edge=edge)
        assert (ours.rows, ours.cols) == (ref_rows, ref_cols)
        assert tile_grid(*image.size, spec, split, edge) == (ours.rows, ours.cols)
        np.testing.assert_allclose(ours.pixel_values, ref_pixels, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [0, -3, 4097, 2.5, "1024", True])
def test_bad_longest_edge_is_a_clear_error(bad):
    from edgevlm.engine.preprocess import check_longest_edge

    with pytest.raises(InputError, match="longest_edge must be a whole number of pixels"):
        check_longest_edge(bad)


@pytest.mark.parametrize("split", [True, False])
def test_rgba_composited_like_reference(arch, split):
    spec, processor = arch
    image = random_image(300, 200, seed=5, channels=4)
    ref_pixels, _, _ = reference(processor, image, split)
    np.testing.assert_allclose(process_image(image, spec, split=split).pixel_values, ref_pixels, atol=1e-6, rtol=0)


def _file(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "LA", "CMYK", "1"])
def test_files_of_other_modes_read_like_transformers_load_image(arch, tmp_path, mode):
    """Files go through transformers.image_utils.load_image semantics (EXIF transpose, then RGB)."""
    from transformers.image_utils import load_image as hf_load_image

    spec, processor = arch
    base = random_image(120, 90, seed=3)
    if mode == "I;16":
        arr = np.asarray(base.convert("L")).astype(np.uint16) * 257
        image = Image.fromarray(arr)  # uint16 -> mode I;16
        path = tmp_path / "img16.png"
    else:
        image = base.convert(mode)
        path = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    ours = load_image(path)
    assert ours.mode == "RGB"
    if mode == "I;16":  # transformers' load_image turns 16-bit into clipped 8-bit; we scale the range instead
        np.testing.assert_array_equal(np.asarray(ours)[..., 0], np.asarray(base.convert("L")))
        return
    ref = hf_load_image(str(path))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    ref_pixels, _, _ = reference(processor, ref, False)
    np.testing.assert_allclose(process_image(path, spec, split=False).pixel_values, ref_pixels, atol=1e-6, rtol=0)


def test_exif_rotation_applied(tmp_path):
    image = random_image(40, 80, seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (40, 80)


def test_numpy_bgr_and_rgb_explicit():
    rgb = np.asarray(random_image(50, 60, seed=4))
    bgr = rgb[..., ::-1].copy()
    assert np.array_equal(np.asarray(load_image(rgb, color="rgb")), rgb)
    assert np.array_equal(np.asarray(load_image(bgr, color="bgr")), rgb)
    gray16 = np.arange(50 * 60, dtype=np.uint16).reshape(50, 60) * 20
    assert load_image(gray16).mode == "RGB"
    floats = rgb.astype(np.float32) / 255.0
    assert np.abs(np.asarray(load_image(floats)).astype(int) - rgb).max() <= 1
    with pytest.raises(InputError, match="rgb"):
        load_image(rgb, color="hsv")


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"not an image at all", "not an image"),
        (b"GIF89a\x01", "not an image|corrupt|truncated"),
    ],
)
def test_bad_image_bytes_clear_errors(tmp_path, data, match):
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(InputError, match=match):
        load_image(path)


def test_truncated_png_and_jpeg(tmp_path):
    image = random_image(200, 200, seed=1)
    for fmt in ("PNG", "JPEG"):
        data = _file(image, fmt)
        path = tmp_path / f"trunc.{fmt.lower()}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match="corrupt|truncated"):
            load_image(path)


def test_missing_file_and_huge_dimensions(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    # A tiny file that declares 30000 x 30000 pixels: refused before decoding.
    from PIL import PngImagePlugin  # noqa: F401

    big = Image.new("1", (30000, 30000))
    path = tmp_path / "huge.png"
    big.save(path, optimize=True)
    with pytest.raises(InputError, match="limit|too large"):
        load_image(path)


RESIZES = [
    ((512, 512), (2048, 2048)),
    ((2048, 2048), (512, 512)),
    ((640, 480), (2048, 1536)),
    ((37, 53), (800, 700)),
    ((1000, 300), (999, 40)),
    ((800, 1200), (790, 100)),
    ((1000, 1000), (1000, 300)),
    ((300, 1000), (120, 200)),
    ((1, 700), (3, 5)),
    ((700, 1), (900, 2)),
    ((300, 200), (300, 200)),  # the same size: Pillow copies, and RGBA must not go through premultiplied alpha
]


@pytest.fixture(params=["library", "pillow"])
def resampler(request, monkeypatch):
    """The two ways resample.py resizes: the kernel library's resampler (required in CI, where the package is built
    with it) and Pillow in strips (an install without a compiler)."""
    from conftest import require

    from edgevlm.engine import kernels

    if request.param == "library":
        require(kernels.library(), "libedgevlm_kernels is not built here (no compiler at install time)")
        probe = kernels.resize(np.zeros((4, 4, 3), np.uint8), (8, 8), None, 1)
        assert probe is not None and probe.shape == (8, 8, 3)
    else:
        monkeypatch.setattr(kernels, "resize", lambda *a: None)
    return request.param


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_resize_gives_pillows_bytes(resampler, mode, workers):
    """The library's resampler, and each pass cut into strips on threads, equal Pillow's one call, in both of
    Pillow 13's pass orders (the height first when it shrinks by more than twice the width), with premultiplied
    alpha, and for 1-pixel strips."""
    from edgevlm.engine.resample import resize_lanczos

    rng = np.random.default_rng(workers)
    for (w, h), (W, H) in RESIZES:
        a = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
        if mode == "RGBA":
            a[..., 3] = rng.choice([0, 17, 128, 255], (h, w))
        image = Image.fromarray(a[..., 0] if mode == "L" else a, mode)
        ours = np.asarray(resize_lanczos(image, W, H, workers=workers))
        assert np.array_equal(ours, np.asarray(image.resize((W, H), Image.LANCZOS))), ((w, h), (W, H))


TWICE = [
    ((512, 512), (2048, 2048), (512, 512)),  # W1: SmolVLM2's rule for a 512 px photo, fused in the library
    ((640, 480), (2048, 1536), (512, 512)),
    ((300, 200), (2048, 1365), (512, 512)),
    ((2048, 1024), (1024, 512), (512, 512)),  # two downscales: not fused
    ((100, 700), (300, 2048), (512, 512)),  # the first resize's height first: not fused
    ((224, 224), (224, 224), (512, 512)),  # the first to the same size (a split image already a tile multiple)
    ((512, 512), (2048, 2048), (2048, 2048)),
]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_two_resizes_in_one_call_give_pillows_bytes(resampler, mode):
    """resize_lanczos_twice equals Pillow's two calls, fused or not (RGBA premultiplied around each resize)."""
    from edgevlm.engine.resample import resize_lanczos_twice

    rng = np.random.default_rng(7)
    for (w, h), first, then in TWICE:
        a = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
        if mode == "RGBA":
            a[..., 3] = rng.choice([0, 17, 128, 255], (h, w))
        image = Image.fromarray(a[..., 0] if mode == "L" else a, mode)
        want = image.resize(first, Image.LANCZOS).resize(then, Image.LANCZOS)
        ours = resize_lanczos_twice(image, first, then, workers=2)
        assert ours.mode == want.mode and np.array_equal(np.asarray(ours), np.asarray(want)), ((w, h), first, then)


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX-only")
def test_resize_after_fork_does_not_hang():
    """A server that forks workers after loading (gunicorn's pre-fork) resizes in the child: the child makes its
    own thread pool instead of waiting on the parent's threads, which do not exist there."""
    import os
    import time

    from edgevlm.engine.resample import resize_lanczos

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8))
    want = np.asarray(image.resize((1500, 1500), Image.LANCZOS))
    assert np.array_equal(np.asarray(resize_lanczos(image, 1500, 1500, workers=2)), want)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # child: exit code 0 only if the resize finishes and is right
        ok = np.array_equal(np.asarray(resize_lanczos(image, 1500, 1500, workers=2)), want)
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the resize in a forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


def test_threads_bound_each_image_resize(tiny256, monkeypatch):
    """load(threads=N) also bounds the resize of each image (as the C library's threads): `--jobs N` archive
    workers, each loaded with its share of the cores, then do not each resize on every core."""
    import edgevlm
    from edgevlm.engine import preprocess

    seen = []
    real = preprocess.resize_lanczos

    def spy(im, width, height, workers=None):
        seen.append(workers)
        return real(im, width, height, workers)

    monkeypatch.setattr(preprocess, "resize_lanczos", spy)
    vlm = edgevlm.load(tiny256[1], threads=1)
    vlm.ask(random_image(300, 420, seed=5), "What is it?", max_new_tokens=1, split=True)
    assert seen and set(seen) == {1}, seen
