"""torch modules shaped like Hugging Face's official SmolVLM2 ONNX parts, ready for torch.onnx.export.

Why wrappers instead of exporting the model's own methods:
- get_image_features drops all-zero (padding) tiles with data-dependent indexing and its position-id code uses a
  per-image Python loop with bucketize, which the exporters mis-handle (see shared/reference/smolvlm2.md). The
  vision wrapper computes the same position ids in a vectorised, export-safe way.
- the decoder takes and returns the KV cache as flat tensors (past_key_values.{i}.key / .value ->
  present.{i}.key / .value), the layout transformers.js and our runtime read.
"""

from __future__ import annotations

import torch
from torch import nn


class VisionEncoder(nn.Module):
    """pixel_values (B, N, 3, H, W) float32 + pixel_attention_mask (B, N, H, W) bool -> (B*N, seq, text_hidden)."""

    def __init__(self, model):
        super().__init__()
        smol = model.model
        self.vision = smol.vision_model
        self.connector = smol.connector
        cfg = smol.config.vision_config
        self.patch = cfg.patch_size
        self.per_side = cfg.image_size // cfg.patch_size

    def position_ids(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """NaViT-style ids: fractional patch coordinates bucketed into `per_side` buckets, 0 where padded.

        Real patches always form a top-left rectangle (the processor pads bottom/right), so the id at (r, c) is
        bucket(r, rows) * per_side + bucket(c, cols), as the reference's per-image loop assigns them. The reference
        counts the boundaries k/per_side <= r/rows * (1 - 1e-6); the 1e-6 margin makes that
        max(ceil(r * per_side / rows) - 1, 0), computed here in integers: exact, export-safe, and immune to fp16
        conversion.
        """
        n, ph, pw = patch_mask.shape
        rows = patch_mask[:, :, 0].to(torch.int64).sum(-1, keepdim=True).clamp(min=1)  # (n, 1)
        cols = patch_mask[:, 0, :].to(torch.int64).sum(-1, keepdim=True).clamp(min=1)
        h = torch.arange(ph, device=patch_mask.device)[None, :]
        w = torch.arange(pw, device=patch_mask.device)[None, :]
        bh = ((h * self.per_side + rows - 1) // rows - 1).clamp(min=0)  # (n, ph)
        bw = ((w * self.per_side + cols - 1) // cols - 1).clamp(min=0)  # (n, pw)
        ids = bh[:, :, None] * self.per_side + bw[:, None, :]
        return torch.where(patch_mask, ids, torch.zeros_like(ids)).reshape(n, ph * pw)

    def forward(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor) -> torch.Tensor:
        b, n, c, height, width = pixel_values.shape
        pixels = pixel_values.reshape(b * n, c, height, width)
        ph, pw = height // self.patch, width // self.patch  # the conv and the reference's unfold drop remainders
        mask = pixel_attention_mask.reshape(b * n, height, width)[:, : ph * self.patch, : pw * self.patch]
        mask = mask.reshape(b * n, ph, self.patch, pw, self.patch)
        patch_mask = mask.to(torch.int32).sum(dim=(2, 4)) > 0  # (bn, ph, pw)

        emb = self.vision.embeddings
        x = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = x + emb.position_embedding(self.position_ids(patch_mask))

        flat = patch_mask.reshape(b * n, -1)
        min_value = torch.finfo(x.dtype).min
        attn = torch.where(
            flat[:, None, None, :], torch.zeros((), dtype=x.dtype), torch.full((), min_value, dtype=x.dtype)
        )
        x = self.vision.encoder(inputs_embeds=x, attention_mask=attn).last_hidden_state
        x = self.vision.post_layernorm(x)
        return self.connector(x)


class TokenEmbeddings(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.model.text_model.embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class Decoder(nn.Module):
    """inputs_embeds, attention_mask, position_ids, past (flat) -> logits, present (flat)."""

    def __init__(self, model):
        super().__init__()
        self.text = model.model.text_model
        self.lm_head = model.lm_head
        self.num_layers = self.text.config.num_hidden_layers

    @staticmethod
    def causal_mask(attention_mask: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Additive (B, 1, q, total) mask: causal over the cache plus the caller's padding mask.

        Built here because transformers' own mask builder (vmap-based) does not trace; a 4-D mask is passed
        through by transformers unchanged.
        """
        q, total = inputs_embeds.shape[1], attention_mask.shape[1]
        kpos = torch.arange(total, device=inputs_embeds.device)[None, :]
        qpos = torch.arange(q, device=inputs_embeds.device)[:, None] + (total - q)
        allowed = (kpos <= qpos)[None, None] & attention_mask[:, None, None, :].bool()
        zero = torch.zeros((), dtype=inputs_embeds.dtype)
        return torch.where(
            allowed, zero, torch.full((), torch.finfo(inputs_embeds.dtype).min, dtype=inputs_embeds.dtype)
        )

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.text(
            inputs_embeds=inputs_embeds,
            attention_mask=self.causal_mask(attention_mask, inputs_embeds),
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        logits = self.lm_head(out.last_hidden_state)
        present = []
        for i in range(self.num_layers):
            layer = out.past_key_values.layers[i]
            present += [layer.keys, layer.values]
        return (logits, *present)
