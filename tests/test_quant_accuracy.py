"""Quantization accuracy on a trained decoder (real SmolLM2-135M-Instruct weights in the 256M architecture).

Teacher-forced top-1 agreement with fp32 over real text, for the int8 and q4 recipes the exporter ships. Only the
text parts are exported here (the vision tower is random, so it says nothing about accuracy); the full-bundle
measurement is `python -m tools.accuracy` (docs/benchmarks.md).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgevlm


@pytest.fixture(scope="module")
def real_text_bundle(tmp_path_factory, tiny256):
    from edgevlm_export import onnx_export, quantize
    from tools.checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("real256")
    ckpt = make_checkpoint(root / "ckpt", arch="256M", size="full", real_decoder=True)
    model = onnx_export.load_reference(ckpt)
    bundle = root / "bundle"
    onnx_dir = bundle / "onnx"
    onnx_dir.mkdir(parents=True)
    from edgevlm_export.decoder_graph import build_decoder

    onnx_export.export_embed(model, onnx_dir)
    build_decoder(model, onnx_dir / "decoder_model_merged.onnx")  # the fused decoder the exporter ships
    # A stand-in vision file (from the tiny bundle): these tests never encode an image.
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                 "tokenizer.json", "tokenizer_config.json"):
        (bundle / name).write_bytes((ckpt / name).read_bytes())
    vision = tiny256[1] / "onnx" / "vision_encoder.onnx"
    (onnx_dir / "vision_encoder.onnx").write_bytes(vision.read_bytes())
    variants = {"fp32": {}}
    for prec, fn in (("int8", quantize.to_int8), ("q4", quantize.to_q4)):
        for part in ("embed_tokens", "decoder_model_merged"):
            fn(onnx_dir / f"{part}.onnx", onnx_dir / f"{part}_{prec}.onnx", part)
        variants[prec] = {"embed_tokens": f"onnx/embed_tokens_{prec}.onnx",
                          "decoder_model_merged": f"onnx/decoder_model_merged_{prec}.onnx"}
    full = {v: {"vision_encoder": "onnx/vision_encoder.onnx", "embed_tokens": "onnx/embed_tokens.onnx",
                "decoder_model_merged": "onnx/decoder_model_merged.onnx", **parts} for v, parts in variants.items()}
    (bundle / "edgevlm.json").write_text(json.dumps({"format": "edgevlm-bundle", "format_version": 1,
                                                      "variants": full, "files": {}}))
    return bundle, model


def test_fp32_text_decoder_matches_torch_on_real_weights(real_text_bundle):
    import torch

    from tools.accuracy import REAL_TEXT

    bundle, model = real_text_bundle
    vlm = edgevlm.load(bundle, variant="fp32", verify=False)
    ids = np.asarray(vlm.tokenizer.encode(REAL_TEXT))
    ours = vlm.logits(ids)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)[None]).logits[0].numpy()
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() == 1.0
    assert np.abs(ours - ref).max() < 5e-3  # logits of a trained model reach tens; fp32 reorderings only


def test_trained_model_answers_sensibly(real_text_bundle):
    bundle, _ = real_text_bundle
    r = edgevlm.load(bundle, variant="fp32", verify=False).ask(None, "What is the capital of France?",
                                                               max_new_tokens=12)
    assert "Paris" in r.text


def test_quantized_agreement_meets_targets(real_text_bundle):
    from tools.accuracy import REAL_TEXT
    from edgevlm_export.verify import teacher_forced_agreement

    bundle, _ = real_text_bundle
    agreement = teacher_forced_agreement(bundle, ["int8", "q4"], REAL_TEXT)
    assert agreement["int8"] >= 0.97, agreement
    assert agreement["q4"] >= 0.93, agreement
