"""The runtime's greedy output equals transformers' `generate`, token for token (fp32), end to end.

Reference side: SmolVLMProcessor called as SmolVLM2's model card does (`apply_chat_template(messages,
add_generation_prompt=True, tokenize=True, return_dict=True)`) + SmolVLMForConditionalGeneration.
Our side: edgevlm.load(bundle) from the raw images. Same tokens means preprocessing, prompt building, image-feature
merging, KV-cache decoding and stopping all agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image, reference

import edgevlm

MAX_NEW = 12


def _conversations():
    a, b = random_image(300, 420, seed=1), random_image(200, 150, seed=2)

    def user_img(im, text):
        return {"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": text}]}

    return {
        "image_split": ([user_img(a, "What is in this image?")], True),
        "image_no_split": ([user_img(a, "Describe this image.")], False),
        "two_images": (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": a},
                        {"type": "image", "image": b},
                        {"type": "text", "text": "What changed?"},
                    ],
                }
            ],
            False,
        ),
        "text_only": (
            [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}],
            True,
        ),
        "multi_turn_system": (
            [
                {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                user_img(b, "What is this?"),
                {"role": "assistant", "content": [{"type": "text", "text": "A colourful pattern."}]},
                {"role": "user", "content": [{"type": "text", "text": "Which colour dominates?"}]},
            ],
            True,
        ),
    }


def reference_tokens(model, processor, messages, split):
    """The model card's path: processor.apply_chat_template(..., tokenize=True), images inside the messages."""
    processor.image_processor.do_image_splitting = split  # a call kwarg is not routed to the image processor
    try:
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
    finally:
        processor.image_processor.do_image_splitting = True
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    return inputs["input_ids"][0].tolist(), out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("case", list(_conversations()))
def test_greedy_tokens_equal_transformers(tiny_model, reference_cache, case):
    ckpt, bundle = tiny_model
    model, processor = reference(ckpt, reference_cache)
    messages, split = _conversations()[case]
    ref_prompt, ref_new = reference_tokens(model, processor, messages, split)

    vlm = edgevlm.load(bundle, variant="fp32", providers="cpu")
    prepared = vlm.prepare(messages, split=split)
    assert prepared.input_ids == ref_prompt, "prompt token ids differ from SmolVLMProcessor's"
    result = vlm.chat(messages, max_new_tokens=MAX_NEW, split=split)
    assert result.token_ids == ref_new
    assert result.prompt_tokens == len(ref_prompt)
    assert result.new_tokens == len(ref_new)


def test_longest_edge_is_the_processors_size_setting(tiny_model, reference_cache):
    """longest_edge=N equals the model card's way to fewer tiles, processor.image_processor.size =
    {"longest_edge": N}: the same prompt ids (the smaller tile grid) and the same greedy tokens."""
    ckpt, bundle = tiny_model
    model, processor = reference(ckpt, reference_cache)
    vlm = edgevlm.load(bundle, variant="fp32", providers="cpu")
    image, question = random_image(300, 420, seed=1), "What is in this image?"
    edge = 2 * vlm.spec.tile
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    size = processor.image_processor.size
    processor.image_processor.size = {"longest_edge": edge}
    try:
        ref_prompt, ref_new = reference_tokens(model, processor, messages, True)
    finally:
        processor.image_processor.size = size
    assert len(ref_prompt) < len(vlm.prepare(messages).input_ids)  # fewer tiles than the default rule
    result = vlm.ask(image, question, max_new_tokens=MAX_NEW, longest_edge=edge)
    assert result.prompt_tokens == len(ref_prompt) and result.token_ids == ref_new
    messages[0]["content"][0]["longest_edge"] = edge  # the same choice per image, inside the messages
    assert vlm.prepare(messages).input_ids == ref_prompt


def test_teacher_forced_logits_close(tiny_model, reference_cache):
    """Greedy tokens can hide numeric drift on near-tied random logits; check the logits themselves."""
    ckpt, bundle = tiny_model
    model, processor = reference(ckpt, reference_cache)
    messages, split = _conversations()["image_split"]
    vlm = edgevlm.load(bundle, variant="fp32", providers="cpu")
    prompt = vlm.prepare(messages, split=split)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["input_ids"][0].tolist() == prompt.input_ids
    with torch.no_grad():
        ref = model(**inputs).logits[0].numpy()
    ours = vlm.logits(prompt.input_ids, vlm.encode(prompt))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4
