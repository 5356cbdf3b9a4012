"""W1 through OpenVINO (optimum-intel's own SmolVLM export), printed as a row of the benchmark table.

    optimum-cli export openvino -m CHECKPOINT --task image-text-to-text --weight-format int8 OV_DIR
    python benchmarks/compare_openvino.py CHECKPOINT OV_DIR [--runs 3]

Runs in an environment with optimum-intel[openvino] and transformers 4.57 (optimum-intel 2.2 refuses newer);
it does not import edgevlm. The prompt and image are W1's: the same question and the same synthetic 512x512
image as `edgevlm bench`, one tile (no splitting), 32 new tokens with end-of-sequence ignored.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
from PIL import Image

QUESTION = "Describe this image in one detailed sentence, mentioning colours and shapes."


def w1_image(size: int = 512) -> Image.Image:  # the same pixels as edgevlm.bench.w1_image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1), (xx ^ yy) & 255], -1)
    return Image.fromarray(np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("ov_dir")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--hint", default=None, help="INFERENCE_PRECISION_HINT, e.g. f32 (default: OpenVINO's)")
    a = p.parse_args()

    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoProcessor

    t = time.perf_counter()
    config = {"INFERENCE_PRECISION_HINT": a.hint} if a.hint else None
    model = OVModelForVisualCausalLM.from_pretrained(a.ov_dir, ov_config=config)
    load_s = time.perf_counter() - t
    processor = AutoProcessor.from_pretrained(a.checkpoint)
    processor.image_processor.do_image_splitting = False
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=text, images=[w1_image()], return_tensors="pt")
    gen = dict(do_sample=False, eos_token_id=None, pad_token_id=2)

    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        """Time of every put(): the first is the prompt, then one per generated token."""

        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def timed():
        stamps = Stamps()
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, streamer=stamps, **gen)
        end = time.perf_counter()
        new = out.shape[1] - inputs["input_ids"].shape[1]
        first = stamps.times[1]  # first generated token
        return first - t0, (new - 1) / (stamps.times[-1] - first), end - t0, new

    timed()  # warm-up
    runs = [timed() for _ in range(a.runs)]
    ttft, rate, e2e = (statistics.median(r[i] for r in runs) for i in range(3))
    n = runs[0][3]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"| OpenVINO int8 (optimum-intel, hint {a.hint or 'default'}) | — | — | {ttft * 1e3:.1f} | "
        f"{rate:.1f} | {e2e:.3f} | — | {rss:.0f} | — |"
    )
    print(f"load {load_s:.2f} s, prompt tokens {inputs['input_ids'].shape[1]}, new tokens {n}")


if __name__ == "__main__":
    main()
