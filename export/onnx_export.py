"""Export the three ONNX parts (vision_encoder, embed_tokens, decoder_model_merged) in fp32.

The TorchScript exporter is used (dynamo=False): on transformers 4.57 / torch 2.13 it traces the Llama decoder with
a flat KV cache and dynamic lengths reliably, and it leaves no graph optimizer between PyTorch and the file (the
dynamo exporter's default optimizer silently changed the vision features here, see docs/design.md). Every part
is checked against PyTorch afterwards by `verify`, so a bad trace cannot go unnoticed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from edgevlm.engine.bundle_format import EXTERNAL_DATA_LIMIT, external_data

from .wrappers import Decoder, TokenEmbeddings, VisionEncoder

OPSET = 17
VISION = "vision_encoder"
EMBED = "embed_tokens"
DECODER = "decoder_model_merged"


def _export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    externalize_if_large(path)


def externalize_if_large(path: Path, limit: int = EXTERNAL_DATA_LIMIT) -> None:
    """Keep files under protobuf's 2 GB cap: move weights to `<name>.onnx_data` beside the graph when large."""
    import onnx

    if path.stat().st_size < limit and not external_data(path).exists():
        return
    model = onnx.load(str(path))
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=external_data(path).name,
        size_threshold=1024,
    )


def export_vision(model, out: Path) -> Path:
    cfg = model.config.vision_config
    tile = cfg.image_size
    pixels = torch.randn(1, 2, 3, tile, tile)
    mask = torch.ones(1, 2, tile, tile, dtype=torch.bool)
    mask[0, 1, tile // 2 :, :] = False  # a padded tile, so the masking path is traced
    path = out / f"{VISION}.onnx"
    _export(
        VisionEncoder(model).eval(),
        (pixels, mask),
        path,
        ["pixel_values", "pixel_attention_mask"],
        ["image_features"],
        {
            "pixel_values": {0: "batch_size", 1: "num_images", 3: "height", 4: "width"},
            "pixel_attention_mask": {0: "batch_size", 1: "num_images", 2: "height", 3: "width"},
            "image_features": {0: "num_tiles"},
        },
    )
    return path


def export_embed(model, out: Path) -> Path:
    path = out / f"{EMBED}.onnx"
    _export(
        TokenEmbeddings(model).eval(),
        (torch.tensor([[1, 2, 3]]),),
        path,
        ["input_ids"],
        ["inputs_embeds"],
        {
            "input_ids": {0: "batch_size", 1: "sequence_length"},
            "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
        },
    )
    return path


def export_decoder(model, out: Path) -> Path:
    tc = model.config.text_config
    layers, kv, hd = tc.num_hidden_layers, tc.num_key_value_heads, tc.hidden_size // tc.num_attention_heads
    hd = getattr(tc, "head_dim", None) or hd
    seq, past = 3, 2
    embeds = torch.randn(1, seq, tc.hidden_size)
    mask = torch.ones(1, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq)[None]
    past_kv = [torch.randn(1, kv, past, hd) for _ in range(2 * layers)]
    past_names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present_names = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    axes = {
        "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    axes.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names})
    axes.update({n: {0: "batch_size", 2: "total_sequence_length"} for n in present_names})
    path = out / f"{DECODER}.onnx"
    _export(
        Decoder(model).eval(),
        (embeds, mask, pos, *past_kv),
        path,
        ["inputs_embeds", "attention_mask", "position_ids", *past_names],
        ["logits", *present_names],
        axes,
    )
    return path


def load_reference(source: str | os.PathLike):
    """The PyTorch model in fp32 with eager attention (the reference every export is checked against)."""
    from transformers import SmolVLMForConditionalGeneration

    model = SmolVLMForConditionalGeneration.from_pretrained(
        str(source), torch_dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def export_text_parts(model, out: Path, fused: bool = True) -> dict[str, Path]:
    """The decoder and the token embeddings. `fused`: the decoder as a hand-built graph with GroupQueryAttention
    (faster, see decoder_graph.py); otherwise the traced, unfused decoder (with a position_ids input)."""
    out.mkdir(parents=True, exist_ok=True)
    if fused:
        from .decoder_graph import build_decoder

        decoder = build_decoder(model, out / f"{DECODER}.onnx")
    else:
        decoder = export_decoder(model, out)
    return {EMBED: export_embed(model, out), DECODER: decoder}


def export_fp32(model, out: Path, fused: bool = True) -> dict[str, Path]:
    """The three parts in fp32 from one loaded model."""
    out.mkdir(parents=True, exist_ok=True)
    return {VISION: export_vision(model, out), **export_text_parts(model, out, fused)}
