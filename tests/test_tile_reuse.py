"""Tile-level feature reuse (TileReuse): a frame encodes only the tiles whose pixels changed since its source's last
frame, and the answers are token-identical to encoding every tile; geometry changes start over; bad options are
clear errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import random_image
from PIL import Image

import edgevlm
from edgevlm.errors import InputError


@pytest.fixture(scope="module", params=["fp32", "int8"])
def vlm(request, tiny256):
    """fp32, and int8, whose encoder quantizes activations with one scale per run (the case that needs one run
    per tile for a tile's features to depend on its own pixels only)."""
    return edgevlm.load(tiny256[1], variant=request.param, threads=1)


def _scene(seed: int = 1) -> Image.Image:
    return random_image(768, 1024, seed=seed)


def _with_corner(im: Image.Image, value: int = 255) -> Image.Image:
    a = np.array(im)
    a[:60, :60] = value  # the top-left corner: one tile of the grid, and the global view
    return Image.fromarray(a)


def _features(vlm, image, reuse=None):
    prompt = vlm.prepare(vlm.user_message(image, "Describe.", reuse=reuse))
    return vlm.encode(prompt)


def test_a_tiles_features_depend_on_its_own_pixels_only(vlm):
    full_a, full_b = _features(vlm, _scene()), _features(vlm, _with_corner(_scene()))
    same = [i for i in range(full_a.tiles) if np.array_equal(full_a.features[i], full_b.features[i])]
    assert full_a.tiles == full_b.tiles == 13  # 3 x 4 tiles and the global view
    assert 0 < len(same) < full_a.tiles - 1  # the corner's tile and the global view changed, most did not


def test_only_changed_tiles_are_encoded_and_the_features_are_exact(vlm):
    reuse = edgevlm.TileReuse()
    a, b = _scene(), _with_corner(_scene())
    first = _features(vlm, a, reuse)
    assert first.reused == 0 and reuse.encoded == first.tiles
    again = _features(vlm, a, reuse)
    assert again.reused == again.tiles  # nothing changed: no encoder run
    changed = _features(vlm, b, reuse)
    assert 0 < changed.reused <= changed.tiles - 2  # the corner's tile(s) and the global view were encoded
    assert np.array_equal(changed.features, _features(vlm, b).features)
    assert reuse.encoded == first.tiles + changed.tiles - changed.reused


def test_answers_are_token_identical_to_a_full_encode(vlm):
    reuse = edgevlm.TileReuse()
    frames = [_scene(), _with_corner(_scene()), _with_corner(_scene(), 0), _scene(2), _scene(), _scene(2)]
    for frame in frames:  # a corner that changes, then two scenes that alternate
        with_reuse = vlm.caption(frame, reuse=reuse, max_new_tokens=6)
        plain = vlm.caption(frame, cache=False, max_new_tokens=6)
        assert with_reuse.token_ids == plain.token_ids and plain.reused_tiles == 0
    assert reuse.reused > 0


def test_a_new_frame_size_or_tiling_starts_over(vlm):
    reuse = edgevlm.TileReuse()
    _features(vlm, _scene(), reuse)
    smaller = random_image(600, 800, seed=1)
    r = _features(vlm, smaller, reuse)
    assert r.reused == 0 and np.array_equal(r.features, _features(vlm, smaller).features)
    prompt = vlm.prepare(vlm.user_message(smaller, "Describe.", reuse=reuse), split=False)
    one_tile = vlm.encode(prompt)
    assert one_tile.tiles == 1 and one_tile.reused == 0
    reuse.reset()
    assert _features(vlm, smaller, reuse).reused == 0


def test_caption_batch_takes_one_reuse_per_source(vlm):
    cams = [edgevlm.TileReuse(), edgevlm.TileReuse()]
    frames = [_scene(3), _scene(4)]
    vlm.caption_batch(frames, reuse=cams, max_new_tokens=2)
    second = vlm.caption_batch([frames[0], _with_corner(frames[1])], reuse=cams, max_new_tokens=2)
    assert second[0].reused_tiles == second[0].tiles and 0 < second[1].reused_tiles < second[1].tiles
    plain = vlm.caption_batch([frames[0], _with_corner(frames[1])], cache=False, max_new_tokens=2)
    assert [r.token_ids for r in second] == [r.token_ids for r in plain]
    with pytest.raises(InputError, match="reuse has 1 entries for 2 images"):
        vlm.caption_batch(frames, reuse=cams[:1], max_new_tokens=2)


def test_a_tolerance_reuses_near_identical_tiles(tiny256):
    vlm = edgevlm.load(tiny256[1], threads=1)
    a = np.array(_scene(), dtype=np.int16)
    noisy = Image.fromarray(np.clip(a + np.random.default_rng(0).integers(-1, 2, a.shape), 0, 255).astype(np.uint8))
    exact, loose = edgevlm.TileReuse(), edgevlm.TileReuse(tolerance=2)
    for reuse in (exact, loose):
        _features(vlm, Image.fromarray(a.astype(np.uint8)), reuse)
    assert _features(vlm, noisy, exact).reused == 0
    assert _features(vlm, noisy, loose).reused == 13
    assert _features(vlm, _with_corner(noisy), loose).reused < 13


@pytest.mark.parametrize("bad", [-1, 256, float("nan"), float("inf"), "2", True, None])
def test_bad_tolerances_are_clear_errors(bad):
    with pytest.raises(InputError, match="tolerance=.* must be a number of grey levels from 0 to 255"):
        edgevlm.TileReuse(tolerance=bad)


def test_reuse_must_be_a_tile_reuse(tiny256):
    vlm = edgevlm.load(tiny256[1], threads=1)
    with pytest.raises(InputError, match="'reuse' must be an edgevlm.TileReuse, not dict"):
        vlm.prepare([{"role": "user", "content": [{"type": "image", "image": _scene(), "reuse": {}}]}])


# ------------------------------------------------------------------------------------- a real live stream
class Recorder:
    """The real model, keeping each frame it was asked to caption with the Result it gave."""

    def __init__(self, vlm):
        self.vlm, self.seen = vlm, []

    def caption(self, image, **kw):
        r = self.vlm.caption(image, **kw)
        self.seen.append((np.array(image), kw, r))
        return r


def test_watch_a_fixed_camera_encodes_the_changed_corner_only(tiny256, tmp_path):
    """A still scene with a box moving in one corner, served by ffmpeg on 127.0.0.1: after the first frame each
    caption encodes the corner's tile(s) and the global view, and every answer has the tokens of a full encode."""
    from videotools import corner_stream, free_port

    from edgevlm.media.live import watch

    vlm = edgevlm.load(tiny256[1], threads=1)
    scene = tmp_path / "scene.png"
    _scene(5).save(scene)
    server = corner_stream(free_port(), scene).start()
    rec = Recorder(vlm)
    try:
        captions = list(watch(rec, server.url, split=True, threshold=0, max_captions=5, max_new_tokens=4))
    finally:
        server.stop()
    assert [c.timings["tiles"] for c in captions] == [13] * 5
    assert captions[0].timings["tiles_reused"] == 0
    assert all(9 <= c.timings["tiles_reused"] <= 11 for c in captions[1:])  # 2 to 4 of 13 encoded
    for frame, kw, r in rec.seen:
        assert kw["reuse"] is not None
        assert vlm.caption(frame, cache=False, max_new_tokens=4).token_ids == r.token_ids


@pytest.mark.parametrize("reuse", [True, False])
def test_cli_watch_detail_high_reports_tiles_encoded_and_reused(tiny256, tmp_path, reuse):
    import json
    import subprocess
    import sys

    from videotools import corner_stream, free_port

    scene = tmp_path / "scene.png"
    _scene(6).save(scene)
    server = corner_stream(free_port(), scene).start()
    args = [server.url, "-m", tiny256[1], "--detail", "high", "--format", "jsonl", "--threshold", "0"]
    args += ["--max-captions", "3", "--max-new-tokens", "2", *([] if reuse else ["--no-tile-reuse"])]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "edgevlm.cli", "watch", *map(str, args)], capture_output=True, text=True, timeout=300
        )
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["timings"]["tiles"] for r in records] == [13] * 3
    reused = [r["timings"]["tiles_reused"] for r in records]
    assert reused[0] == 0 and (all(n >= 9 for n in reused[1:]) if reuse else reused == [0, 0, 0])


def test_watch_a_source_whose_frame_size_changes_mid_stream(tiny256):
    """Pushed frames: two of one size, two of another, then the first size again; reuse starts over at each
    change (never mixing features of different sizes), and every answer has the tokens of a full encode."""
    import threading

    from edgevlm.media.live import watch

    vlm = edgevlm.load(tiny256[1], threads=1)
    big, tall = np.array(_scene(7)), np.array(random_image(1024, 512, seed=7))  # 4 x 3 and 4 x 2 tiles
    frames = [big, _with_corner_array(big), tall, _with_corner_array(tall), big]
    src = edgevlm.PushSource()
    rec = Recorder(vlm)
    captions = []

    def consume():
        captions.extend(watch(rec, src, split=True, threshold=0, max_new_tokens=3))

    t = threading.Thread(target=consume)
    t.start()
    for i, f in enumerate(frames):
        src.push(f, timestamp=float(i))
        deadline = time.monotonic() + 30
        while len(captions) <= i and time.monotonic() < deadline:
            time.sleep(0.01)
    src.close()
    t.join(timeout=60)
    assert [c.timings["tiles"] for c in captions] == [13, 13, 9, 9, 13]
    assert [c.timings["tiles_reused"] > 0 for c in captions] == [False, True, False, True, False]
    for frame, _, r in rec.seen:
        assert vlm.caption(frame, cache=False, max_new_tokens=3).token_ids == r.token_ids


def _with_corner_array(a: np.ndarray) -> np.ndarray:
    return np.array(_with_corner(Image.fromarray(a)))


def test_another_model_starts_over(tiny256):
    """One TileReuse handed to two models (here fp32 and int8 of one bundle): each encodes its own features."""
    fp32, int8 = (edgevlm.load(tiny256[1], variant=v, threads=1) for v in ("fp32", "int8"))
    reuse = edgevlm.TileReuse()
    _features(fp32, _scene(), reuse)
    switched = _features(int8, _scene(), reuse)
    assert switched.reused == 0 and np.array_equal(switched.features, _features(int8, _scene()).features)
