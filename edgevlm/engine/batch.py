"""Several answers decoded together: one decoder run per step for every row.

Why: a decode step reads every weight of the decoder once, whatever the batch; on a CPU that read is most of the
step, so four live streams' captions decoded together cost little more than one. The rows are prompts of the same
length (the same question over images of the same tile count: live frames), so no padding is needed and the
rows advance in lockstep over one KV cache. Each row picks its own tokens with its own options and random
generator, exactly as a Generator would; a row that has finished keeps being fed its last token (its answer is
complete, the extra logits are not used) until every row is done.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .generate import Decoder, GenerationConfig, Timings, check_context, process_logits


class BatchGenerator:
    """Greedy or sampled answers for prompts of equal length, decoded as one batch (no constraints: a constrained
    answer goes through Generator)."""

    def __init__(
        self,
        decoder: Decoder,
        prompts: Sequence[Sequence[int]],
        features: Sequence[np.ndarray | None],
        image_token_id: int,
        config: GenerationConfig,
        eos_ids: Sequence[int] = (),
    ):
        config.check()
        if config.constraint is not None:
            raise InputError("a constrained answer cannot be batched; use Engine.generator().")
        if len({len(p) for p in prompts}) != 1:
            raise InputError("batched prompts must have the same length; answer the others one by one.")
        check_context(len(prompts[0]), config.max_new_tokens, decoder.max_positions)
        self.decoder, self.config = decoder, config
        self.prompts = [list(p) for p in prompts]
        self._features, self._image_token_id = list(features), image_token_id
        self.stop_ids = frozenset(config.stop_ids) | (frozenset() if config.ignore_eos else frozenset(eos_ids))
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.finish: list[str | None] = [None] * len(prompts)
        self.timings = Timings()

    def run(self) -> list[list[int]]:
        """Every row's tokens (a stop token included, as Generator); `finish` and `timings` are filled in."""
        t0 = time.perf_counter()
        rows = len(self.prompts)
        embeds = np.concatenate(
            [
                self.decoder.merge(np.asarray(p, dtype=np.int64), f, self._image_token_id)
                for p, f in zip(self.prompts, self._features)
            ]
        )
        self._features = []
        prompt_len = len(self.prompts[0])
        cache = self.decoder.new_cache(prompt_len, self.config.max_new_tokens, batch=rows)
        logits = self.decoder.advance(embeds, cache, 0)
        t1 = time.perf_counter()
        self.timings.prefill_s = t1 - t0
        rngs = [np.random.default_rng(self.config.seed) for _ in range(rows)]
        history = [list(p) if self.config.repetition_penalty != 1.0 else [] for p in self.prompts]
        last = [0] * rows
        while True:
            for r in range(rows):
                if self.finish[r] is not None:
                    continue
                token = process_logits(logits[r], history[r], self.config, rngs[r], self.tokens[r])
                self.tokens[r].append(token)
                if self.config.repetition_penalty != 1.0:
                    history[r].append(token)
                last[r] = token
                if token in self.stop_ids:
                    self.finish[r] = "stop"
                elif len(self.tokens[r]) >= self.config.max_new_tokens:
                    self.finish[r] = "length"
            if self.timings.first_token_s == 0.0:
                self.timings.first_token_s = time.perf_counter() - t0
            if all(f is not None for f in self.finish):
                break
            step = max(len(t) for t in self.tokens)
            embeds = self.decoder.embed_ids(np.array(last)).reshape(rows, 1, -1)
            logits = self.decoder.advance(embeds, cache, prompt_len + step - 1)
        self.timings.decode_s = time.perf_counter() - t1
        self.timings.new_tokens = max(len(t) for t in self.tokens)
        return self.tokens
