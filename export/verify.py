"""Check every exported variant against the PyTorch model: greedy tokens and teacher-forced logits.

The ONNX side runs through the edgevlm runtime itself (its preprocessing, prompt and generation code), so a pass
means the shipped runtime reproduces transformers, not only that the graphs do. Inputs given to PyTorch are the
runtime's own input ids and pixel values; preprocessing parity with transformers' processor is tested separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Sample:
    name: str
    image: Image.Image | None
    split: bool
    question: str


def sample_inputs(tile: int) -> list[Sample]:
    """One image with splitting (a wide image: 4 tiles + global), one without, and text only."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : tile // 8, 0 : tile // 2]
    wide = np.stack([xx * 255 // xx.max(), yy * 255 // yy.max(), rng.integers(0, 255, xx.shape)], -1)
    square = rng.integers(0, 255, (96, 128, 3))
    return [
        Sample("image_split", Image.fromarray(wide.astype(np.uint8)), True, "What is in this image?"),
        Sample("image_no_split", Image.fromarray(square.astype(np.uint8)), False, "Describe this image."),
        Sample("text_only", None, False, "What is the capital of France?"),
    ]


@dataclass
class SampleReport:
    sample: str
    prompt_tokens: int
    reference_tokens: list[int]
    onnx_tokens: list[int]
    tokens_equal: bool
    greedy_agreement: float  # share of positions where the greedy tokens agree (until the first difference: 1.0)
    max_abs_logit_diff: float  # teacher-forced over prompt + reference continuation
    teacher_forced_top1: float  # share of positions where argmax agrees, teacher-forced


@dataclass
class Reference:
    """What PyTorch says for one sample; computed once and shared by every variant's check."""

    sample: Sample
    prompt_ids: list[int]
    new_tokens: list[int]
    full_ids: list[int]
    logits: np.ndarray  # teacher-forced over full_ids


def reference_outputs(model, processor, samples: list[Sample], max_new_tokens: int) -> list[Reference]:
    """Greedy continuation and teacher-forced logits from PyTorch, fed the runtime's own ids and pixels.

    `processor` (edgevlm.Processor) builds them without loading any ONNX part, so the exporter can compute the
    references, free the PyTorch model, and only then open the variants: the two never share memory (2.2B)."""
    import torch

    refs = []
    eos = processor.spec.eos_ids
    for sample in samples:
        prompt = processor.prepare(user_message(sample), split=sample.split)
        ids = torch.tensor([prompt.input_ids])
        kw = {}
        if sample.image is not None:
            pixels = processor.preprocess(sample.image, split=sample.split).pixel_values
            kw["pixel_values"] = torch.from_numpy(pixels[None])
            kw["pixel_attention_mask"] = torch.ones(
                1, pixels.shape[0], pixels.shape[2], pixels.shape[3], dtype=torch.bool
            )
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                **kw,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
            logits = model(input_ids=out, attention_mask=torch.ones_like(out), **kw).logits[0].float().numpy()
        refs.append(Reference(sample, prompt.input_ids, out[0, ids.shape[1] :].tolist(), out[0].tolist(), logits))
    return refs


def user_message(sample: Sample) -> list[dict]:
    from edgevlm import Engine

    return Engine.user_message(sample.image, sample.question)


def check_sample(vlm, ref: Reference, max_new_tokens: int) -> SampleReport:
    sample = ref.sample
    messages = user_message(sample)
    prompt = vlm.prepare(messages, split=sample.split)
    encoded = vlm.encode(prompt)
    ours = vlm.chat(messages, max_new_tokens=max_new_tokens, split=sample.split).token_ids
    agree = 0
    for a, b in zip(ref.new_tokens, ours):
        if a != b:
            break
        agree += 1
    onnx_logits = vlm.logits(ref.full_ids, encoded)
    return SampleReport(
        sample=sample.name,
        prompt_tokens=len(prompt.input_ids),
        reference_tokens=ref.new_tokens,
        onnx_tokens=ours,
        tokens_equal=ref.new_tokens == ours and prompt.input_ids == ref.prompt_ids,
        greedy_agreement=agree / max(len(ref.new_tokens), 1),
        max_abs_logit_diff=float(np.abs(onnx_logits - ref.logits).max()),
        teacher_forced_top1=float((onnx_logits.argmax(-1) == ref.logits.argmax(-1)).mean()),
    )


def verify_variants(
    refs: list[Reference],
    bundle_dir: Path,
    variants: list[str],
    max_new_tokens: int = 16,
    threads: int | None = None,
    log=print,
) -> dict[str, dict]:
    """Report per variant against PyTorch's `refs`. One variant is open at a time (each has its own vision
    cache, so its encoder runs once per sample), and it is released before the next opens."""
    import gc
    import time

    import edgevlm

    report = {}
    for v in variants:
        t = time.perf_counter()
        vlm = edgevlm.load(bundle_dir, variant=v, providers="cpu", threads=threads, verify=False)
        samples = [check_sample(vlm, r, max_new_tokens) for r in refs]
        own_kernels = dict(vlm.kernels)
        del vlm
        gc.collect()
        report[v] = {
            "variant": v,
            "all_tokens_equal": all(r.tokens_equal for r in samples),
            "max_abs_logit_diff": max(r.max_abs_logit_diff for r in samples),
            "min_teacher_forced_top1": min(r.teacher_forced_top1 for r in samples),
            "kernels": own_kernels,  # edgevlm's own kernels this machine ran (empty: ONNX Runtime's)
            "samples": [asdict(r) for r in samples],
        }
        log(
            f"verified {v}: tokens equal={report[v]['all_tokens_equal']} max|dlogit|="
            f"{report[v]['max_abs_logit_diff']:.2e} in {time.perf_counter() - t:.1f} s"
        )
    return report


def teacher_forced_agreement(
    bundle_dir: Path, variants: list[str], text: str, baseline: str = "fp32", threads: int | None = None
) -> dict[str, float]:
    """Top-1 agreement of each variant's next-token predictions with the baseline's, over `text`.

    Used on a checkpoint with a trained decoder, where agreement measures what quantization costs.
    """
    import edgevlm

    preds = {}
    for v in [baseline, *variants]:
        vlm = edgevlm.load(bundle_dir, variant=v, providers="cpu", threads=threads, verify=False)
        preds[v] = vlm.logits(vlm.tokenizer.encode(text)).argmax(-1)
    return {v: float((preds[v] == preds[baseline]).mean()) for v in variants}
