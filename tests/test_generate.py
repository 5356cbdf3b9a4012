"""Generation options behave like transformers' logits processors; streaming keeps UTF-8 whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image

import edgevlm
from edgevlm import defaults
from edgevlm.engine.generate import GenerationConfig, process_logits
from edgevlm.errors import ContextLengthError, InputError


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    logits = rng.normal(size=500).astype(np.float32)
    history = [3, 17, 17, 200, 499]
    opts = GenerationConfig(repetition_penalty=1.3)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history]), torch.tensor(logits[None]))[0].numpy()
    assert process_logits(logits, history, opts, rng) == int(ref.argmax())
    # the penalised scores themselves
    scores = logits.copy()
    idx = np.unique(history)
    scores[idx] = np.where(scores[idx] < 0, scores[idx] * 1.3, scores[idx] / 1.3)
    np.testing.assert_allclose(scores, ref, rtol=1e-6)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (5, 1.0), (20, 0.5)])
def test_sampling_support_matches_transformers_warpers(top_k, top_p):
    """Every sampled token lies in the set transformers' TopK/TopP warpers keep, and that set gets sampled."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(1)
    logits = rng.normal(size=200).astype(np.float32)
    t = torch.tensor(logits[None]) / 0.7
    if top_k:
        t = TopKLogitsWarper(top_k)(None, t)
    if top_p < 1:
        t = TopPLogitsWarper(top_p)(None, t)
    allowed = set(np.nonzero(np.isfinite(t[0].numpy()))[0].tolist())
    opts = GenerationConfig(do_sample=True, temperature=0.7, top_k=top_k, top_p=top_p)
    seen = {process_logits(logits, [], opts, rng) for _ in range(400)}
    assert seen <= allowed
    assert len(seen) > 1 or len(allowed) == 1


def test_top_k_1_is_greedy_and_seed_reproducible():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=100).astype(np.float32)
    opts = GenerationConfig(do_sample=True, top_k=1)
    assert process_logits(logits, [], opts, rng) == int(np.argmax(logits))
    opts = GenerationConfig(do_sample=True, temperature=1.5)
    a = [process_logits(logits, [], opts, np.random.default_rng(7)) for _ in range(5)]
    b = [process_logits(logits, [], opts, np.random.default_rng(7)) for _ in range(5)]
    assert a == b


def test_bad_options_rejected():
    for bad in (
        dict(max_new_tokens=0),
        dict(do_sample=True, temperature=-0.5),
        dict(temperature=float("nan")),
        dict(top_p=0.0),
        dict(top_k=-1),
    ):
        with pytest.raises(InputError):
            GenerationConfig(**bad).check()


def test_temperature_zero_is_greedy():
    """temperature=0 means greedy everywhere (the library, the CLI, the server and C), as in OpenAI's API."""
    logits = np.random.default_rng(3).normal(size=500).astype(np.float32)
    for config in (
        GenerationConfig(do_sample=True, temperature=0.0),
        GenerationConfig.from_kwargs(temperature=0),
        GenerationConfig.from_kwargs(temperature=0, top_p=0.5, seed=9),
    ):
        config.check()
        assert config.greedy
        assert {process_logits(logits, [], config, np.random.default_rng(s)) for s in range(50)} == {
            int(np.argmax(logits))
        }
    assert not GenerationConfig.from_kwargs().do_sample
    assert GenerationConfig.from_kwargs(temperature=0.5).do_sample


def test_keywords_win_over_config():
    base = GenerationConfig(max_new_tokens=32, repetition_penalty=1.3, seed=5)
    c = GenerationConfig.from_kwargs(config=base, max_new_tokens=10)
    assert c.max_new_tokens == 10 and c.repetition_penalty == 1.3 and c.seed == 5
    assert GenerationConfig.from_kwargs(10, base).max_new_tokens == 10
    assert GenerationConfig.from_kwargs(config=base).max_new_tokens == 32  # not given: the config's
    assert GenerationConfig.from_kwargs(config=base, max_new_tokens=None, seed=None).seed == 5  # None: not given
    assert GenerationConfig.from_kwargs(config=base, seed=8).seed == 8
    assert base.max_new_tokens == 32  # the caller's config is not modified


@pytest.fixture(scope="module")
def vlm(tiny256):
    return edgevlm.load(tiny256[1], variant="fp32", providers="cpu")


def test_sampling_end_to_end_seeded(vlm):
    a = vlm.ask(None, "Hello", max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3)
    b = vlm.ask(None, "Hello", max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3)
    greedy = vlm.ask(None, "Hello", max_new_tokens=8)
    assert a.token_ids == b.token_ids
    assert a.new_tokens == 8 and greedy.new_tokens == 8


def test_call_keywords_win_over_config_and_task_defaults_apply_without_either(vlm):
    config = GenerationConfig(max_new_tokens=32, ignore_eos=True)
    messages = [{"role": "user", "content": "Hello"}]
    assert vlm.chat(messages, config=config, max_new_tokens=10).new_tokens == 10
    assert vlm.chat(messages, config=config).new_tokens == 32
    assert vlm.ask(None, "Hello", config=config, max_new_tokens=6).new_tokens == 6
    assert vlm.caption(random_image(40, 40, seed=1), config=config, max_new_tokens=5, split=False).new_tokens == 5
    assert vlm.caption(random_image(40, 40, seed=1), config=config, split=False).new_tokens == 32
    assert len(list(vlm.stream(None, "Hello", config=config, max_new_tokens=4))) <= 4
    # no keyword and no config: the task's default from edgevlm.defaults
    assert (
        vlm.caption(random_image(40, 40, seed=1), split=False, ignore_eos=True).new_tokens
        == defaults.MAX_NEW_TOKENS["caption"]
    )
    assert vlm.ask(None, "Hello", ignore_eos=True).new_tokens == defaults.MAX_NEW_TOKENS["chat"]


def test_temperature_zero_through_the_api_is_greedy(vlm):
    greedy = vlm.ask(None, "Hello", max_new_tokens=8, ignore_eos=True).token_ids
    assert vlm.ask(None, "Hello", max_new_tokens=8, ignore_eos=True, temperature=0, seed=1).token_ids == greedy
    assert (
        vlm.ask(
            None, "Hello", max_new_tokens=8, ignore_eos=True, do_sample=True, temperature=0.0, top_k=5, seed=2
        ).token_ids
        == greedy
    )


def test_stream_joins_to_result_text_and_utf8_whole(vlm):
    pieces = list(vlm.stream(None, "Hello", max_new_tokens=10))
    r = vlm.ask(None, "Hello", max_new_tokens=10)
    assert "".join(pieces).strip() == r.text
    # Streaming decode of a multi-byte character split over several byte tokens yields it whole, once.
    text = "naïve café 🙂 日本語"
    ids = vlm.tokenizer.encode(text)
    streamed = list(vlm.tokenizer.stream(ids))
    assert "".join(streamed) == vlm.tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in streamed)


def test_stop_token_ends_generation(vlm):
    r = vlm.ask(None, "Hello", max_new_tokens=6)
    first = r.token_ids[0]
    stopped = vlm.ask(None, "Hello", max_new_tokens=6, stop_ids=[first])
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"


def test_prompt_longer_than_context_is_a_clear_error(vlm):
    with pytest.raises(ContextLengthError, match="context"):
        vlm.ask(None, "word " * 9000, max_new_tokens=4)


def test_vision_cache_reuses_encoding(vlm):
    from conftest import random_image

    vlm.vision_cache.clear()
    image = random_image(64, 64, seed=11)
    first = vlm.ask(image, "What is it?", max_new_tokens=2, split=False)
    second = vlm.ask(image, "And the colour?", max_new_tokens=2, split=False)
    assert first.cached_images == 0 and second.cached_images == 1
    assert len(vlm.vision_cache) == 1
    vlm.vision_cache.max_entries = 2
    for seed in range(3):
        vlm.ask(random_image(32, 32, seed=100 + seed), "x", max_new_tokens=1, split=False)
    assert len(vlm.vision_cache) == 2


def test_arena_settings_give_the_same_answer(tiny256):
    """The vision encoder releases its arena after each run (peak memory); with the arena off it must not try to.
    Either way the tokens are the same."""
    from conftest import random_image

    image = random_image(200, 150)
    answers = []
    for arena in (True, False):
        vlm = edgevlm.load(tiny256[1], memory_arena=arena, vision_cache_size=0)
        answers.append([vlm.caption(image, max_new_tokens=6).token_ids for _ in range(2)])
    assert answers[0][0] == answers[0][1] == answers[1][0] == answers[1][1]


def _answers(bundle, variant: str, shared: bool) -> list[list[int]]:
    from conftest import random_image

    vlm = edgevlm.load(bundle, variant=variant, vision_cache_size=0)
    assert vlm.decoder.shares_kv  # edgevlm's fused decoder updates its cache in place by default
    vlm.decoder.shares_kv = shared
    image = random_image(300, 200, seed=5)
    # 300 new tokens: the in-place cache starts at prompt + 128 positions and grows twice on the way.
    answers = [
        vlm.ask(image, "Describe it.", max_new_tokens=300, ignore_eos=True, split=s).token_ids for s in (False, True)
    ]
    answers.append(vlm.ask(image, "Describe it.", max_new_tokens=40, temperature=0.9, top_k=50, seed=7).token_ids)
    return answers


def test_in_place_kv_cache_equals_the_growing_cache(tiny_model):
    """The shared past/present buffers (kv_cache.py) give the same tokens as feeding each step's present back,
    greedy and sampled, with and without image splitting, across the buffer's growth."""
    assert _answers(tiny_model[1], "fp32", True) == _answers(tiny_model[1], "fp32", False)


@pytest.mark.parametrize("variant", ["fp16", "q4"])
def test_in_place_kv_cache_equals_the_growing_cache_quantized(tiny256, variant):
    assert _answers(tiny256[1], variant, True) == _answers(tiny256[1], variant, False)


def test_only_the_decoder_spins_and_it_stops_after_each_run():
    """Spinning workers of one session take the cores another needs next: the vision encoder and embeddings never
    spin; the decoder spins during a generation but stops when a run returns (the next image's resize gets the
    cores). Read back from the options each part is opened with."""
    from edgevlm.engine.providers import session_options

    decoder, other = session_options(2, True, spin=True), session_options(2, True, spin=False)
    assert decoder.get_session_config_entry("session.force_spinning_stop") == "1"
    assert other.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # the decoder keeps the default: spin
        decoder.get_session_config_entry("session.intra_op.allow_spinning")
