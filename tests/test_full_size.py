"""Full-size exports (slow: minutes on 2 cores, several GB; not in the default run).

    python -m pytest -m slow tests/test_full_size.py

The 500M architecture at full size with random weights, every variant: the exporter's own verification must find
fp32 equal to PyTorch token for token, and the runtime, loaded as a user would, must give PyTorch's greedy tokens
through the model card's path. Weights this size go to external data files (`<part>.onnx_data`), a path the tiny
test models never take.
"""

from __future__ import annotations

import os
import stat

import pytest
from conftest import random_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full500(tmp_path_factory):
    from edgevlm_export.pipeline import export

    from tools.checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("full500")
    ckpt = make_checkpoint(root / "ckpt", arch="500M", size="full", seed=0)
    manifest = export(ckpt, root / "bundle", None, log=lambda m: None)  # every variant
    return ckpt, root / "bundle", manifest


def test_500m_export_verifies_every_variant(full500):
    _, bundle, manifest = full500
    report = manifest["verification"]
    assert set(report) == {"fp32", "fp16", "int8", "q4", "mixed"}
    assert report["fp32"]["all_tokens_equal"] and report["fp32"]["max_abs_logit_diff"] < 1e-3
    assert report["fp16"]["max_abs_logit_diff"] < 0.05
    data = bundle / "onnx" / "decoder_model_merged.onnx_data"
    assert data.exists()  # the 500M decoder is over the 1 GB external-data limit
    umask = os.umask(0)
    os.umask(umask)
    for p in bundle.rglob("*"):  # external weight files too: readable by the services that load the bundle
        assert stat.S_IMODE(p.stat().st_mode) == ((0o777 if p.is_dir() else 0o666) & ~umask), p


def test_500m_runtime_equals_pytorch_greedy(full500, reference_cache):
    """The model card's path (tests/test_parity.py's reference) against the runtime as a user loads it."""
    from conftest import reference
    from test_parity import reference_tokens

    import edgevlm

    ckpt, bundle, _ = full500
    model, processor = reference(ckpt, reference_cache)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": random_image(300, 420, 5)},
                {"type": "text", "text": "Describe this image."},
            ],
        }
    ]
    ref_prompt, ref_new = reference_tokens(model, processor, messages, True)
    vlm = edgevlm.load(bundle, threads=2)
    assert vlm.prepare(messages).input_ids == ref_prompt
    assert vlm.chat(messages, max_new_tokens=len(ref_new)).token_ids == ref_new
