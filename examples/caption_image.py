"""Caption an image, ask follow-up questions about it (encoded once), and stream an answer.

python examples/caption_image.py BUNDLE IMAGE
"""

import sys

import edgevlm


def main(bundle: str, image: str) -> None:
    vlm = edgevlm.load(bundle, variant="mixed", threads=2)  # the fastest on CPUs (docs/benchmarks.md)
    r = vlm.caption(image, max_new_tokens=48)
    print(
        f"{r.text}\n  ({r.tiles} tiles, vision {r.vision_ms:.0f} ms, prefill {r.prefill_ms:.0f} ms, "
        f"{r.decode_tokens_per_s:.0f} tok/s)"
    )
    r = vlm.ask(image, "What colours dominate?", max_new_tokens=32)  # the image encoding comes from the cache
    print(f"{r.text}  (cached images: {r.cached_images}, vision {r.vision_ms:.0f} ms)")
    for piece in vlm.stream(image, "Is there any text in the image?", max_new_tokens=32, split=False):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
