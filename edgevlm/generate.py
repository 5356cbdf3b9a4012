"""Token generation over the ONNX decoder with a KV cache: greedy, sampling, repetition penalty, stop tokens.

Logit processing follows transformers' order (repetition penalty, temperature, top-k, top-p) so the same settings
mean the same thing as in `model.generate`.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import ContextLengthError, InputError


@dataclass
class SamplingOptions:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        if self.do_sample and self.temperature <= 0:
            raise InputError(f"temperature must be > 0 when sampling, not {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], not {self.top_p}.")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise InputError("top_k must be >= 0 and repetition_penalty > 0.")


@dataclass
class Timings:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: float = 0.0
    new_tokens: int = 0
    finish_reason: str = "length"
    step_s: list[float] = field(default_factory=list, repr=False)


def check_context(prompt_tokens: int, max_new_tokens: int, max_positions: int) -> None:
    if prompt_tokens + max_new_tokens > max_positions:
        raise ContextLengthError(
            f"the prompt is {prompt_tokens} tokens (images included) and {max_new_tokens} new tokens are asked "
            f"for, over the model's context of {max_positions}. Use fewer or smaller images (split=False), a "
            f"shorter prompt, or a lower max_new_tokens.")


def process_logits(logits: np.ndarray, generated: list[int], opts: SamplingOptions,
                   rng: np.random.Generator) -> int:
    """Pick the next token from one row of logits (float32, vocab)."""
    scores = logits.astype(np.float32, copy=True)
    if opts.repetition_penalty != 1.0 and generated:
        idx = np.unique(np.asarray(generated))
        picked = scores[idx]
        scores[idx] = np.where(picked < 0, picked * opts.repetition_penalty, picked / opts.repetition_penalty)
    if not opts.do_sample:
        return int(np.argmax(scores))
    scores = scores / opts.temperature
    if opts.top_k > 0 and opts.top_k < scores.size:
        kth = np.partition(scores, -opts.top_k)[-opts.top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    if opts.top_p < 1.0:
        order = np.argsort(scores)  # ascending, as transformers' TopPLogitsWarper
        probs = _softmax(scores[order])
        remove = np.cumsum(probs) <= (1 - opts.top_p)
        remove[-1] = False  # always keep the best token
        scores[order[remove]] = -np.inf
    probs = _softmax(scores)
    return int(rng.choice(probs.size, p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - np.max(x)
    e = np.exp(x, dtype=np.float64)
    return e / e.sum()


class Decoder:
    """Wraps the embed_tokens and decoder_model_merged sessions."""

    def __init__(self, embed_session, decoder_session, num_layers: int, kv_heads: int, head_dim: int,
                 max_positions: int):
        self.embed = embed_session
        self.decoder = decoder_session
        self.num_layers = num_layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.max_positions = max_positions
        inputs = {i.name: i for i in decoder_session.get_inputs()}
        self.kv_dtype = np.float16 if "float16" in inputs["past_key_values.0.key"].type else np.float32
        self.embeds_dtype = np.float16 if "float16" in inputs["inputs_embeds"].type else np.float32
        self.uses_position_ids = "position_ids" in inputs
        self.keeps_logits = "num_logits_to_keep" in inputs
        self.output_names = [o.name for o in decoder_session.get_outputs()]

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.embed.run(None, {"input_ids": ids.reshape(1, -1).astype(np.int64)})[0]

    def empty_cache(self) -> list[np.ndarray]:
        shape = (1, self.kv_heads, 0, self.head_dim)
        return [np.zeros(shape, dtype=self.kv_dtype) for _ in range(2 * self.num_layers)]

    def merge(self, ids: np.ndarray, image_features: np.ndarray | None, image_token_id: int) -> np.ndarray:
        """Token embeddings with the <image> rows replaced, in order, by the image features."""
        embeds = self.embed_ids(ids)
        mask = ids == image_token_id
        n_feats = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if int(mask.sum()) != n_feats:
            raise InputError(f"the prompt has {int(mask.sum())} image tokens but the images gave {n_feats} "
                             f"features.")
        if n_feats:
            embeds[0, mask] = image_features.reshape(-1, embeds.shape[-1])
        return embeds

    def step(self, embeds: np.ndarray, cache: list[np.ndarray], past_len: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits of the last position only (what generation needs) and the grown cache."""
        logits, cache = self.forward(embeds, cache, past_len, keep=1)
        return logits[-1], cache

    def forward(self, embeds: np.ndarray, cache: list[np.ndarray], past_len: int,
                keep: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits for the last `keep` positions of `embeds` (all when None) and the grown cache."""
        n = embeds.shape[1]
        feeds = {"inputs_embeds": embeds.astype(self.embeds_dtype, copy=False),
                 "attention_mask": np.ones((1, past_len + n), dtype=np.int64)}
        if self.keeps_logits:
            feeds["num_logits_to_keep"] = np.array(keep or n, dtype=np.int64)
        if self.uses_position_ids:
            feeds["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None]
        for i in range(self.num_layers):
            feeds[f"past_key_values.{i}.key"] = cache[2 * i]
            feeds[f"past_key_values.{i}.value"] = cache[2 * i + 1]
        out = self.decoder.run(self.output_names, feeds)
        return out[0][0], out[1:]

    def generate(self, input_ids: list[int], image_features: np.ndarray | None, image_token_id: int,
                 opts: SamplingOptions, timings: Timings) -> Iterator[int]:
        """Yield new token ids; `timings` is filled in as it goes."""
        opts.check()
        ids = np.asarray(input_ids, dtype=np.int64)
        check_context(len(ids), opts.max_new_tokens, self.max_positions)
        t0 = time.perf_counter()
        embeds = self.merge(ids, image_features, image_token_id)
        rng = np.random.default_rng(opts.seed)
        logits, cache = self.step(embeds, self.empty_cache(), 0)
        timings.prefill_s = time.perf_counter() - t0
        generated: list[int] = list(ids) if opts.repetition_penalty != 1.0 else []
        past = len(ids)
        t1 = time.perf_counter()
        for i in range(opts.max_new_tokens):
            token = process_logits(logits, generated, opts, rng)
            if i == 0:
                timings.first_token_s = time.perf_counter() - t0
            timings.new_tokens += 1
            if opts.repetition_penalty != 1.0:
                generated.append(token)
            if token in opts.stop_ids:
                timings.finish_reason = "stop"
                timings.decode_s = time.perf_counter() - t1
                yield token
                return
            yield token
            if i + 1 == opts.max_new_tokens:
                break
            logits, cache = self.step(self.embed_ids(np.array([token])), cache, past)
            past += 1
        timings.decode_s = time.perf_counter() - t1
