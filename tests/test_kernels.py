"""edgevlm's own kernels (cpp_bindings/kernels, engine/kernels.py): the attention operator against ONNX Runtime's
com.microsoft MultiHeadAttention on the same inputs, both of its implementations, the load-time rewrite of a
quantized vision encoder (and none of the fp32 one), and the library's absence.

The bf16 kernel needs a CPU with AVX-512 BF16; where the CPU lacks it those cases skip and say so, and the portable
implementation is tested everywhere. The library itself must be built where the package was installed with a
compiler (CI: EDGEVLM_CI=1 makes its absence a failure, not a skip)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from conftest import random_image, require
from onnx import TensorProto, helper

import edgevlm
from edgevlm.engine import kernels


@pytest.fixture(scope="module")
def library():
    lib = kernels.library()
    require(lib, "libedgevlm_kernels is not built here (no compiler or ONNX Runtime headers at install time)")
    return lib


@pytest.fixture
def bf16(library):
    if kernels.attention_level(64) != kernels.BF16_LEVEL:
        pytest.skip("this CPU has no AVX-512 BF16: only the portable attention runs here")
    return library


def _attention_model(
    domain: str, batch: int, tokens: int, hidden: int, heads: int, scale: float | None, bias_shape: list | None = None
) -> bytes:
    shape = [batch, tokens, hidden]
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape) for x in ("q", "k", "v")]
    inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, bias_shape or [3 * hidden]))
    attrs = {"num_heads": heads, **({} if scale is None else {"scale": scale})}
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "b"], ["o"], domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "attention", inputs, [helper.make_tensor_value_info("o", TensorProto.FLOAT, shape)]
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)], ir_version=9
    ).SerializeToString()


def _run(model: bytes, feeds: dict, library=None) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if library is not None:
        so.register_custom_ops_library(str(library))
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _compare(library, batch, tokens, hidden, heads, scale, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {x: (rng.normal(size=(batch, tokens, hidden)) * 1.5).astype(np.float32) for x in "qkv"}
    feeds["b"] = (rng.normal(size=3 * hidden) * 0.3).astype(np.float32)
    ref = _run(_attention_model("com.microsoft", batch, tokens, hidden, heads, scale), feeds)
    ours = _run(_attention_model(kernels.DOMAIN, batch, tokens, hidden, heads, scale), feeds, library)
    cos = (ref * ours).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(ours, axis=-1)
    return float(cos.min()), float(np.abs(ref - ours).max())


SHAPES = [
    (1, 1024, 768, 12, 0.125),  # SigLIP-B/16 at 512 px: the vision encoder of 256M and 500M
    (2, 1000, 768, 12, None),  # two tiles; tokens not a multiple of the kernel's blocks; default scale
    (1, 37, 128, 2, 0.3),  # fewer tokens than one block of rows or keys
    (3, 256, 64, 2, None),  # head_dim 32: the tiny test checkpoints' vision tower
    (1, 729, 1152, 16, None),  # head_dim 72: SigLIP so400m at 384 px, the 2.2B's encoder
    (1, 50, 144, 2, 0.2),  # head_dim 72 with fewer tokens than a block
    (1, 1, 64, 1, 1.0),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[0]}x{s[1]}x{s[2]}h{s[3]}" for s in SHAPES])
def test_bf16_attention_matches_onnxruntime(bf16, shape):
    """bf16 inputs, fp32 accumulation and softmax: every token's output within cosine 0.9999 of ONNX Runtime's fp32
    kernel (measured 0.99996-0.99998)."""
    cos, _ = _compare(bf16, *shape)
    assert cos > 0.9999, cos


@pytest.mark.parametrize(
    "shape",
    SHAPES + [(1, 64, 160, 2, None)],  # head_dim 80: no bf16 kernel, portable only
    ids=[f"{s[0]}x{s[1]}x{s[2]}h{s[3]}" for s in SHAPES + [(1, 64, 160, 2, None)]],
)
def test_portable_attention_matches_onnxruntime(library, shape, monkeypatch):
    """The fp32 loops every CPU runs (EDGEVLM_KERNELS=portable caps the library to them): the same numbers."""
    monkeypatch.setenv("EDGEVLM_KERNELS", "portable")
    if shape[1] > 512:
        shape = (1, 200, *shape[2:])  # the portable loops are slow: fewer tokens, the same head shapes
    cos, diff = _compare(library, *shape)
    assert cos > 0.999999 and diff < 1e-4, (cos, diff)


def test_bad_shapes_are_an_onnxruntime_error_not_a_crash(library):
    model = _attention_model(kernels.DOMAIN, 1, 8, 64, 1, None, bias_shape=["n"])
    feeds = {x: np.zeros((1, 8, 64), np.float32) for x in "qkv"}
    feeds["b"] = np.zeros(10, np.float32)  # not 3 x hidden
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="bias must hold 3 x hidden"):
        sess.run(None, feeds)


def test_quantized_vision_runs_on_the_kernel_and_keeps_its_features(bf16, tiny256, monkeypatch):
    ours = edgevlm.load(tiny256[1], variant="int8")
    assert ours.kernels == {"vision_encoder": "attention:bf16"}
    monkeypatch.setenv("EDGEVLM_KERNELS", "off")
    kernels.library.cache_clear()
    try:
        plain = edgevlm.load(tiny256[1], variant="int8")
    finally:
        monkeypatch.undo()
        kernels.library.cache_clear()
    assert plain.kernels == {}
    for seed in range(3):
        image = random_image(200, 260, seed=60 + seed)
        a = plain.encode(plain.prepare(plain.user_message(image, "Describe."), split=True)).features
        b = ours.encode(ours.prepare(ours.user_message(image, "Describe."), split=True)).features
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cos.min() > 0.999, cos.min()


def test_fp32_vision_is_never_rewritten(library, tiny256):
    """fp32 promises PyTorch's exact tokens, so its encoder keeps ONNX Runtime's fp32 attention."""
    assert edgevlm.load(tiny256[1], variant="fp32").kernels == {}


def test_the_export_writes_kernel_graphs_that_store_no_weights(tiny256):
    """Beside the quantized vision encoder only: a small graph whose weights are the standard file's own bytes
    (external data into it), listed and checksummed in the manifest; the standard file is standard ONNX."""
    import json

    import onnx

    bundle = tiny256[1]
    manifest = json.loads((bundle / "edgevlm.json").read_text())
    graphs = manifest["kernel_graphs"]
    vision = {parts["vision_encoder"] for parts in manifest["variants"].values()}
    assert set(graphs) == {rel for rel in vision if "int8" in rel or "q4" in rel}, graphs
    for standard, kernel in graphs.items():
        assert kernel in manifest["files"] and (bundle / kernel).stat().st_size < (bundle / standard).stat().st_size / 3
        model = onnx.load(str(bundle / kernel), load_external_data=False)
        external = [
            t
            for g in kernels.graphs(model.graph)
            for t in g.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
        ]
        assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {
            standard.rsplit("/", 1)[1]
        }
        domains = {n.domain for g in kernels.graphs(model.graph) for n in g.node if n.op_type == "MultiHeadAttention"}
        assert kernels.DOMAIN in domains
        plain = onnx.load(str(bundle / standard))
        assert kernels.DOMAIN not in {n.domain for g in kernels.graphs(plain.graph) for n in g.node}
        ort.InferenceSession(str(bundle / standard), providers=["CPUExecutionProvider"])  # no library needed


def test_a_changed_kernel_graph_is_caught(bf16, tiny256, tmp_path):
    """The kernel graph is checksummed like every file the runtime opens."""
    import json
    import shutil

    copy = shutil.copytree(tiny256[1], tmp_path / "b")
    kernel = copy / json.loads((copy / "edgevlm.json").read_text())["kernel_graphs"]["onnx/vision_encoder_int8.onnx"]
    data = bytearray(kernel.read_bytes())
    data[-1] ^= 1
    kernel.write_bytes(bytes(data))
    with pytest.raises(edgevlm.ModelError, match="does not match its checksum"):
        edgevlm.load(copy, variant="int8")
    assert edgevlm.load(copy, variant="fp32").kernels == {}  # a variant that does not open it still loads


def test_without_the_library_nothing_changes(tiny256, tmp_path):
    """EDGEVLM_KERNELS=off (as an install without a compiler): same int8 tokens as ever, no rewrite."""
    code = (
        f"import edgevlm; v = edgevlm.load({str(tiny256[1])!r}, variant='int8'); "
        "r = v.ask(None, 'Hi', max_new_tokens=3); print(v.kernels, r.new_tokens)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEVLM_KERNELS": "off"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "{}"
