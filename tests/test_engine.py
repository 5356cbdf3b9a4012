"""The staged engine API: prepare -> encode -> Generator (prefill, step, logits processors, cancel), and one model
shared by several threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import random_image

import edgevlm
from edgevlm.engine.generate import GenerationConfig
from edgevlm.errors import ContextLengthError, InputError


@pytest.fixture(scope="module")
def vlm(tiny256):
    return edgevlm.load(tiny256[1], threads=1)


def _messages(image, text="What is in this image?"):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def test_greedy_steps_equal_ask(vlm):
    image = random_image(120, 90, seed=21)
    prompt = vlm.prepare(_messages(image), split=False)
    encoded = vlm.encode(prompt)
    assert prompt.images == 1 and encoded.tiles == 1 and encoded.features.shape[0] == 1
    gen = vlm.generator(prompt, encoded, config=GenerationConfig(max_new_tokens=12))
    assert gen.logits is None
    gen.prefill()
    assert gen.logits.shape == (vlm.spec.vocab_size,)
    tokens = []
    while (t := gen.step()) is not None:
        tokens.append(t)
    assert tokens == gen.tokens and gen.done and gen.finish_reason in ("stop", "length")
    assert vlm.ask(image, "What is in this image?", max_new_tokens=12, split=False).token_ids == tokens


def test_banned_token_never_appears_and_the_rest_is_argmax(vlm):
    image = random_image(80, 100, seed=22)
    prompt = vlm.prepare(_messages(image), split=False)
    encoded = vlm.encode(prompt)
    free = list(vlm.generator(prompt, encoded, max_new_tokens=10, ignore_eos=True))
    banned = free[0]
    seen_scores = []

    def ban(new_tokens, scores):
        seen_scores.append((list(new_tokens), scores.copy()))
        scores[banned] = -np.inf
        return scores

    gen = vlm.generator(prompt, encoded, max_new_tokens=10, ignore_eos=True, logits_processors=[ban])
    tokens = list(gen)
    assert banned not in tokens and len(tokens) == 10
    for i, (history, scores) in enumerate(seen_scores):  # each pick is the argmax of what the processor allowed
        assert history == tokens[:i]
        allowed = scores.copy()
        allowed[banned] = -np.inf
        assert tokens[i] == int(np.argmax(allowed))


def test_cancel_keeps_tokens_so_far(vlm):
    prompt = vlm.prepare([{"role": "user", "content": "Count to twenty."}])
    gen = vlm.generator(prompt, vlm.encode(prompt), max_new_tokens=50, ignore_eos=True)
    first = [gen.step(), gen.step(), gen.step()]
    gen.cancel()
    assert gen.step() is None and gen.tokens == first and gen.finish_reason == "cancelled"


def test_cancel_from_another_thread_mid_step_ends_cleanly(vlm):
    """docs/python-api.md: cancel() works from any thread. A cancel that lands while step() runs in the driving thread must
    neither crash that step (it once freed the KV cache under it) nor lose the tokens so far. 200 runs, each
    cancelled at a different moment of a step (a logits processor holds the step open while the cancel lands)."""
    prompt = vlm.prepare([{"role": "user", "content": "Count to twenty."}])
    encoded = vlm.encode(prompt)
    for i in range(200):
        inside, landed = threading.Event(), threading.Event()
        stop_at = 1 + i % 4

        def hold(
            ids, scores, stop_at=stop_at, inside=inside, landed=landed
        ):  # the driving thread, inside step(): wait here until the cancel has returned
            if len(ids) == stop_at:
                inside.set()
                landed.wait(5)
            return scores

        gen = vlm.generator(prompt, encoded, max_new_tokens=50, ignore_eos=True, logits_processors=[hold])
        errors, seen = [], []

        def drive(gen=gen, seen=seen, errors=errors):
            try:
                while (t := gen.step()) is not None:
                    seen.append(t)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        driver = threading.Thread(target=drive)
        driver.start()
        if i % 2:
            assert inside.wait(10)
        else:  # half of them at any moment at all, as a user's stop button does
            time.sleep(0.0005 * (i % 7))
        gen.cancel()
        landed.set()
        driver.join(10)
        assert not driver.is_alive() and not errors, errors
        assert gen.finish_reason == "cancelled" and gen.done and gen.step() is None
        assert gen.tokens == seen and len(seen) < 50
        if i % 2:
            assert len(seen) == stop_at + 1  # the step under way kept its token; none came after it


def test_config_and_keywords_are_one_set_of_options(vlm):
    with pytest.raises(InputError, match="unknown generation option"):
        vlm.ask(None, "Hi", max_new_tokens=3, temprature=0.5)
    cfg = GenerationConfig(max_new_tokens=4, do_sample=True, temperature=0.8, seed=3)
    a = vlm.chat([{"role": "user", "content": "Hi"}], config=cfg)
    b = vlm.chat([{"role": "user", "content": "Hi"}], config=cfg)
    assert a.token_ids == b.token_ids and a.new_tokens <= 4
    with pytest.raises(InputError, match="forbade every token"):
        vlm.ask(None, "Hi", max_new_tokens=2, logits_processors=[lambda ids, s: np.full_like(s, -np.inf)])
    with pytest.raises(ContextLengthError):
        vlm.generator(
            vlm.prepare([{"role": "user", "content": "Hi"}]), edgevlm.EncodedImages(None), max_new_tokens=9000
        )


def test_two_threads_share_one_model(vlm):
    """One thread encodes and generates image answers while another runs text generators: the same tokens as one
    after the other (ONNX Runtime sessions run concurrently; the vision cache is locked)."""
    images = [random_image(60 + 10 * i, 90, seed=30 + i) for i in range(4)]
    texts = ["Hello", "What is a cat?", "Name a colour.", "Say something."]
    vlm.vision_cache.clear()
    expected_images = [vlm.ask(im, "Describe.", max_new_tokens=8, split=False).token_ids for im in images]
    expected_texts = [vlm.ask(None, t, max_new_tokens=8).token_ids for t in texts]
    vlm.vision_cache.clear()
    got: dict[str, list] = {"images": [], "texts": []}
    errors = []

    def run(key, fn, items):
        try:
            for _ in range(3):
                got[key].append([fn(x) for x in items])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [
        threading.Thread(
            target=run,
            args=("images", lambda im: vlm.ask(im, "Describe.", max_new_tokens=8, split=False).token_ids, images),
        ),
        threading.Thread(
            target=run,
            args=(
                "texts",
                lambda t: list(
                    vlm.generator(
                        vlm.prepare([{"role": "user", "content": t}]), edgevlm.EncodedImages(None), max_new_tokens=8
                    )
                ),
                texts,
            ),
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got["images"] == [expected_images] * 3
    assert got["texts"] == [expected_texts] * 3


def test_frames_seen_once_bypass_the_vision_cache(vlm):
    """Live and timeline frames are new every time: they skip the cache (no hashing, no eviction of stills)."""
    vlm.vision_cache.clear()
    still = random_image(50, 60, seed=40)
    vlm.caption(still, max_new_tokens=1, split=False)
    assert len(vlm.vision_cache) == 1
    for seed in range(3):
        r = vlm.caption(random_image(50, 60, seed=41 + seed), max_new_tokens=1, split=False, cache=False)
        assert r.cached_images == 0
    assert len(vlm.vision_cache) == 1
    assert vlm.caption(still, max_new_tokens=1, split=False).cached_images == 1


def test_records_have_to_dict(vlm):
    from edgevlm.records import LiveCaption, Segment

    r = vlm.ask(None, "Hi", max_new_tokens=2)
    assert "token_ids" not in r.to_dict() and r.to_dict()["new_tokens"] == 2
    assert Segment(0.0, 1.0, "a", 0.5).to_dict()["end"] == 1.0
    live = LiveCaption(1.5, "b", 0.0, 1.0, 2.0, 3, 1, 0, 0)
    assert live.to_dict()["timestamp"] == 1.5 and not hasattr(live, "start")


def test_a_misspelt_part_in_a_variant_dict_is_an_error(tiny256):
    """{"vison": "q4"} once loaded the vision encoder at fp32 without a word."""
    with pytest.raises(InputError, match=r"unknown part 'vison'.*did you mean 'vision'"):
        edgevlm.load(tiny256[1], variant={"vison": "q4", "decoder": "q4"})
    with pytest.raises(InputError, match="twice"):
        edgevlm.load(tiny256[1], variant={"vision": "q4", "vision_encoder": "int8"})
    with pytest.raises(edgevlm.ModelError, match="no 'q5' file"):
        edgevlm.load(tiny256[1], variant={"vision": "q5"})
    vlm = edgevlm.load(tiny256[1], variant={"vision": "int8", "embed_tokens": "q4", "decoder": "q4"})
    assert vlm.ask(None, "Hi", max_new_tokens=2).new_tokens >= 1
