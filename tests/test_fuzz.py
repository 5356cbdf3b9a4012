"""Property-based tests (hypothesis) of the parts that meet untrusted input: image decoding and preprocessing, the
manifest reader, the prompt builder and the caption writers. Each property is either "a clear EdgeVLMError or a
correct result, nothing else" or a round trip. Example counts are bounded (the `ci` profile in conftest.py)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from conftest import random_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgevlm.engine import bundle as bundle_mod
from edgevlm.engine import prompt as prompt_mod
from edgevlm.engine.preprocess import load_image, process_image, tile_grid
from edgevlm.errors import InputError, ModelError
from edgevlm.media.captions import CaptionWriter
from edgevlm.records import Segment

SLOW = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None)


def _valid_image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    random_image(37, 53, seed=9).save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _valid_image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@st.composite
def mutated_images(draw):
    """A valid file of some format with bytes flipped, cut, or inserted: the inputs real corruption produces."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            data = data[:pos]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@SLOW
@given(st.one_of(mutated_images(), st.binary(max_size=2048)))
def test_image_bytes_decode_or_fail_clearly(data):
    try:
        im = load_image(data)
    except InputError:
        return
    assert im.mode in ("RGB", "RGBA") and im.width >= 1 and im.height >= 1


@pytest.fixture(scope="module")
def spec(tiny256):
    return bundle_mod.read_spec(tiny256[1])


@SLOW
@given(
    h=st.integers(1, 1400),
    w=st.integers(1, 1400),
    channels=st.sampled_from([0, 1, 3, 4]),
    dtype=st.sampled_from(["uint8", "uint16", "float32"]),
    split=st.sampled_from([None, True, False]),
)
def test_any_array_preprocesses_to_the_predicted_tiles(spec, h, w, channels, dtype, split):
    rng = np.random.default_rng(h * 7919 + w)
    shape = (h, w) if channels == 0 else (h, w, channels)
    top = {"uint8": 255, "uint16": 65535, "float32": 1.0}[dtype]
    a = (rng.random(shape) * top).astype(dtype)
    out = process_image(a, spec, split=split)
    rows, cols = tile_grid(w, h, spec, split)
    assert (out.rows, out.cols) == (rows, cols)
    assert out.pixel_values.shape == (rows * cols + 1 if rows else 1, 3, spec.tile, spec.tile)
    assert np.isfinite(out.pixel_values).all()
    low = (0 - max(spec.image_mean)) / min(spec.image_std)
    high = (1 - min(spec.image_mean)) / min(spec.image_std)
    assert low - 1e-5 <= out.pixel_values.min() and out.pixel_values.max() <= high + 1e-5


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def config_only_bundle(tiny256, tmp_path_factory):
    """The tiny bundle's small files (no ONNX): enough for open_bundle to read configs and the manifest."""
    root = tmp_path_factory.mktemp("manifest_fuzz")
    for p in tiny256[1].iterdir():
        if p.is_file():
            shutil.copy(p, root / p.name)
    return root


def _mutate(manifest, draw):
    m = json.loads(json.dumps(manifest))
    for _ in range(draw(st.integers(1, 4))):
        path, node = [], m
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
            path.append((node, key))
            node = node[key]
        if not path:
            return draw(JSON)
        parent, key = path[-1]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(JSON | st.sampled_from(["/etc/passwd", "../x.onnx", "onnx/../../x", "", "0" * 64]))
    return m


@SLOW
@given(data=st.data())
def test_manifest_reader_accepts_valid_or_refuses_clearly(config_only_bundle, data):
    original = json.loads((config_only_bundle / "edgevlm.json").read_text())
    manifest = data.draw(st.one_of(JSON, st.builds(lambda: None).map(lambda _: _mutate(original, data.draw))))
    root = config_only_bundle.parent / "manifest_case"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(config_only_bundle, root)
    (root / "edgevlm.json").write_text(json.dumps(manifest))
    try:
        b = bundle_mod.open_bundle(root)
    except ModelError:
        return
    for parts in b.files.values():  # whatever was accepted names files inside the bundle only
        for path in parts.values():
            assert root.resolve() in path.resolve().parents
    try:
        bundle_mod.verify_files(b, list(b.part_files(None).values()))
    except ModelError:
        pass  # the ONNX files are absent here; a refusal must still be the clear kind


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60) | st.sampled_from(
    ["<image>", "a <video> b", "<end_of_utterance>", "<|im_start|>", "<row_1_col_1>", "{{ 7*7 }}", "{% raw %}"]
)


@st.composite
def conversations(draw):
    messages, slots = [], []
    for _ in range(draw(st.integers(1, 4))):
        role = draw(st.sampled_from(["system", "user", "assistant"]))
        content = []
        for _ in range(draw(st.integers(1, 3))):
            if role == "user" and draw(st.booleans()):
                content.append({"type": "image"})
                slots.append(prompt_mod.ImageSlot(*draw(st.sampled_from([(0, 0), (1, 2), (2, 2), (4, 4)]))))
            else:
                content.append({"type": "text", "text": draw(TEXT)})
        messages.append({"role": role, "content": content})
    return messages, slots


@SLOW
@given(conv=conversations())
def test_prompt_builder_counts_image_tokens_exactly(tiny256, conv):
    messages, slots = conv
    template = bundle_mod.open_bundle(tiny256[1]).chat_template
    try:
        norm = prompt_mod.normalize_messages(messages)
    except InputError:
        assert any(
            tok in item.get("text", "") for m in messages for item in m["content"] for tok in prompt_mod.RESERVED
        )
        return
    text = prompt_mod.expand_images(prompt_mod.render(norm, template), slots, 64)
    expected = sum((s.rows * s.cols + 1) * 64 for s in slots)
    assert text.count(prompt_mod.IMAGE) == expected
    assert text.count(prompt_mod.GLOBAL) == len(slots)
    for m in messages:  # user text reaches the prompt verbatim: the template is data, never code
        for item in m["content"]:
            if item["type"] == "text":
                assert item["text"].strip() in text


CUE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=80
) | st.sampled_from(["a --> b", "line\n\nbreak", "\n\n", "-->", "<b>x</b>", " "])


@st.composite
def segment_lists(draw):
    t, segs = 0.0, []
    for _ in range(draw(st.integers(1, 8))):
        length = draw(st.floats(0.001, 4000, allow_nan=False))
        segs.append(Segment(start=t, end=t + length, text=draw(CUE_TEXT), frame_time=t))
        t += length
    return segs


@SLOW
@given(segs=segment_lists(), fmt=st.sampled_from(["srt", "vtt", "jsonl", "text"]))
def test_caption_writers_always_write_valid_files(tmp_path_factory, segs, fmt):
    import srt
    import webvtt

    path = tmp_path_factory.mktemp("cues") / f"out.{fmt}"
    with CaptionWriter(fmt, path) as w:
        for s in segs:
            w.write(s)
    body = path.read_text(encoding="utf-8")
    if fmt == "srt":
        cues = list(srt.parse(body))
        assert len(cues) == len(segs)
        for cue, s in zip(cues, segs):
            assert abs(cue.start.total_seconds() - s.start) <= 0.0005 + 1e-9
            assert cue.content.strip() and "\n\n" not in cue.content
    elif fmt == "vtt":
        cues = webvtt.from_buffer(io.StringIO(body)).captions
        assert len(cues) == len(segs)
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in body.splitlines()]
        assert [r["text"] for r in rows] == [s.text for s in segs]
    else:
        assert body.count("\n") == len(segs)
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary file left
