"""edgevlm's own kernels (cpp_bindings/kernels, engine/kernels.py): the attention operator against ONNX Runtime's
com.microsoft MultiHeadAttention on the same inputs, the 4-bit MatMulQ4 against the three ONNX Runtime nodes it
replaces, both implementations of each, the kernel graphs of a quantized vision encoder and a 4-bit decoder (and
none of the fp32 ones), and the library's absence.

The bf16 kernel needs a CPU with AVX-512 BF16; where the CPU lacks it those cases skip and say so, and the portable
implementation is tested everywhere. On a CPU with AMX the bf16 cases run twice: on the tiles (the library's own
choice there) and capped to AVX-512 (EDGEVLM_KERNELS=avx512). The library itself must be built where the package
was installed with a compiler (CI: EDGEVLM_CI=1 makes its absence a failure, not a skip)."""

from __future__ import annotations

import os
import platform
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
    if kernels.attention_level(64) < kernels.BF16_LEVEL:
        pytest.skip("this CPU has no AVX-512 BF16: only the portable attention runs here")
    return library


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    except OSError:
        return set()


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


@pytest.mark.parametrize("cap", ["best", "avx512"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[0]}x{s[1]}x{s[2]}h{s[3]}" for s in SHAPES])
def test_bf16_attention_matches_onnxruntime(bf16, shape, cap, monkeypatch):
    """bf16 inputs, fp32 accumulation and softmax: every token's output within cosine 0.9999 of ONNX Runtime's fp32
    kernel (measured 0.99996-0.99998), on AMX tiles where the CPU has them and on AVX-512 vectors."""
    if cap == "avx512":
        monkeypatch.setenv("EDGEVLM_KERNELS", "avx512")
    cos, _ = _compare(bf16, *shape)
    assert cos > 0.9999, cos


def test_amx_is_chosen_where_the_cpu_has_it(bf16):
    """The library's own dispatch: the AMX tiles on a CPU whose flags list amx_bf16 (Linux grants the permission),
    AVX-512 BF16 elsewhere; so the cases above ran the tiles wherever the CPU has them."""
    amx = {"amx_tile", "amx_bf16"} <= _cpu_flags()
    want = kernels.AMX_LEVEL if amx else kernels.BF16_LEVEL
    assert kernels.attention_level(64) == want
    assert kernels.attention_level(72) == want
    if "avx512_vnni" in _cpu_flags():  # the 4-bit product's prompts: on the tiles, else on vdpbf16ps
        assert kernels.matmul_q4_level() == (kernels.AMX_LEVEL if amx else kernels.BF16_PROMPT_LEVEL)


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


def _without_kernels(monkeypatch, bundle, variant: str):
    """The variant loaded with EDGEVLM_KERNELS=off (ONNX Runtime's kernels only); the environment restored after."""
    monkeypatch.setenv("EDGEVLM_KERNELS", "off")
    kernels.library.cache_clear()
    try:
        plain = edgevlm.load(bundle, variant=variant)
    finally:
        monkeypatch.undo()
        kernels.library.cache_clear()
    assert plain.kernels == {}
    return plain


def test_quantized_vision_runs_on_the_kernel_and_keeps_its_features(bf16, tiny256, monkeypatch):
    ours = edgevlm.load(tiny256[1], variant="int8")
    assert ours.kernels == {"vision_encoder": "attention:bf16"}
    plain = _without_kernels(monkeypatch, tiny256[1], "int8")
    for seed in range(3):
        image = random_image(200, 260, seed=60 + seed)
        a = plain.encode(plain.prepare(plain.user_message(image, "Describe."), split=True)).features
        b = ours.encode(ours.prepare(ours.user_message(image, "Describe."), split=True)).features
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cos.min() > 0.999, cos.min()


def test_fp32_runs_its_products_on_the_kernel_and_keeps_its_tokens(library, tiny256, monkeypatch):
    """fp32's kernel graphs change where W is read from, not the arithmetic: the same greedy tokens as ONNX
    Runtime's MatMul (and, through the export's own verification, PyTorch's) on several images, and its attention
    stays ONNX Runtime's fp32."""
    if kernels.matmul_f32_level() < kernels.AVX512_F32_LEVEL:  # AVX2, ARM: the portable build, when asked for
        assert edgevlm.load(tiny256[1], variant="fp32").kernels == {}
        monkeypatch.setenv("EDGEVLM_KERNELS", "all")
    ours = edgevlm.load(tiny256[1], variant="fp32")
    assert ours.kernels == {"vision_encoder": "matmul_f32", "decoder_model_merged": "matmul_f32"}
    plain = _without_kernels(monkeypatch, tiny256[1], "fp32")
    for seed in range(3):
        image = random_image(200, 260, seed=70 + seed)
        a = plain.ask(image, "Describe.", max_new_tokens=12)
        b = ours.ask(image, "Describe.", max_new_tokens=12)
        assert a.new_tokens == b.new_tokens and a.text == b.text


def test_the_export_writes_kernel_graphs_that_store_no_weights(tiny256):
    """Beside the quantized parts (the 8-bit decoder excepted) and the fp32 ones: a small graph whose weights are the
    standard file's own bytes (external data into it), listed and checksummed in the manifest; the standard file
    is standard ONNX."""
    import json

    import onnx

    bundle = tiny256[1]
    manifest = json.loads((bundle / "edgevlm.json").read_text())
    graphs = manifest["kernel_graphs"]
    vision = {parts["vision_encoder"] for parts in manifest["variants"].values()}
    decoders = {parts["decoder_model_merged"] for parts in manifest["variants"].values()}
    fp32 = set(manifest["variants"]["fp32"].values())
    assert set(graphs) == {rel for rel in vision | decoders if "int8" in rel or "q4" in rel or rel in fp32} - {
        "onnx/decoder_model_merged_int8.onnx"  # 8-bit: ONNX Runtime's kernels
    }, graphs
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
        ops = ["MatMulF32"] if standard in fp32 else ["MatMulQ4"] if "decoder" in standard else []
        for op in ops or ["MultiHeadAttention", "FastGelu"]:
            domains = {n.domain for g in kernels.graphs(model.graph) for n in g.node if n.op_type == op}
            assert kernels.DOMAIN in domains, op
        if not ops:  # every FastGelu of a quantized vision encoder is the library's
            assert domains == {kernels.DOMAIN}
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
    assert edgevlm.load(copy, variant="fp16").kernels == {}  # a variant that does not open it still loads


def test_a_kernel_graph_beside_another_standard_file_is_not_used(library, tiny256, tmp_path, monkeypatch):
    """A kernel graph reads its weights at offsets inside its standard file: after that file changes (and the
    manifest's checksums are redone, as by hand), it would read other bytes, so the standard file opens alone."""
    import shutil

    from hostile_tools import refresh_manifest

    copy = shutil.copytree(tiny256[1], tmp_path / "b")
    decoder = copy / "onnx" / "decoder_model_merged.onnx"
    data = bytearray(decoder.read_bytes())
    data[len(data) // 2] ^= 1  # inside a weight: still a valid graph
    decoder.write_bytes(bytes(data))
    refresh_manifest(copy)
    monkeypatch.setenv("EDGEVLM_KERNELS", "all")  # (MatMulF32 on any CPU)
    assert edgevlm.load(copy, variant="fp32").kernels == {"vision_encoder": "matmul_f32"}


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


# ---------------------------------------------------------------------------------------------- the 4-bit product
def _q4_models(k: int, n: int, silu: bool, rng) -> tuple[bytes, bytes, np.ndarray]:
    """ONNX Runtime's three nodes (export/zero_point_correction.py's rewrite of a float-zero-point MatMulNBits, plus
    the MLP's Split/Sigmoid/Mul/Mul with `silu`), the one MatMulQ4 node, on the same random weights, and those
    weights as one fp64 (N, K) matrix: s * (q - 8) + correction, what both compute."""
    from onnx import numpy_helper

    nb = k // 32
    codes = rng.integers(0, 256, (n, nb, 16), dtype=np.uint8)
    scales = (rng.random((n, nb)) * 0.02 + 0.001).astype(np.float32)
    correction = (rng.normal(size=(nb, n)) * 0.02).astype(np.float32)
    q = np.stack([codes & 15, codes >> 4], -1).reshape(n, nb, 32).astype(np.float64)
    exact = (scales[..., None].astype(np.float64) * (q - 8) + correction.T[..., None]).reshape(n, k)
    weights = [
        numpy_helper.from_array(codes, "codes"),
        numpy_helper.from_array(scales, "scales"),
        numpy_helper.from_array(correction, "correction"),
    ]
    consts = [
        numpy_helper.from_array(np.array([0, 0, nb, 32], np.int64), "blocks"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
        numpy_helper.from_array(np.array([n // 2, n // 2], np.int64), "halves"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    out = "p" if silu else "y"
    nodes = [
        helper.make_node(
            "MatMulNBits",
            ["x", "codes", "scales"],
            ["a"],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=32,
            accuracy_level=4,
        ),
        helper.make_node("Reshape", ["x", "blocks"], ["xb"]),
        helper.make_node("ReduceSum", ["xb", "last"], ["sums"], keepdims=0),
        helper.make_node("MatMul", ["sums", "correction"], ["term"]),
        helper.make_node("Add", ["a", "term"], [out]),
    ]
    if silu:
        nodes += [
            helper.make_node("Split", ["p", "halves"], ["g", "u"], axis=-1),
            helper.make_node("Sigmoid", ["g"], ["sg"]),
            helper.make_node("Mul", ["g", "sg"], ["si"]),
            helper.make_node("Mul", ["si", "u"], ["y"]),
        ]
    opsets = [
        helper.make_opsetid("", 17),
        helper.make_opsetid("com.microsoft", 1),
        helper.make_opsetid(kernels.DOMAIN, 1),
    ]
    standard = helper.make_model(helper.make_graph(nodes, "q4", [x], [y], weights + consts), opset_imports=opsets)
    ours = helper.make_model(
        helper.make_graph(
            [
                helper.make_node(
                    "MatMulQ4",
                    ["x", "codes", "scales", "correction"],
                    ["y"],
                    domain=kernels.DOMAIN,
                    K=k,
                    N=n,
                    silu_mul=int(silu),
                )
            ],
            "q4",
            [x],
            [y],
            weights,
        ),
        opset_imports=opsets,
    )
    return standard.SerializeToString(), ours.SerializeToString(), exact


@pytest.mark.parametrize("level", ["portable", "avx2", "vnni", "avx512", "best"])
@pytest.mark.parametrize("k,n,silu", [(576, 960, False), (576, 3072, True), (1536, 576, False), (96, 40, True)])
def test_matmul_q4_is_onnx_runtimes_product(library, monkeypatch, level, k, n, silu):
    """Against the exact product (fp64 weights s * (q - 8) + correction), within int8 activations' own error, for one
    row (decode), a few, and a prompt's worth, with outlier channels (as SmolLM2's activations have); on x86 also
    ONNX Runtime's three nodes to fp32 rounding: MLAS at accuracy level 4 quantizes x as ours does (per block of 32,
    same scale, round half to even), so the integers are the same. (ARM's MLAS quantizes x otherwise: measured 4 %
    of scale off with the outliers, so there only the exact product is the reference.) K = 96 has an odd number of
    blocks (the VNNI kernel takes pairs of them; portable runs). Where the CPU has AVX-512 BF16, prompts of 16 rows
    or more run in bf16 (on AMX tiles, or vdpbf16ps under EDGEVLM_KERNELS=avx512 and where there is no AMX): the
    exact product is their reference, ONNX Runtime's integers are not (EDGEVLM_KERNELS=vnni keeps them on VNNI).
    The tests' corrections include values below fp16's normal range, which the decode table must take too."""
    if level != "best":
        monkeypatch.setenv("EDGEVLM_KERNELS", level)
    x86 = platform.machine() in ("x86_64", "AMD64")
    bf16 = level in ("best", "avx512") and kernels.matmul_q4_level() in (kernels.AMX_LEVEL, kernels.BF16_PROMPT_LEVEL)
    rng = np.random.default_rng(k + n)
    standard, ours, weights = _q4_models(k, n, silu, rng)
    for m in (1, 3, 37, 64):
        x = rng.normal(size=(1, m, k)).astype(np.float32)
        x[..., rng.integers(0, k, 3)] *= 40
        got = _run(ours, {"x": x}, library)
        exact = x.astype(np.float64) @ weights.T
        if silu:
            gate, up = np.split(exact, 2, axis=-1)
            exact = gate / (1 + np.exp(-gate)) * up
        assert got.shape == exact.shape == (1, m, n // 2 if silu else n)
        scale = np.abs(exact).max()
        assert np.abs(got - exact).max() <= 3e-2 * scale, (m, np.abs(got - exact).max(), scale)
        if bf16 and m >= 16:  # bf16 weights and x: measured 2.9e-3-5.9e-3 of scale, int8 x 1.3e-2-2.5e-2
            assert np.abs(got - exact).max() <= 1e-2 * scale, (m, np.abs(got - exact).max(), scale)
        elif x86:
            # AVX-512 VNNI and AVX2 read the scales and correction rounded to fp16 (q4_decode_table; measured
            # 2.5e-4-4.5e-4 of scale from ONNX Runtime's, 1/40 of what the int8 activations cost both).
            table = kernels.matmul_q4_level() > kernels.PORTABLE_LEVEL
            ref = _run(standard, {"x": x})
            bound = 1e-3 if table else 2e-5
            assert np.abs(ref - got).max() <= bound * np.abs(ref).max(), (m, np.abs(ref - got).max())


@pytest.mark.parametrize("level", ["avx2", "vnni", "best"])
def test_matmul_q4_gives_each_row_what_it_gives_it_alone(library, monkeypatch, level):
    """A batch decoded together (engine/batch.py: up to 15 rows stay off the bf16 prompt path) must give each row
    exactly its single-row result, or batched captions would differ from one-by-one ones: the same scales,
    correction and order of sums for 1, 3 and 4+ rows (bitwise)."""
    if level != "best":
        monkeypatch.setenv("EDGEVLM_KERNELS", level)
    rng = np.random.default_rng(7)
    for k, n, silu in [(576, 960, False), (576, 3072, True), (1536, 576, False)]:
        _, ours, _ = _q4_models(k, n, silu, rng)
        x = rng.normal(size=(1, 13, k)).astype(np.float32)
        alone = np.concatenate([_run(ours, {"x": x[:, i : i + 1]}, library) for i in range(13)], axis=1)
        for rows in (2, 3, 4, 5, 13):
            together = _run(ours, {"x": x[:, :rows]}, library)
            assert np.array_equal(together, alone[:, :rows]), (k, n, rows)


def test_matmul_q4_says_what_is_wrong(library):
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMulQ4", ["x", "c", "s", "z"], ["y"], domain=kernels.DOMAIN, K=40, N=8)],
            "q4",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40])]
            + [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in "sz"]
            + [helper.make_tensor_value_info("c", TensorProto.UINT8, None)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(kernels.DOMAIN, 1)],
    ).SerializeToString()
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    with pytest.raises(Exception, match="K must be a positive multiple of 32"):
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


@pytest.fixture
def vector_q4(library):
    if kernels.matmul_q4_level() <= kernels.PORTABLE_LEVEL:
        pytest.skip("this CPU has neither AVX-512 VNNI nor AVX2: only the portable 4-bit product runs here")
    return library


@pytest.mark.parametrize("cap", ["all", "avx2"])
def test_the_4bit_decoder_runs_on_the_kernel_and_keeps_its_answers(vector_q4, tiny256, monkeypatch, cap):
    """With EDGEVLM_KERNELS=all, mixed's decoder opens its kernel graph (one node per product, the MLP's activation
    inside) and gives ONNX Runtime's greedy tokens; by default only where its prompts run in bf16 (AMX or AVX-512
    BF16: on VNNI alone the prefill is slower) or the CPU has AVX2 and no AVX-512 (EDGEVLM_KERNELS=avx2 imitates
    it), and never for int8 decoders (fp32's runs MatMulF32)."""
    import json

    import onnx

    level = kernels.matmul_q4_level()
    avx512 = kernels.matmul_f32_level() == kernels.AVX512_F32_LEVEL
    default = level in (kernels.AMX_LEVEL, kernels.BF16_PROMPT_LEVEL) or (level == kernels.AVX2_Q4_LEVEL and not avx512)
    assert ("decoder_model_merged" in edgevlm.load(tiny256[1], variant="mixed").kernels) == default
    if cap == "avx2" and "avx2" not in _cpu_flags():
        pytest.skip("this CPU has no AVX2")
    monkeypatch.setenv("EDGEVLM_KERNELS", cap)
    avx2 = kernels.matmul_q4_level() == kernels.AVX2_Q4_LEVEL
    assert avx2 == (cap == "avx2" or "avx512_vnni" not in _cpu_flags())  # (the library's own dispatch)
    if cap == "avx2":  # as on a CPU without AVX-512: the default there
        assert "decoder_model_merged" in edgevlm.load(tiny256[1], variant="mixed").kernels
    ours = edgevlm.load(tiny256[1], variant="mixed")
    assert ours.kernels.get("decoder_model_merged") == ("matmul_q4:avx2" if avx2 else "matmul_q4:vnni"), ours.kernels
    assert "decoder_model_merged" not in edgevlm.load(tiny256[1], variant="int8").kernels
    if cap == "all":  # (MatMulF32's portable build on any CPU)
        assert edgevlm.load(tiny256[1], variant="fp32").kernels.get("decoder_model_merged") == "matmul_f32"
    manifest = json.loads((tiny256[1] / "edgevlm.json").read_text())
    kernel_graph = tiny256[1] / manifest["kernel_graphs"][manifest["variants"]["mixed"]["decoder_model_merged"]]
    graph = onnx.load(str(kernel_graph), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    layers = ours.spec.num_layers
    assert ops.count("MatMulQ4") == 4 * layers and "Sigmoid" not in ops and "MatMulNBits" not in ops[:-1]
    assert not [n.name for n in graph.node if "block" in n.name]  # the corrections' block sums went with them
    assert sum(1 for n in graph.node for a in n.attribute if a.name == "silu_mul" and a.i) == layers
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]  # on the library's kernel too
    assert len(attention) == layers and {n.domain for n in attention} == {kernels.DOMAIN}
    plain = _without_kernels(monkeypatch, tiny256[1], "mixed")
    for prompt in ("Describe a harbour at dawn.", "List three colours.", "Why is the sky blue?"):
        a, b = (v.ask(None, prompt, max_new_tokens=12) for v in (plain, ours))
        assert a.token_ids == b.token_ids, prompt


def _gqa_model(domain: str, heads: int, kv_heads: int, dim: int, positions: int) -> bytes:
    f, i32 = TensorProto.FLOAT, TensorProto.INT32
    inputs = [
        helper.make_tensor_value_info("qkv", f, ["b", "s", (heads + 2 * kv_heads) * dim]),
        helper.make_tensor_value_info("past_key", f, ["b", kv_heads, "p", dim]),
        helper.make_tensor_value_info("past_value", f, ["b", kv_heads, "p", dim]),
        helper.make_tensor_value_info("seqlens_k", i32, ["b"]),
        helper.make_tensor_value_info("total", i32, []),
        helper.make_tensor_value_info("cos", f, [positions, dim // 2]),
        helper.make_tensor_value_info("sin", f, [positions, dim // 2]),
    ]
    outputs = [helper.make_tensor_value_info("out", f, None)]
    outputs += [helper.make_tensor_value_info(n, f, None) for n in ("present_key", "present_value")]
    node = helper.make_node(
        "GroupQueryAttention",
        ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total", "cos", "sin"],
        ["out", "present_key", "present_value"],
        domain=domain,
        num_heads=heads,
        kv_num_heads=kv_heads,
        do_rotary=1,
        scale=1 / np.sqrt(dim),
    )
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9).SerializeToString()


def _rotary_tables(positions: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    angles = np.arange(positions)[:, None] / 10000 ** (np.arange(0, dim, 2) / dim)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _gqa_session(domain: str, heads: int, kv_heads: int, dim: int, positions: int, library):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if domain == kernels.DOMAIN:
        so.register_custom_ops_library(str(library))
    return ort.InferenceSession(
        _gqa_model(domain, heads, kv_heads, dim, positions), so, providers=["CPUExecutionProvider"]
    )


def _gqa_shared(session, steps: list[np.ndarray], kv_heads: int, dim: int, capacity: int, tables) -> list:
    """Each step's output with past and present bound to one buffer per kind, as engine/kv_cache.py binds them."""
    batch = steps[0].shape[0]
    caches = [np.zeros((batch, kv_heads, capacity, dim), np.float32) for _ in range(2)]
    values = [ort.OrtValue.ortvalue_from_numpy(c) for c in caches]
    binding = session.io_binding()
    for kind, value in zip(("key", "value"), values):
        binding.bind_ortvalue_input(f"past_{kind}", value)
        binding.bind_ortvalue_output(f"present_{kind}", value)
    done, outs = 0, []
    for qkv in steps:
        total = done + qkv.shape[1]
        feeds = {
            "qkv": qkv,
            "seqlens_k": np.full(batch, total - 1, np.int32),
            "total": np.array(total, np.int32),
            "cos": tables[0],
            "sin": tables[1],
        }
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("out")  # (its shape changes from the prompt to the tokens after it)
        session.run_with_iobinding(binding)
        outs.append(binding.get_outputs()[0].numpy().copy())
        done = total
    return outs + [values[0].numpy()[:, :, :done].copy(), values[1].numpy()[:, :, :done].copy()]


def _gqa_fed_back(session, steps: list[np.ndarray], kv_heads: int, dim: int, tables) -> list:
    """The same with each step's present fed back as the next past (separate buffers)."""
    batch = steps[0].shape[0]
    past = [np.zeros((batch, kv_heads, 0, dim), np.float32)] * 2
    done, outs = 0, []
    for qkv in steps:
        total = done + qkv.shape[1]
        out, *past = session.run(
            None,
            {
                "qkv": qkv,
                "past_key": past[0],
                "past_value": past[1],
                "seqlens_k": np.full(batch, total - 1, np.int32),
                "total": np.array(total, np.int32),
                "cos": tables[0],
                "sin": tables[1],
            },
        )
        outs.append(out)
        done = total
    return outs + past


GQA_SHAPES = [  # (batch, heads, kv_heads, head_dim, prompt tokens, new tokens after it)
    (1, 9, 3, 64, 88, 6),  # SmolLM2-135M (the 256M's decoder), W1's prompt
    (2, 9, 3, 64, 300, 3),  # two rows decoded together (caption_batch); a prompt longer than the inline bound
    (1, 32, 32, 64, 20, 4),  # SmolLM2-1.7B's heads (the 2.2B's decoder): no sharing of KV heads
    (1, 4, 2, 16, 7, 5),  # a head_dim below one AVX-512 vector: the scalar rows
    (1, 3, 1, 48, 33, 2),  # 3 vectors of 16 per head: the scalar rows too
]


@pytest.mark.parametrize("cap", ["best", "avx2", "portable"])
@pytest.mark.parametrize("shape", GQA_SHAPES, ids=[f"b{s[0]}h{s[1]}kv{s[2]}d{s[3]}p{s[4]}" for s in GQA_SHAPES])
def test_gqa_matches_onnxruntime(library, monkeypatch, cap, shape):
    """The decoder's attention against com.microsoft GroupQueryAttention on the same inputs: a prompt, then one
    token at a time, with past and present shared (the engine's binding) and fed back (separate buffers): outputs
    and caches within fp32 rounding, on the AVX-512 build where the CPU has it, the AVX2 one (EDGEVLM_KERNELS=avx2,
    on any CPU with AVX2) and the portable one."""
    if cap != "best":
        monkeypatch.setenv("EDGEVLM_KERNELS", cap)
    batch, heads, kv_heads, dim, prompt, new = shape
    rng = np.random.default_rng(prompt + heads)
    width = (heads + 2 * kv_heads) * dim
    steps = [rng.normal(size=(batch, prompt, width)).astype(np.float32)]
    steps += [rng.normal(size=(batch, 1, width)).astype(np.float32) for _ in range(new)]
    capacity = prompt + new + 5
    tables = _rotary_tables(capacity + 8, dim)
    sessions = [_gqa_session(d, heads, kv_heads, dim, capacity + 8, library) for d in ("com.microsoft", kernels.DOMAIN)]
    for run in (
        lambda s: _gqa_shared(s, steps, kv_heads, dim, capacity, tables),
        lambda s: _gqa_fed_back(s, steps, kv_heads, dim, tables),
    ):
        ref, ours = (run(s) for s in sessions)
        for a, b in zip(ref, ours):
            assert a.shape == b.shape
            assert np.abs(a - b).max() <= 2e-5 * max(1.0, np.abs(a).max()), np.abs(a - b).max()


def test_gqa_says_what_is_wrong(library):
    session = _gqa_session(kernels.DOMAIN, 4, 2, 16, 8, library)
    cos, sin = _rotary_tables(8, 16)
    feeds = {
        "qkv": np.zeros((1, 3, 8 * 16), np.float32),
        "past_key": np.zeros((1, 2, 0, 16), np.float32),
        "past_value": np.zeros((1, 2, 0, 16), np.float32),
        "seqlens_k": np.array([20], np.int32),
        "total": np.array(21, np.int32),
        "cos": cos,
        "sin": sin,
    }
    with pytest.raises(Exception, match="cover every position"):
        session.run(None, feeds)


# ---------------------------------------------------------------------------------------------- the fp32 product
def _f32_models(k: int, n: int, rng, x_shape: list | None = None) -> tuple[bytes, bytes, np.ndarray]:
    """ONNX MatMul and ai.edgevlm's MatMulF32 on the same random (K, N) weights."""
    from onnx import numpy_helper

    w = (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape or [1, "m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)

    def model(op: str, domain: str) -> bytes:
        node = helper.make_node(op, ["x", "w"], ["y"], domain=domain)
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid(kernels.DOMAIN, 1)]
        graph = helper.make_graph([node], "f32", [x], [y], [numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=opsets).SerializeToString()

    return model("MatMul", ""), model("MatMulF32", kernels.DOMAIN), w


# (K, N): SmolLM2-135M's products, SigLIP-B's, odd sizes (K not a multiple of 4 or of the 256-row block, N not of
# the 16-column vector or the tile), and W over 8 MB both wide and tall (decode's two ways of splitting the work)
F32_SHAPES = [(576, 960), (1536, 576), (768, 3072), (300, 37), (7, 5), (1027, 129), (2304, 1024)]


@pytest.mark.parametrize("level", ["portable", "best"])
@pytest.mark.parametrize("k,n", F32_SHAPES)
def test_matmul_f32_is_onnx_runtimes_product(library, monkeypatch, level, k, n):
    """Within fp32 rounding of ONNX Runtime's MatMul and of the exact product, for one row (decode, W streamed
    unpacked), a few, and prompts (W packed per block), with outlier channels."""
    if level != "best":
        monkeypatch.setenv("EDGEVLM_KERNELS", level)
    rng = np.random.default_rng(k * n)
    standard, ours, w = _f32_models(k, n, rng)
    for m in (1, 3, 4, 5, 37, 200):
        x = rng.normal(size=(1, m, k)).astype(np.float32)
        x[..., rng.integers(0, k, 3)] *= 40
        got = _run(ours, {"x": x}, library)
        exact = x.astype(np.float64) @ w.astype(np.float64)
        ref = _run(standard, {"x": x})
        assert got.shape == ref.shape == (1, m, n)
        scale = np.abs(x).max() * np.abs(w).max() * np.sqrt(k)
        assert np.abs(got - exact).max() <= 2e-6 * scale, (m, np.abs(got - exact).max(), scale)
        assert np.abs(got - ref).max() <= 4e-6 * scale, (m, np.abs(got - ref).max(), scale)


@pytest.mark.parametrize("level", ["portable", "best"])
def test_matmul_f32_gives_each_row_what_it_gives_it_alone(library, monkeypatch, level):
    """Decode (up to 4 rows, W streamed) and prompts (W packed) sum in the same order: each row of any batch is
    bitwise its result alone, so a batched caption or a follow-up prompt cannot drift from a single one."""
    if level != "best":
        monkeypatch.setenv("EDGEVLM_KERNELS", level)
    rng = np.random.default_rng(11)
    for k, n in [(576, 960), (1027, 129), (2048, 40), (2304, 1024), (768, 3072)]:
        _, ours, _ = _f32_models(k, n, rng)
        x = rng.normal(size=(1, 21, k)).astype(np.float32)
        alone = np.concatenate([_run(ours, {"x": x[:, i : i + 1]}, library) for i in range(21)], axis=1)
        for rows in (2, 4, 5, 8, 9, 21):
            together = _run(ours, {"x": x[:, :rows]}, library)
            assert np.array_equal(together, alone[:, :rows]), (k, n, rows)


def test_matmul_f32_says_what_is_wrong(library):
    _, ours, _ = _f32_models(16, 8, np.random.default_rng(0), x_shape=[1, "m", "k"])
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    session = ort.InferenceSession(ours, so, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="x's last dimension must be K"):
        session.run(None, {"x": np.zeros((1, 2, 15), np.float32)})


def _fast_gelu_model(domain: str, width: int | str, bias: np.ndarray | None) -> bytes:
    from onnx import numpy_helper

    inputs = ["x", "b"] if bias is not None else ["x"]
    weights = [numpy_helper.from_array(bias, "b")] if bias is not None else []
    graph = helper.make_graph(
        [helper.make_node("FastGelu", inputs, ["y"], domain=domain)],
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    return model.SerializeToString()


@pytest.mark.parametrize("level", ["best", "portable"])
@pytest.mark.parametrize("width,with_bias", [(3072, True), (45, True), (3, False), (16, False)])
def test_fast_gelu_is_onnx_runtimes(library, monkeypatch, level, width, with_bias):
    """The vision encoder's FastGelu on the library (fast_gelu.hpp) against com.microsoft's and the formula in
    fp64: within 2e-6 of the exact value (ONNX Runtime's own is within 1e-6 absolute), odd widths and no bias
    included."""
    if level != "best":
        monkeypatch.setenv("EDGEVLM_KERNELS", level)
    rng = np.random.default_rng(width)
    bias = rng.normal(size=width).astype(np.float32) if with_bias else None
    x = (rng.normal(size=(2, 37, width)) * 3).astype(np.float32)
    x[0, 0, :3] = [0.0, -40.0, 40.0]  # zero and both tails
    ours = _run(_fast_gelu_model(kernels.DOMAIN, width, bias), {"x": x}, library)
    theirs = _run(_fast_gelu_model("com.microsoft", width, bias), {"x": x}, library)
    v = x.astype(np.float64) + (bias if bias is not None else 0)
    exact = 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))
    assert np.abs(ours - exact).max() <= 2e-6 * max(1.0, np.abs(exact).max() / 10)
    assert np.abs(ours - theirs).max() <= 4e-6 * max(1.0, np.abs(exact).max() / 10)


def test_fast_gelu_says_what_is_wrong(library):
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    model = _fast_gelu_model(kernels.DOMAIN, "width", np.zeros(8, np.float32))
    session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="bias must hold one value per element"):
        session.run(None, {"x": np.zeros((1, 2, 5), np.float32)})
