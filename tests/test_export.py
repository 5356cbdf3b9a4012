"""The exporter: verification report, bundle manifest, quantized files, and clean failure on bad sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require

import edgevlm
from edgevlm.engine.bundle import MANIFEST, sha256_file
from edgevlm.errors import ModelError


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgevlm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


def test_fp32_report_says_tokens_equal(tiny_model):
    _, bundle = tiny_model
    manifest = json.loads((bundle / MANIFEST).read_text())
    fp32 = manifest["verification"]["fp32"]
    assert fp32["all_tokens_equal"] is True
    assert {s["sample"] for s in fp32["samples"]} == {"image_split", "image_no_split", "text_only"}
    assert fp32["max_abs_logit_diff"] < 1e-4
    for s in fp32["samples"]:
        assert s["reference_tokens"] == s["onnx_tokens"] and len(s["reference_tokens"]) > 0


def test_manifest_lists_every_file_with_checksum(tiny256):
    _, bundle = tiny256
    manifest = json.loads((bundle / MANIFEST).read_text())
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert set(manifest["files"]) == on_disk
    for rel, entry in manifest["files"].items():
        assert entry["size"] == (bundle / rel).stat().st_size
        assert entry["sha256"] == sha256_file(bundle / rel)
    assert {"tokenizer.json", "config.json", "preprocessor_config.json", "generation_config.json"} <= on_disk
    assert not [p for p in on_disk if p.endswith((".py", ".so", ".pkl", ".bin"))], "bundles hold no code"
    assert manifest["format"] == "edgevlm-bundle" and manifest["format_version"] == 1
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest["tools"])


def test_quantized_files_really_quantized(tiny256):
    _, bundle = tiny256
    manifest = json.loads((bundle / MANIFEST).read_text())
    q = manifest["quantization"]
    assert q["decoder_model_merged:int8"]["ops"].get("MatMulNBits", 0) > 0
    assert q["decoder_model_merged:int8"]["ops"]["MatMul"] == 1  # the lm_head stays fp32 (int8 activations cost it)
    assert q["decoder_model_merged:q4"]["ops"].get("MatMulNBits", 0) > 0
    # every weight MatMul of the decoder is 4-bit (8-bit lm_head); the MatMuls left are the zero-point terms
    assert q["decoder_model_merged:q4"]["ops"]["MatMulNBits"] == q["decoder_model_merged:fp32"]["ops"]["MatMul"]
    assert q["decoder_model_merged:q4"]["ops"]["MatMul"] == q["decoder_model_merged:q4"]["ops"]["MatMulNBits"] - 1
    assert q["vision_encoder:int8"]["ops"].get("MatMulInteger", 0) > 0
    assert q["embed_tokens:q4"]["ops"].get("GatherBlockQuantized", 0) == 1
    sizes = {
        v: sum(manifest["files"][rel]["size"] for rel in parts.values()) for v, parts in manifest["variants"].items()
    }
    # (int8 keeps an fp32 lm_head: on these tiny sizes the head dominates, so int8 > fp16 here, not at 256M)
    assert sizes["q4"] < sizes["int8"] < sizes["fp32"] and sizes["q4"] < sizes["fp16"] < sizes["fp32"]
    # fp16 stays close to fp32; every variant was verified and reported
    assert manifest["verification"]["fp16"]["max_abs_logit_diff"] < 0.05
    assert set(manifest["verification"]) == {"fp32", "fp16", "int8", "q4", "mixed"}


@pytest.mark.parametrize("per_side", [27, 32])
def test_vision_position_ids_equal_reference_bucketize(per_side):
    """The export-safe integer formula equals the reference's float bucketize for every real-patch rectangle."""
    from edgevlm_export.wrappers import VisionEncoder

    boundaries = torch.arange(1 / per_side, 1.0, 1 / per_side)
    enc = VisionEncoder.__new__(VisionEncoder)
    enc.per_side = per_side
    for rows in range(1, per_side + 1):
        for cols in (1, 2, 5, per_side - 1, per_side):
            mask = torch.zeros(1, per_side, per_side, dtype=torch.bool)
            mask[0, :rows, :cols] = True
            h = torch.arange(rows, dtype=torch.float32) / rows * (1 - 1e-6)
            w = torch.arange(cols, dtype=torch.float32) / cols * (1 - 1e-6)
            bh = torch.bucketize(h, boundaries, right=True)
            bw = torch.bucketize(w, boundaries, right=True)
            ref = torch.zeros(per_side * per_side, dtype=torch.int64)
            ref[mask.view(-1)] = (bh[:, None] * per_side + bw).flatten()
            assert torch.equal(enc.position_ids(mask)[0], ref), (rows, cols)


def test_official_onnx_layout_without_manifest_loads_and_runs(tiny256, tmp_path):
    """HF's layout (config files + onnx/<part><suffix>.onnx, no manifest) is found by suffix and runs."""
    _, bundle = tiny256
    plain = tmp_path / "hf_layout"
    shutil.copytree(bundle, plain)
    (plain / MANIFEST).unlink()
    vlm = edgevlm.load(plain)
    assert {"fp32", "fp16", "int8", "q4"} <= set(vlm.bundle.variants)
    with_manifest = edgevlm.load(bundle, variant="fp32")
    a = vlm.ask(None, "Hi", max_new_tokens=5)
    b = with_manifest.ask(None, "Hi", max_new_tokens=5)
    assert a.token_ids == b.token_ids
    q4 = edgevlm.load(plain, variant="q4").ask(None, "Hi", max_new_tokens=3)
    assert q4.new_tokens == 3


def test_mixed_precision_per_part(tiny256):
    _, bundle = tiny256
    vlm = edgevlm.load(bundle, variant={"vision": "int8", "embed": "fp32", "decoder": "q4"})
    assert vlm.files["decoder_model_merged"].name == "decoder_model_merged_q4.onnx"
    assert vlm.files["vision_encoder"].name == "vision_encoder_int8.onnx"
    assert vlm.ask(None, "Hi", max_new_tokens=2).new_tokens == 2


@pytest.mark.parametrize("damage", ["missing", "altered", "truncated"])
def test_damaged_bundle_refused(tiny256, tmp_path, damage):
    _, bundle = tiny256
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    target = copy / "onnx" / "decoder_model_merged_q4.onnx"
    if damage == "missing":
        target.unlink()
    elif damage == "altered":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(ModelError, match="missing|checksum"):
        edgevlm.load(copy, variant="q4")
    edgevlm.load(copy, variant="fp32")  # the other files are intact and still load
    r = cli("caption", Path(__file__), "-m", copy, "--variant", "q4")
    assert r.returncode == 3 and "Traceback" not in r.stderr and "error:" in r.stderr


def test_unknown_variant_and_missing_model_clear_errors(tiny256, tmp_path):
    _, bundle = tiny256
    with pytest.raises(ModelError, match="variant 'int3'"):
        edgevlm.load(bundle, variant="int3")
    r = cli("info", tmp_path / "nothing-here")
    assert r.returncode == 3 and "does not exist" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------- bad sources


def _export_cli(source, out: Path):
    return cli("export", source, "-o", out, "--variants", "fp32")


def _assert_clean_failure(result, out: Path, needle: str):
    assert result.returncode == 4, result.stderr
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]
    assert leftovers == []


def test_export_missing_folder(tmp_path):
    out = tmp_path / "out"
    _assert_clean_failure(_export_cli(tmp_path / "no_such_ckpt", out), out, "does not exist")


def test_export_not_smolvlm(tmp_path):
    src = tmp_path / "llama"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    out = tmp_path / "out"
    _assert_clean_failure(_export_cli(src, out), out, "not SmolVLM")


def test_export_corrupt_weights(tiny256, tmp_path):
    ckpt, _ = tiny256
    src = tmp_path / "corrupt"
    shutil.copytree(ckpt, src)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    out = tmp_path / "out"
    _assert_clean_failure(_export_cli(src, out), out, "corrupt or incomplete")


def test_export_disk_full(tiny256, tmp_path):
    """A real full filesystem: a 20 MB tmpfs cannot hold the fp32 parts (about 53 MB)."""
    ckpt, _ = tiny256
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True)
    require(mounted.returncode == 0, f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        out = mnt / "bundle"
        result = _export_cli(ckpt, out)
        _assert_clean_failure(result, out, "full")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_export_refuses_non_empty_output(tiny256, tmp_path):
    ckpt, _ = tiny256
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _export_cli(ckpt, out)
    assert result.returncode == 4 and "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_checkpoint_tool_real_token_ids(tiny256):
    from tokenizers import Tokenizer

    ckpt, _ = tiny256
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    assert tok.token_to_id("<global-img>") == 49152
    assert tok.token_to_id("<row_1_col_1>") == 49153 and tok.token_to_id("<row_6_col_6>") == 49188
    assert tok.token_to_id("<fake_token_around_image>") == 49189
    assert tok.token_to_id("<image>") == 49190
    assert tok.token_to_id("<end_of_utterance>") == 49279
    assert tok.token_to_id("<|im_start|>") == 1 and tok.token_to_id("<|im_end|>") == 2
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["text_config"]["vocab_size"] == 49280 and cfg["image_token_id"] == 49190


def test_external_data_for_large_parts(tmp_path):
    """Parts over the threshold keep weights in <name>.onnx_data (protobuf caps a file at 2 GB)."""
    from edgevlm_export.onnx_export import externalize_if_large

    lin = torch.nn.Linear(256, 256)
    path = tmp_path / "lin.onnx"
    torch.onnx.export(lin, (torch.randn(1, 256),), str(path), dynamo=False, input_names=["x"])
    externalize_if_large(path, limit=1000)
    assert (tmp_path / "lin.onnx_data").stat().st_size >= 256 * 256 * 4
    import onnxruntime as ort

    x = np.ones((1, 256), np.float32)
    out = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, lin(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_fp16_of_external_weights_equals_fp16_in_memory(tmp_path):
    """Large graphs go to fp16 one tensor at a time, file to file; the result must be the in-memory conversion's."""
    import onnxruntime as ort
    from edgevlm_export.onnx_export import externalize_if_large
    from edgevlm_export.quantize import to_fp16

    lin = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
    inline, external = tmp_path / "inline.onnx", tmp_path / "ext" / "lin.onnx"
    external.parent.mkdir()
    torch.onnx.export(lin, (torch.randn(1, 256),), str(inline), dynamo=False, input_names=["x"])
    shutil.copy(inline, external)
    externalize_if_large(external, limit=1000)
    to_fp16(inline, tmp_path / "inline_fp16.onnx")
    to_fp16(external, tmp_path / "ext" / "lin_fp16.onnx")
    assert (tmp_path / "ext" / "lin_fp16.onnx_data").stat().st_size >= (256 * 128 + 128 * 64) * 2
    assert not (tmp_path / "inline_fp16.onnx_data").exists()
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    a = ort.InferenceSession(str(tmp_path / "inline_fp16.onnx")).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(tmp_path / "ext" / "lin_fp16.onnx")).run(None, {"x": x})[0]
    assert a.dtype == np.float32 and np.array_equal(a, b)


def test_traced_unfused_decoder_still_matches(tiny256, tmp_path):
    """The fallback exporter (traced, unfused, with position_ids) stays correct."""
    from edgevlm_export.onnx_export import export_decoder, load_reference

    ckpt, bundle = tiny256
    shutil.copytree(bundle, tmp_path / "b")
    model = load_reference(ckpt)
    export_decoder(model, tmp_path / "b" / "onnx")
    (tmp_path / "b" / MANIFEST).unlink()  # files changed: load by the official layout's suffixes
    traced = edgevlm.load(tmp_path / "b", variant="fp32")
    fused = edgevlm.load(bundle, variant="fp32")
    assert traced.decoder.uses_position_ids and not fused.decoder.uses_position_ids
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    a = traced.ask(image, "What is it?", max_new_tokens=8, split=False)
    b = fused.ask(image, "What is it?", max_new_tokens=8, split=False)
    assert a.token_ids == b.token_ids


def test_vision_encoder_fused_and_equal_to_the_trace(tiny_model, tmp_path):
    """Every layer's attention and GELU run as ONNX Runtime's fused kernels (MultiHeadAttention, FastGelu), each
    attention in an If whose branches run it without the mask (full tiles: the flash-attention kernel) or with it
    (padded tiles), and the fused encoder computes what the trace computes on both kinds of tile."""
    import onnx
    import onnxruntime as ort
    from edgevlm_export.onnx_export import export_vision, load_reference
    from edgevlm_export.vision_fusion import fuse_vision

    ckpt, bundle = tiny_model
    model = load_reference(ckpt)
    cfg = model.config.vision_config
    ops = json.loads((bundle / MANIFEST).read_text())["quantization"]["vision_encoder:fp32"]["ops"]
    assert ops["MultiHeadAttention"] == 2 * ops["If"] == 2 * ops["FastGelu"] == 2 * cfg.num_hidden_layers
    assert "Softmax" not in ops and "Tanh" not in ops
    trace = onnx.load(str(export_vision(model, tmp_path)))
    fused = onnx.ModelProto()
    fused.CopyFrom(trace)
    layers = cfg.num_hidden_layers
    assert fuse_vision(fused, cfg.num_attention_heads) == {
        "attention": layers,
        "attention_unfused": 0,
        "gelu": layers,
        "gelu_unfused": 0,
        "unmasked_branch": layers,
    }
    tile = cfg.image_size
    pixels = np.random.default_rng(0).standard_normal((1, 2, 3, tile, tile)).astype(np.float32)
    full = np.ones((1, 2, tile, tile), bool)
    padded = full.copy()
    padded[0, 1, tile // 2 :, :] = False
    padded[0, 1, :, 2 * tile // 3 :] = False
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (trace, fused)]
    for mask in (full, padded):
        feeds = {"pixel_values": pixels, "pixel_attention_mask": mask}
        a, b = (s.run(None, feeds)[0] for s in sessions)
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("level,tol", [(0, 1e-4), (4, 0.05)])
def test_float_zero_point_correction_equals_the_float_zero_point_product(tmp_path, level, tol):
    """HQQ's float zero points moved to the fast kernel plus a block-sum term: same product as the original
    (exact at accuracy_level 0; level 4 adds int8 activation rounding only)."""
    import onnx
    import onnxruntime as ort
    from edgevlm_export.zero_point_correction import correct_float_zero_points
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    rng = np.random.default_rng(0)
    k, n = 128, 96
    w = numpy_helper.from_array((rng.standard_normal((k, n)) * 0.05).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n])],
        [w],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    q = MatMulNBitsQuantizer(model, algo_config=HQQWeightOnlyQuantConfig(block_size=32, bits=4))
    q.process()
    hqq = q.model.model
    zp = [i for i in hqq.graph.initializer if i.name.endswith("zero_points")][0]
    assert zp.data_type == TensorProto.FLOAT  # the slow path we move away from
    fast = onnx.ModelProto()
    fast.CopyFrom(hqq)
    assert correct_float_zero_points(fast, accuracy_level=level) == 1
    assert not [i for i in fast.graph.initializer if i.name.endswith("zero_points")]
    x = (rng.standard_normal((1, 5, k)) * np.array([1.0] * (k - 1) + [30.0])).astype(np.float32)  # one outlier

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    ref, got = run(hqq), run(fast)
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
