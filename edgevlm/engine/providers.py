"""ONNX Runtime sessions: execution-provider choice, thread and memory options, silent-fallback detection."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import EdgeVLMError, ModelError

try:
    import onnxruntime as ort
except ImportError:  # the core package names no ONNX Runtime wheel: [cpu] and [gpu] cannot be installed together
    raise EdgeVLMError(
        "ONNX Runtime is not installed: pip install 'edgevlm[cpu]' (or 'edgevlm[gpu]' for CUDA; from a "
        "checkout: pip install '.[cpu]')."
    ) from None

log = logging.getLogger("edgevlm")

# Most capable first; CPU always last. Used when the caller names no providers. OpenVINO's provider is not in it:
# with default options it ran the vision encoder 1.7-3.9x slower than the CPU provider on an AVX-512 AMD CPU and
# 1.4-2.7x slower on an Intel CPU with AMX (docs/benchmarks.md), so it is used only when asked for ("openvino").
AUTO_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)
ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def available() -> list[str]:
    return list(ort.get_available_providers())


def choose(providers: Sequence[str] | str | None) -> list[str]:
    """Resolve user names ("cuda", "cpu", full EP names) or pick the automatic order from what is installed."""
    here = available()
    if providers is None or providers == "auto":
        return [p for p in AUTO_ORDER if p in here] or ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    chosen = []
    for p in providers:
        name = ALIASES.get(p.lower(), p)
        if name not in here:
            raise ModelError(
                f"execution provider {p!r} is not available in this onnxruntime build (available: "
                f"{', '.join(here)}). Install onnxruntime-gpu for CUDA, or choose one of those."
            )
        chosen.append(name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(threads: int | None, memory_arena: bool, spin: bool = True) -> ort.SessionOptions:
    """spin=False for the parts that run once per image or per token (vision encoder, token embeddings): each
    session has its own worker threads, and workers that spin after a run take the cores from the decoder that
    runs next (W1 prefill 81-90 -> 56-58 ms, W1 0.58-0.59 -> 0.56 s on 2 cores; docs/benchmarks.md). The decoder
    keeps spinning: its many small ops per token need the workers awake (without: 185 -> 120 tok/s). But it stops
    the moment a run returns with none to follow (session.force_spinning_stop), so the next image is resized on
    free cores (W1 mixed vision+resize 352 -> 336 ms per tile, 3 alternating pairs, decode unchanged)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = memory_arena
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def vision_run_options(providers: list[str], memory_arena: bool) -> ort.RunOptions:
    """The vision encoder's activations (~130 MB for one 512 tile at 256M) go back to the OS after each run, so
    they and the decoder's never add up in the peak: -134 MB peak RSS for `mixed` on W1, no measurable time cost
    (docs/benchmarks.md)."""
    ro = ort.RunOptions()
    if memory_arena and providers and providers[0] == "CPUExecutionProvider":
        ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ro


def create_session(
    path: Path, providers: list[str], options: ort.SessionOptions
) -> tuple[ort.InferenceSession, list[str]]:
    """Open one part; return the session and the providers it actually runs on.

    onnxruntime drops a provider it cannot initialise (missing CUDA libraries, say) and carries on with the CPU
    without raising; we compare what was asked with what was given and warn.
    """
    try:
        sess = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, NoSuchFile ...)
        raise ModelError(
            f"onnxruntime could not load {path.name}: {str(e).splitlines()[0]}. The file may be "
            f"damaged or need a newer onnxruntime."
        ) from None
    got = sess.get_providers()
    missing = [p for p in providers if p not in got]
    if missing:
        log.warning(
            "%s: requested %s but onnxruntime runs it on %s (fell back)", path.name, ", ".join(missing), ", ".join(got)
        )
    return sess, got
