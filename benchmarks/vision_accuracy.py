"""Vision encoder files against the bundle's fp32 encoder on real photos: the minimum and mean token cosine of the
image features, and ms per tile, alternating in one process (this machine's speed drifts between runs).

    python benchmarks/vision_accuracy.py BUNDLE PHOTO [PHOTO ...] [--variants int8,fp16] [--files X.onnx ...]

The issue's guard for an int8 vision recipe is a minimum cosine of 0.999. Any real pictures do; docs/benchmarks.md
used the photos in scikit-image's wheel (`pip download --no-deps scikit-image`, then unzip `skimage/data/*.png`).
Each photo is split as the model splits it (its tiles and the global view), so a few photos give many tiles.
`--files` adds encoder files that are not in the bundle (an experimental recipe). `--kernels` adds each variant
again as the runtime builds it with edgevlm's own kernels (engine/kernels.py), where they apply on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line

from edgevlm.engine import kernels
from edgevlm.engine.bundle import open_bundle
from edgevlm.engine.preprocess import process_image
from edgevlm.engine.providers import session_options


def feed(tile: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "pixel_values": tile[None, None].astype(np.float32),
        "pixel_attention_mask": np.ones((1, 1, *tile.shape[1:]), bool),
    }


def token_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("photos", nargs="+")
    p.add_argument("--variants", default="int8")
    p.add_argument("--files", nargs="*", default=[])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kernels", action="store_true", help="also each variant on edgevlm's own kernels")
    a = p.parse_args()
    bundle = open_bundle(a.bundle)
    tiles = [t for photo in a.photos for t in process_image(photo, bundle.spec, split=True).pixel_values]

    def session(path: Path, own_kernels: bool = False) -> ort.InferenceSession:
        options = session_options(a.threads, True, spin=False)
        if own_kernels:
            options.register_custom_ops_library(str(kernels.library()))
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    reference = session(bundle.part_files("fp32")["vision_encoder"])
    expected = [reference.run(None, feed(t))[0] for t in tiles]
    del reference
    files = {v: bundle.part_files(v)["vision_encoder"] for v in a.variants.split(",") if v} | {
        Path(f).name: Path(f) for f in a.files
    }
    sessions = {name: session(path) for name, path in files.items()}
    if a.kernels:
        for name, path in files.items():
            graph = bundle.kernel_graphs.get(path)
            if graph is not None and graph.is_file():
                sessions[f"{name} + edgevlm kernels"] = session(graph, own_kernels=True)
    print(f"edgevlm kernels: {kernels.status()}")
    print(f"{cpu_line()} · {a.threads} threads · {len(a.photos)} photos, {len(tiles)} tiles\n")
    for s in sessions.values():
        s.run(None, feed(tiles[0]))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(a.rounds):  # alternating, the order reversed every other round
        for name, s in list(sessions.items()) if r % 2 else list(sessions.items())[::-1]:
            t = time.perf_counter()
            s.run(None, feed(tiles[0]))
            times[name].append(1e3 * (time.perf_counter() - t))
    print("| encoder | min token cosine | mean token cosine | ms/tile per round | median ms/tile |")
    print("|---|---|---|---|---|")
    for name, s in sessions.items():
        cos = np.concatenate([token_cosines(s.run(None, feed(t))[0], e) for t, e in zip(tiles, expected)])
        per_round = " / ".join(f"{v:.0f}" for v in times[name])
        print(f"| {name} | {cos.min():.5f} | {cos.mean():.6f} | {per_round} | {statistics.median(times[name]):.1f} |")


if __name__ == "__main__":
    main()
