"""Token generation over the ONNX decoder with a KV cache: greedy, sampling, repetition penalty, stop tokens.

Logit processing follows transformers' order (repetition penalty, temperature, top-k, top-p) so the same settings
mean the same thing as in `model.generate`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ..errors import ContextLengthError, InputError
from . import kv_cache
from .kv_cache import FIRST_EXTRA, GrowingKVCache, SharedKVCache
from .structured import ConstrainedAnswer, Constraint, from_options

LogitsProcessor = Callable[[Sequence[int], np.ndarray], np.ndarray]
"""processor(new_token_ids, scores) -> scores: called on every step's float32 logits row before a token is picked;
set a score to -inf to forbid that token (where structured answers plug in)."""


@dataclass
class GenerationConfig:
    """How to pick tokens and when to stop: the one place generation options live (ORT-GenAI's GeneratorParams).

    stop_ids end generation in addition to the model's end-of-sequence ids (ignored with ignore_eos=True, which
    always generates max_new_tokens: benchmarks). Sampling is on when do_sample is set, or implied by from_kwargs
    when a temperature, top_k or top_p is given. constraint: the answer must be one of some choices, match a JSON
    schema, a regex or a grammar (from_kwargs builds it from choices=, json_schema=, regex= or grammar=).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logits_processors: tuple[LogitsProcessor, ...] = ()
    constraint: Constraint | None = None

    def check(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        if not self.temperature >= 0:  # NaN too
            raise InputError(f"temperature must be >= 0 (0 is greedy), not {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], not {self.top_p}.")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise InputError("top_k must be >= 0 and repetition_penalty > 0.")
        if self.constraint is not None and self.ignore_eos:
            raise InputError(
                "ignore_eos cannot be combined with a constraint: a constrained answer ends where it is complete."
            )

    @classmethod
    def from_kwargs(
        cls, max_new_tokens: int | None = None, config: GenerationConfig | None = None, **kw: Any
    ) -> GenerationConfig:
        """A config from keyword options (the convenience calls' **kw), on top of `config` if one is given.

        An explicit keyword always wins over the same field of `config`; a keyword given as None counts as not
        given. choices=, json_schema=, regex= or grammar= become its constraint. temperature=0 means greedy, as in
        OpenAI's API and the server.
        """
        kw = {k: v for k, v in kw.items() if v is not None}
        if max_new_tokens is not None:
            kw["max_new_tokens"] = max_new_tokens
        shorthand = {k: kw.pop(k) for k in ("choices", "json_schema", "regex", "grammar") if k in kw}
        if shorthand:
            if "constraint" in kw:
                raise InputError(f"give either constraint= or {', '.join(shorthand)}=, not both.")
            kw["constraint"] = from_options(**shorthand)
        names = {f.name for f in fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise InputError(
                f"unknown generation option(s): {', '.join(sorted(unknown))}; the options are "
                f"{', '.join(sorted(names | {'choices', 'json_schema', 'regex', 'grammar'}))}."
            )
        if "do_sample" not in kw and (
            kw.get("temperature", 1.0) not in (0, 1.0) or kw.get("top_k") or kw.get("top_p", 1) < 1
        ):
            kw["do_sample"] = True
        if "stop_ids" in kw:
            kw["stop_ids"] = tuple(kw["stop_ids"])
        if "logits_processors" in kw:
            kw["logits_processors"] = tuple(kw["logits_processors"])
        return replace(config if config is not None else cls(), **kw)

    @property
    def greedy(self) -> bool:
        """Whether the next token is always the most likely one (no sampling, or temperature 0)."""
        return not self.do_sample or self.temperature == 0


@dataclass
class Timings:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: float = 0.0
    new_tokens: int = 0
    finish_reason: str = "length"


def check_context(prompt_tokens: int, max_new_tokens: int, max_positions: int) -> None:
    if prompt_tokens + max_new_tokens > max_positions:
        raise ContextLengthError(
            prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens, max_positions=max_positions
        )


def process_logits(
    logits: np.ndarray,
    generated: Sequence[int],
    opts: GenerationConfig,
    rng: np.random.Generator,
    new_tokens: Sequence[int] = (),
    constraint: ConstrainedAnswer | None = None,
) -> int:
    """Pick the next token from one row of logits (float32, vocab). `generated`: the ids the repetition penalty
    looks at (prompt included, as transformers); `new_tokens`: what the logits processors see. A constraint masks
    after the processors and before temperature, top-k and top-p, so sampling spreads over valid tokens only."""
    # A copy only where something below writes into the scores in place (the caller's logits stay as they were).
    edits = opts.repetition_penalty != 1.0 or bool(opts.logits_processors) or constraint is not None
    scores = logits.astype(np.float32, copy=edits)
    if opts.repetition_penalty != 1.0 and len(generated):
        idx = np.unique(np.asarray(generated))
        picked = scores[idx]
        scores[idx] = np.where(picked < 0, picked * opts.repetition_penalty, picked / opts.repetition_penalty)
    for processor in opts.logits_processors:
        scores = np.asarray(processor(new_tokens, scores), dtype=np.float32)
    if constraint is not None:
        scores = constraint(new_tokens, scores)
    if not np.isfinite(scores).any():
        raise InputError("the logits processors and the constraint forbade every token; nothing can be generated.")
    if opts.greedy:
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

    def __init__(
        self, embed_session, decoder_session, num_layers: int, kv_heads: int, head_dim: int, max_positions: int
    ):
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
        self.shares_kv = kv_cache.supported(decoder_session)

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.embed.run(None, {"input_ids": ids.reshape(1, -1).astype(np.int64)})[0]

    def merge(self, ids: np.ndarray, image_features: np.ndarray | None, image_token_id: int) -> np.ndarray:
        """Token embeddings with the <image> rows replaced, in order, by the image features."""
        embeds = self.embed_ids(ids)
        mask = ids == image_token_id
        n_feats = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if int(mask.sum()) != n_feats:
            raise InputError(f"the prompt has {int(mask.sum())} image tokens but the images gave {n_feats} features.")
        if image_features is not None and n_feats:
            embeds[0, mask] = image_features.reshape(-1, embeds.shape[-1])
        return embeds

    def forward(self, embeds: np.ndarray) -> np.ndarray:
        """Logits (positions, vocab) for every position of `embeds`, from an empty cache (teacher forcing)."""
        cache = GrowingKVCache(self.decoder, self.num_layers, self.kv_heads, self.head_dim, self.kv_dtype)
        return cache.outputs(self._feeds(embeds, 0, None))[0]

    def new_cache(self, prompt_tokens: int, max_new_tokens: int, batch: int = 1) -> SharedKVCache | GrowingKVCache:
        """An answer's KV cache (`batch` answers' in lockstep): updated in place where this decoder allows
        (kv_cache.py), else grown."""
        if self.shares_kv:
            return SharedKVCache(
                self.decoder,
                self.num_layers,
                self.kv_heads,
                self.head_dim,
                self.kv_dtype,
                prompt_tokens + min(max_new_tokens, FIRST_EXTRA),
                self.max_positions,
                batch,
            )
        return GrowingKVCache(self.decoder, self.num_layers, self.kv_heads, self.head_dim, self.kv_dtype, batch)

    def advance(self, embeds: np.ndarray, cache: SharedKVCache | GrowingKVCache, past_len: int) -> np.ndarray:
        """Each row's last-position logits (batch, vocab); `cache` holds the new positions afterwards."""
        return cache.run(self._feeds(embeds, past_len, 1), past_len, embeds.shape[1])

    def _feeds(self, embeds: np.ndarray, past_len: int, keep: int | None) -> dict[str, np.ndarray]:
        batch, n = embeds.shape[:2]
        feeds = {
            "inputs_embeds": np.ascontiguousarray(embeds, dtype=self.embeds_dtype),
            "attention_mask": np.ones((batch, past_len + n), dtype=np.int64),
        }
        if self.keeps_logits:
            feeds["num_logits_to_keep"] = np.array(keep or n, dtype=np.int64)
        if self.uses_position_ids:
            feeds["position_ids"] = np.repeat(np.arange(past_len, past_len + n, dtype=np.int64)[None], batch, 0)
        return feeds


class Generator:
    """One answer, token by token: `prefill()` runs the prompt, each `step()` picks a token and feeds it back.

    Iterating yields the tokens until a stop token (included, as transformers' generate), max_new_tokens,
    `cancel()`, or a constrained answer that is complete and cannot go on (it ends without spending a decoder
    step on the end-of-sequence token that is all it could still pick). One thread drives a Generator (prefill,
    step, iteration); `cancel()` may come from any thread. Several Generators may share one model (ONNX Runtime
    sessions run concurrently), each with its own KV cache.
    """

    def __init__(
        self,
        decoder: Decoder,
        input_ids: Sequence[int],
        image_features: np.ndarray | None,
        image_token_id: int,
        config: GenerationConfig,
        eos_ids: Sequence[int] = (),
        constraint: ConstrainedAnswer | None = None,
    ):
        config.check()
        if config.constraint is not None and constraint is None:
            raise InputError("a constrained config needs the model's constraint state; use Engine.generator().")
        check_context(len(input_ids), config.max_new_tokens, decoder.max_positions)
        self.decoder, self.config = decoder, config
        self.input_ids = list(input_ids)
        self._features, self._image_token_id = image_features, image_token_id
        self.stop_ids = frozenset(config.stop_ids) | (frozenset() if config.ignore_eos else frozenset(eos_ids))
        self.tokens: list[int] = []
        self.timings = Timings()
        self.finish_reason: str | None = None
        self.constraint = constraint
        self._rng = np.random.default_rng(config.seed)
        self._history: list[int] = list(input_ids) if config.repetition_penalty != 1.0 else []
        self._logits: np.ndarray | None = None
        self._cache: SharedKVCache | GrowingKVCache | None = None
        self._t0 = self._t1 = 0.0
        # A cancel from another thread must not free the KV cache under a running step: the step holds this lock
        # and honours the flag when it ends.
        self._busy = threading.Lock()  # not reentrant: a cancel from a logits processor waits for the step's end
        self._cancel_requested = threading.Event()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def logits(self) -> np.ndarray | None:
        """The logits the next step picks from (after prefill; None before)."""
        return self._logits

    def prefill(self) -> None:
        with self._busy:
            if self._cache is None and not self.done:
                self._prefill()

    def _prefill(self) -> SharedKVCache | GrowingKVCache:
        self._t0 = time.perf_counter()
        embeds = self.decoder.merge(np.asarray(self.input_ids, dtype=np.int64), self._features, self._image_token_id)
        self._features = None  # merged into the embeddings; not needed again
        cache = self._cache = self.decoder.new_cache(len(self.input_ids), self.config.max_new_tokens)
        self._logits = self.decoder.advance(embeds, cache, 0)[0]
        self._t1 = time.perf_counter()
        self.timings.prefill_s = self._t1 - self._t0
        return cache

    def step(self) -> int | None:
        """The next token (None once done). The token is chosen from the current logits, then fed to the decoder
        unless it ends the answer."""
        with self._busy:
            if not self.done and self._cancel_requested.is_set():
                self._finish("cancelled")
            if self.done:
                return None
            cache = self._cache if self._cache is not None else self._prefill()
            token = self._pick()
            if self._cancel_requested.is_set():
                self._finish("cancelled")  # the token picked stays; the decoder is not run for it
            elif token in self.stop_ids or (self.constraint is not None and self.constraint.finished):
                self._finish("stop")
            elif len(self.tokens) >= self.config.max_new_tokens:
                self._finish("length")
            else:
                past = len(self.input_ids) + len(self.tokens) - 1
                self._logits = self.decoder.advance(self.decoder.embed_ids(np.array([token])), cache, past)[0]
            return token

    def _pick(self) -> int:
        if self._logits is None:  # step() prefills first
            raise AssertionError("no logits before the prefill")
        token = process_logits(self._logits, self._history, self.config, self._rng, self.tokens, self.constraint)
        if self.constraint is not None:
            self.constraint.consume(token)
        if not self.tokens:
            self.timings.first_token_s = time.perf_counter() - self._t0
        self.tokens.append(token)
        self.timings.new_tokens = len(self.tokens)
        if self.config.repetition_penalty != 1.0:
            self._history.append(token)
        return token

    def cancel(self) -> None:
        """Stop the answer; the tokens so far stay. Safe from any thread: while another thread is inside `step()`,
        that step ends the answer when it returns (its token is kept), and the next `step()` returns None."""
        self._cancel_requested.set()
        if self._busy.acquire(blocking=False):
            try:
                if not self.done:
                    self._finish("cancelled")
            finally:
                self._busy.release()

    def _finish(self, reason: str) -> None:
        self.finish_reason = self.timings.finish_reason = reason
        self.timings.decode_s = time.perf_counter() - self._t1 if self._t1 else 0.0
        self._cache = None  # the KV cache is the large part: free it as soon as the answer is complete

    def __iter__(self) -> Iterator[int]:
        while (token := self.step()) is not None:
            yield token
