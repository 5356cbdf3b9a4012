"""The decoder's KV cache per answer: allocated once and updated in place (GroupQueryAttention's shared buffer), or
grown by feeding each step's output back (the traced decoder).

Why: the plain loop feeds last step's `present.*` back as `past_key_values.*`, and GroupQueryAttention then
allocates a new present and copies the whole past into it, every layer, every token. That copy grows with the
context: on the 256M decoder it cost 5 % of decode speed at an 80-token prompt and 30 % at 1,100 tokens (a split
image). Here each layer's past and present are one buffer of `capacity` positions, bound to both the input and the
output through IO binding, so the kernel writes only the new token's keys and values. The buffers live on the
session's device (CPU, or CUDA where that provider runs the decoder), so a GPU keeps its cache resident too.

The buffer grows by doubling (one copy, rare) so a large max_new_tokens does not reserve the whole context up
front: the 2.2B decoder's cache is 0.4 MB per position.
"""

from __future__ import annotations

import numpy as np

from ..errors import ContextLengthError

try:
    import onnxruntime as ort
except ImportError:  # providers.py raises the install hint
    ort = None

FIRST_EXTRA = 128  # positions reserved beyond the prompt before the first growth


def supported(decoder_session) -> bool:
    """The shared buffer needs a decoder that reads positions from the attention mask (edgevlm's fused
    GroupQueryAttention graph); the traced decoder (position_ids, Concat-grown cache) cannot update in place."""
    names = {i.name for i in decoder_session.get_inputs()}
    if "position_ids" in names or "past_key_values.0.key" not in names:
        return False
    return any(o.name == "present.0.key" for o in decoder_session.get_outputs())


def _device(decoder_session) -> tuple[str, int]:
    return ("cuda", 0) if decoder_session.get_providers()[0] == "CUDAExecutionProvider" else ("cpu", 0)


def _last_logits_buffer(session, batch: int) -> np.ndarray | None:
    """A (batch, 1, vocab) array for the logits of decoders that keep only the last position's (num_logits_to_keep,
    which Decoder feeds as 1 to every run of this cache); None where the shape is not known up front."""
    if "num_logits_to_keep" not in {i.name for i in session.get_inputs()}:
        return None
    out = next(o for o in session.get_outputs() if o.name == "logits")
    vocab = out.shape[-1] if out.shape else None
    if not isinstance(vocab, int):
        return None
    return np.zeros((batch, 1, vocab), dtype=np.float16 if "float16" in out.type else np.float32)


class SharedKVCache:
    """Past/present buffers (batch, kv_heads, capacity, head_dim) per layer, bound to one session's IO binding.
    The rows of a batch advance together (batch.py), so one capacity serves them all."""

    def __init__(
        self,
        session,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype,
        capacity: int,
        max_positions: int,
        batch: int = 1,
    ):
        self.session, self.num_layers, self.dtype, self.batch = session, num_layers, dtype, batch
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.max_positions = max_positions
        self.device = _device(session)
        self.binding = session.io_binding()
        # Logits are bound first (the first of the binding's outputs): into a reused array where their shape is
        # known, so each run writes there with no new array and no copy out of ONNX Runtime's.
        self._logits = _last_logits_buffer(session, batch)
        if self._logits is not None:
            self.binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits))
        else:
            self.binding.bind_output("logits", "cpu")
        self.capacity = 0
        self.buffers: list = []
        self._host: list[np.ndarray] = []  # on CPU the OrtValues share these arrays' memory
        self._feeds: list[np.ndarray] = []  # the bound numpy inputs must outlive the run that reads them
        self._resize(min(capacity, max_positions), keep=0)

    def _resize(self, capacity: int, keep: int) -> None:
        """New buffers of `capacity` positions holding the first `keep` positions of the old ones."""
        shape = (self.batch, self.kv_heads, capacity, self.head_dim)
        host, values = [], []
        for i in range(2 * self.num_layers):
            h = np.zeros(shape, dtype=self.dtype)
            if keep:
                h[:, :, :keep] = self.buffers[i].numpy()[:, :, :keep]
            host.append(h)
            values.append(ort.OrtValue.ortvalue_from_numpy(h, *self.device))
        self._host = host if self.device[0] == "cpu" else []
        self.buffers, self.capacity = values, capacity
        for layer in range(self.num_layers):
            for kind, value in (("key", values[2 * layer]), ("value", values[2 * layer + 1])):
                self.binding.bind_ortvalue_input(f"past_key_values.{layer}.{kind}", value)
                self.binding.bind_ortvalue_output(f"present.{layer}.{kind}", value)

    def run(self, feeds: dict[str, np.ndarray], past_len: int, new: int) -> np.ndarray:
        """One decoder run over `feeds` (`new` positions after `past_len` cached ones); each row's last-position
        logits (batch, vocab), copied (the output buffer is reused by the next run)."""
        total = past_len + new
        if total > self.capacity:
            if total > self.max_positions:
                raise ContextLengthError(
                    f"{total} positions exceed the model's context of {self.max_positions}; "
                    f"use a shorter prompt, fewer images or a lower max_new_tokens."
                )
            self._resize(min(max(2 * self.capacity, total), self.max_positions), keep=past_len)
        self._feeds = list(feeds.values())
        for name, value in feeds.items():
            self.binding.bind_cpu_input(name, value)
        self.session.run_with_iobinding(self.binding)
        if self._logits is not None:
            return self._logits[:, -1].copy()
        return self.binding.get_outputs()[0].numpy()[:, -1].copy()


class GrowingKVCache:
    """The traced decoder's loop (position_ids, a cache grown by Concat): each step's present.* becomes the next
    step's past_key_values.*."""

    def __init__(self, session, num_layers: int, kv_heads: int, head_dim: int, dtype, batch: int = 1):
        self.session, self.num_layers = session, num_layers
        self.output_names = [o.name for o in session.get_outputs()]
        self.values = [np.zeros((batch, kv_heads, 0, head_dim), dtype=dtype) for _ in range(2 * num_layers)]

    def outputs(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The run's logits (batch, kept positions, vocab); the cache grows by the new positions."""
        for i in range(self.num_layers):
            feeds[f"past_key_values.{i}.key"] = self.values[2 * i]
            feeds[f"past_key_values.{i}.value"] = self.values[2 * i + 1]
        out = self.session.run(self.output_names, feeds)
        self.values = out[1:]
        return out[0]

    def run(self, feeds: dict[str, np.ndarray], past_len: int, new: int) -> np.ndarray:
        return self.outputs(feeds)[:, -1]
