"""Fixtures for the C++ tests, made with the Python runtime (the reference the C API must equal):

    python make_fixtures.py OUT_DIR

- tiny 256M and 2.2B checkpoints (random weights, real geometry) exported as fp32 and q4 bundles;
- prompt cases (image with and without splitting, two images, text only, system + multi-turn) with the Python
  runtime's prompt ids, greedy tokens and text;
- 2,000+ strings with their token ids and decoded text; 24 image sizes with their pixel values (.u8 files
  of codes into a table of floats);
- an altered copy of a bundle (one byte changed) for the checksum test.
Made once per OUT_DIR (a `done` file marks a complete set of this format).
"""

from __future__ import annotations

import json
import platform
import random
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DONE = "format 2\n"  # what `done` holds; a set made in another format (1: pixel values as .f32) is made again

SIZES = [
    (1, 1),
    (3, 500),
    (500, 3),
    (17, 29),
    (100, 100),
    (224, 224),
    (383, 385),
    (384, 384),
    (511, 512),
    (512, 512),
    (513, 512),
    (640, 480),
    (480, 640),
    (700, 300),
    (300, 700),
    (768, 1024),
    (1024, 768),
    (1000, 40),
    (40, 1000),
    (1200, 900),
    (333, 777),
    (801, 601),
    (96, 128),
    (257, 1031),
]


def image(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255) // max(w - 1, 1), (yy * 255) // max(h - 1, 1), (xx + yy) % 256], -1)
    noise = rng.integers(-40, 40, (h, w, 3))
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    if channels == 4:
        alpha = rng.integers(0, 256, (h, w, 1)).astype(np.uint8)
        alpha[: h // 3] = 255
        alpha[h // 3 : h // 2] = 0
        return np.concatenate([rgb, alpha], -1)
    return rgb


def save_image(out: Path, name: str, a: np.ndarray) -> dict:
    a.tofile(out / f"{name}.raw")
    return {"file": f"{name}.raw", "width": a.shape[1], "height": a.shape[0], "channels": a.shape[2]}


def pixel_codes(values: np.ndarray, path: Path) -> list[float]:
    """Writes `values` as one byte per value into a table of its distinct floats, which the function returns: a
    lossless 4x saving (pixels are rescaled 8-bit values, at most 256 of them), so that CI's disk holds the split
    cases (up to 17 tiles of 512 x 512 each) twice, for x86 and for aarch64."""
    table, codes = np.unique(values.astype(np.float32), return_inverse=True)
    if len(table) > 256:
        raise ValueError(f"{path.name}: {len(table)} distinct pixel values; the fixture format holds at most 256")
    codes.astype(np.uint8).tofile(path)
    return [float(v) for v in table]  # float32 -> double is exact, and so is JSON's round trip of a double


def strings(seed: int = 0, n: int = 2200) -> list[str]:
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyz",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " ",
        "  \t\n\r",
        ".,;:!?'\"-()[]{}",
        "éèàçüößñøåÆŒ",
        "αβγδεζηθλμπσω",
        "абвгдежзийклмн",
        "你好世界中文字符测试",
        "こんにちはカタカナ",
        "한국어텍스트",
        "مرحبابالعالم",
        "שלוםעולם",
        "😀😃🎉👍🏽🚀🇫🇷👨‍👩‍👧",
        "٠١٢٣٤٥٦٧٨٩",
        "①②③½¼",
        "\u00a0\u2003\u3000",
        "\u0301\u0308",
        "'s'll've're",
        "<>&%$#@*+=/\\|~^`_",
    ]
    specials = [
        "<|im_start|>",
        "<|im_end|>",
        "<end_of_utterance>",
        "<|endoftext|>",
        "<row_1_col_1>",
        "<fake_token_around_image>",
        "<global-img>",
        "<image>",
    ]
    out = [
        "",
        " ",
        "  ",
        "\n\n",
        "Hello world",
        "What is the capital of France?",
        "12345678901234567890",
        "don't you'll we've they're I'm",
        "a\u00a0b",
        "tab\there",
        "   leading",
        "trailing   ",
        "x" * 300,
    ]
    while len(out) < n:
        k = rng.randint(1, 40)
        s = "".join(rng.choice(rng.choice(pools)) for _ in range(k))
        if rng.random() < 0.2:
            at = rng.randint(0, len(s))
            s = s[:at] + rng.choice(specials) + s[at:]
        out.append(s)
    return out


def cases(out: Path) -> list[dict]:
    """Prompt cases as messages whose images refer to raw files; the same for both architectures."""
    a = save_image(out, "case_a", image(300, 420, 5))
    b = save_image(out, "case_b", image(640, 200, 6))
    c = save_image(out, "case_c", image(96, 128, 7))
    return [
        {
            "name": "image_split",
            "split": 1,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": a}, {"type": "text", "text": "Describe this image."}],
                }
            ],
        },
        {
            "name": "image_no_split",
            "split": 0,
            "messages": [
                {"role": "user", "content": [{"type": "image", "image": b}, {"type": "text", "text": "What is this?"}]}
            ],
        },
        {
            "name": "two_images",
            "split": 1,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image", "image": c},
                        {"type": "text", "text": "with"},
                        {"type": "image", "image": b},
                        {"type": "text", "text": "please."},
                    ],
                }
            ],
        },
        {
            "name": "text_only",
            "split": -1,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is the capital of France? Answer: 42 ✓"}]}
            ],
        },
        {
            "name": "system_multiturn",
            "split": 0,
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "You are a careful assistant."}]},
                {
                    "role": "user",
                    "content": [{"type": "image", "image": c}, {"type": "text", "text": "Hi, what is here?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "A picture with 3 colours."}]},
                {"role": "user", "content": [{"type": "text", "text": "Tell me more, in détail."}]},
            ],
        },
    ]


def python_messages(out: Path, case: dict) -> list[dict]:
    msgs = []
    for m in case["messages"]:
        content = []
        for item in m["content"]:
            if item["type"] == "text":
                content.append(item)
            else:
                info = item["image"]
                a = np.fromfile(out / info["file"], dtype=np.uint8).reshape(
                    info["height"], info["width"], info["channels"]
                )
                content.append(
                    {"type": "image", "image": a, **({} if case["split"] < 0 else {"split": bool(case["split"])})}
                )
        msgs.append({"role": m["role"], "content": content})
    return msgs


def main() -> None:
    out = Path(sys.argv[1]).absolute()
    done = out / "done"
    if done.exists() and done.read_text() == DONE:  # before the exporter's imports: a runtime-only Python reuses them
        return
    from edgevlm_export.pipeline import export

    import edgevlm
    from tools.checkpoints import make_checkpoint

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # The machine matters where its kernels round differently (test_parity, run on aarch64 with x86's fixtures).
    expected: dict = {"machine": platform.machine(), "bundles": {}, "cases": cases(out)}
    for arch in ("256M", "2.2B"):
        ckpt = make_checkpoint(out / f"ckpt-{arch}", arch=arch, size="tiny", seed=0)
        bundle = out / f"bundle-{arch}"
        export(ckpt, bundle, "fp32,q4", log=lambda m: None)
        entry = expected["bundles"][arch] = {"path": str(bundle), "variants": {}}
        for variant in ("fp32", "q4"):
            vlm = edgevlm.load(bundle, variant=variant, threads=1)
            # edgevlm's own kernels Python runs here: the C library must make the same choice (test_parity)
            # (evlm_model_kernels' order: the vision encoder's, then the decoder's)
            entry.setdefault("kernels", {})[variant] = ",".join(
                vlm.kernels[part] for part in ("vision_encoder", "decoder_model_merged") if part in vlm.kernels
            )
            rows = entry["variants"][variant] = {}
            for case in expected["cases"]:
                msgs = python_messages(out, case)
                result = vlm.chat(msgs, max_new_tokens=12)
                rows[case["name"]] = {
                    "prompt_ids": vlm.prepare(msgs).input_ids,
                    "tokens": result.token_ids,
                    "text": result.text,
                }
        vlm = edgevlm.load(bundle, variant="fp32", threads=1)
        penalty = entry["penalty"] = {"repetition_penalty": 1.3, "rows": {}}
        for case in expected["cases"]:
            if case["name"] in ("text_only", "image_no_split"):
                msgs = python_messages(out, case)
                result = vlm.chat(msgs, max_new_tokens=12, repetition_penalty=penalty["repetition_penalty"])
                penalty["rows"][case["name"]] = {
                    "prompt_ids": vlm.prepare(msgs).input_ids,
                    "tokens": result.token_ids,
                    "text": result.text,
                }
        pre = entry["preprocess"] = []
        for i, (w, h) in enumerate(SIZES):
            channels = 4 if i % 6 == 5 else 3
            img = image(w, h, 100 + i, channels)
            info = save_image(out, f"pre_{arch}_{i}", img)
            for split in (True, False):
                p = vlm.preprocess(img, split=split)
                name = f"pre_{arch}_{i}_{int(split)}.u8"
                table = pixel_codes(p.pixel_values, out / name)
                pre.append(
                    {
                        **info,
                        "split": int(split),
                        "values": name,
                        "table": table,
                        "tiles": int(p.pixel_values.shape[0]),
                        "rows": p.rows,
                        "cols": p.cols,
                    }
                )
    vlm = edgevlm.load(out / "bundle-256M", variant="fp32", threads=1)
    tok = expected["tokenizer"] = []
    for s in strings():
        for add in (False, True):
            ids = vlm.tokenizer.encode(s, add)
            tok.append({"text": s, "add_special": add, "ids": ids, "decoded": vlm.tokenizer.decode(ids)})
    altered = out / "bundle-altered"
    shutil.copytree(out / "bundle-256M", altered)
    emb = altered / "onnx" / "embed_tokens.onnx"
    data = bytearray(emb.read_bytes())
    data[-10] ^= 0xFF
    emb.write_bytes(bytes(data))
    (out / "expected.json").write_text(json.dumps(expected, ensure_ascii=False))
    done.write_text(DONE)


if __name__ == "__main__":
    main()
