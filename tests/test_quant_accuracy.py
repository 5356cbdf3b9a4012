"""Quantization accuracy on a trained decoder (real SmolLM2-135M-Instruct weights in the 256M architecture).

Teacher-forced top-1 agreement with fp32 over real text, for the int8 and q4 recipes the exporter ships. Only the
text parts are exported here (the vision tower is random, so it says nothing about accuracy); the full-bundle
measurement is `python -m tools.accuracy` (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

import edgevlm


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
    r = edgevlm.load(bundle, variant="fp32", verify=False).ask(
        None, "What is the capital of France?", max_new_tokens=12
    )
    assert "Paris" in r.text


def test_quantized_agreement_meets_targets(real_text_bundle):
    from edgevlm_export.verify import teacher_forced_agreement

    from tools.accuracy import REAL_TEXT

    bundle, _ = real_text_bundle
    agreement = teacher_forced_agreement(bundle, ["int8", "q4"], REAL_TEXT)
    assert agreement["int8"] >= 0.97, agreement
    assert agreement["q4"] >= 0.93, agreement
