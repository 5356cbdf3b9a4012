"""`edgevlm export`: checkpoint -> verified, quantized ONNX bundle.

The bundle is written into a temporary folder beside the destination and renamed into place only when every
step (export, quantization, verification, manifest) succeeded, so a failure never leaves a half-written bundle.
"""

from __future__ import annotations

import datetime as _dt
import errno
import gc
import json
import os
import platform
import resource
import shutil
import struct
import tempfile
import time
from importlib import metadata
from pathlib import Path

from edgevlm import Processor
from edgevlm.engine.bundle_format import CONFIG_FILES, RECIPES, SUFFIXES, VARIANTS, recipe_files, write_manifest
from edgevlm.errors import EdgeVLMError

from . import fp32_checkpoint, kernel_graphs, onnx_export, quantize, verify, vision_fusion
from .architectures import identify


class ExportError(EdgeVLMError):
    exit_code = 4


def parse_variants(spec: str | None) -> list[str]:
    names = [v.strip() for v in (spec or ",".join(VARIANTS)).split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise ExportError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}.")
    if "fp32" not in names:
        names.insert(0, "fp32")  # the reference every other variant is verified against
    return names


def fetch_source(source: str, revision: str | None = None) -> Path:
    """A local checkpoint folder, or a hub id downloaded (weights and configs) with huggingface_hub."""
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{source} is a file; pass the checkpoint folder (with config.json and weights).")
        return path
    parts = source.split("/")
    if len(parts) != 2 or not all(parts) or source.startswith((".", "/", "~")):
        raise ExportError(
            f"{source} does not exist; pass a local checkpoint folder or a hub id like "
            f"HuggingFaceTB/SmolVLM2-256M-Video-Instruct."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                source, revision=revision, allow_patterns=["*.json", "*.jinja", "*.safetensors", "*.txt", "*.model"]
            )
        )
    except Exception as e:  # offline, unknown repo, auth ...
        raise ExportError(
            f"could not download {source} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"download the checkpoint elsewhere and pass its folder."
        ) from None


def check_checkpoint(path: Path) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{path} has no config.json; it is not a transformers checkpoint folder.")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{cfg_path} is not valid JSON ({e}).") from None
    if config.get("model_type") != "smolvlm":
        raise ExportError(
            f"{path} is a {config.get('model_type')!r} checkpoint, not SmolVLM (model_type "
            f"'smolvlm'); edgevlm exports SmolVLM2 checkpoints only."
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ExportError(f"{path} has no weights (*.safetensors).")
    if not (path / "tokenizer.json").is_file():
        raise ExportError(f"{path} has no tokenizer.json; the runtime needs the fast tokenizer file.")
    return config


def load_model(path: Path):
    try:
        return onnx_export.load_reference(path)
    except Exception as e:  # safetensors / torch raise many types for damaged weights
        raise ExportError(
            f"could not load the weights in {path} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}); the files look corrupt or "
            f"incomplete. Re-download or re-save the checkpoint."
        ) from None


def export_fp32(weights: Path, onnx_dir: Path, log) -> dict[str, Path]:
    """The fp32 parts, each stage from its own lazily loaded model that is dropped before the next: the text
    weights and the vision trace never share memory (2.2B: 6.8 GB and 2 x 1.7 GB)."""
    t = time.perf_counter()
    model = load_model(weights)
    parts = onnx_export.export_text_parts(model, onnx_dir)
    del model
    gc.collect()
    log(
        f"exported the fp32 decoder and embeddings in {time.perf_counter() - t:.1f} s (peak RSS {peak_rss_mb():.0f} MB)"
    )
    t = time.perf_counter()
    model = load_model(weights)
    parts[onnx_export.VISION] = onnx_export.export_vision(model, onnx_dir)
    heads = model.config.vision_config.num_attention_heads
    del model
    gc.collect()
    fused = vision_fusion.fuse_file(parts[onnx_export.VISION], heads)
    log(
        f"exported the fp32 vision encoder in {time.perf_counter() - t:.1f} s (peak RSS {peak_rss_mb():.0f} MB); "
        f"fused {fused['attention']} attention and {fused['gelu']} GELU blocks "
        f"({fused['attention_unfused']} and {fused['gelu_unfused']} left as traced)"
    )
    return parts


def fp32_weights(src: Path, work: Path, log) -> Path:
    """The checkpoint itself when its weights are fp32 safetensors (transformers then maps them lazily), else an
    fp32 copy under `work` (see fp32_checkpoint.py)."""
    t = time.perf_counter()
    try:
        if not any(src.glob("*.safetensors")) or fp32_checkpoint.is_fp32(src):
            return src
        copy = fp32_checkpoint.fp32_copy(src, work / "fp32-checkpoint")
    except (ValueError, KeyError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(
            f"could not read the weights in {src} ({type(e).__name__}: {e}); the files look corrupt "
            f"or incomplete. Re-download or re-save the checkpoint."
        ) from None
    log(f"converted the checkpoint's weights to fp32 in {time.perf_counter() - t:.1f} s")
    return copy


def quantize_parts(fp32: dict[str, Path], onnx_dir: Path, variants: list[str], log) -> dict[str, dict]:
    """The quantized files the chosen variants need, each made from the saved fp32 file (no model in memory);
    return per-file facts."""
    facts: dict[str, dict] = {}
    for part, path in fp32.items():
        facts[f"{part}:fp32"] = {"path": path, "ops": quantize.op_counts(path)}
    needed = {(part, prec) for v in variants for part, prec in RECIPES[v].items() if prec != "fp32"}
    for part, prec in sorted(needed):
        src, dst = fp32[part], onnx_dir / f"{part}{SUFFIXES[prec]}.onnx"
        t = time.perf_counter()
        if prec == "fp16":
            ops = quantize.to_fp16(src, dst)
        elif prec == "int8":
            ops = quantize.to_int8(src, dst, part)
        else:
            ops = quantize.to_q4(src, dst, part)
        gc.collect()
        log(
            f"{part} {prec}: {quantize.file_size(dst) / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s (peak RSS "
            f"{peak_rss_mb():.0f} MB)"
        )
        facts[f"{part}:{prec}"] = {"path": dst, "ops": ops}
    return facts


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("edgevlm", "torch", "transformers", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def manifest_fields(
    source: str, config: dict, variants: dict[str, dict[str, str]], facts: dict, report: dict, stats: dict
) -> dict:
    """What the exporter records beside the format's own keys (edgevlm.engine.bundle_format writes the file)."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "architecture": identify(config) or "custom",
        "model": {
            "image_token_id": config.get("image_token_id"),
            "scale_factor": config.get("scale_factor"),
            "vision": {
                k: config["vision_config"].get(k)
                for k in ("image_size", "patch_size", "hidden_size", "num_hidden_layers")
            },
            "text": {
                k: config["text_config"].get(k)
                for k in (
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "vocab_size",
                    "max_position_embeddings",
                )
            },
        },
        "variants": variants,
        "quantization": {
            key: {
                "ops": {
                    k: n
                    for k, n in f["ops"].items()
                    if k
                    in (
                        "MatMul",
                        "MatMulInteger",
                        "DynamicQuantizeMatMul",
                        "MatMulNBits",
                        "Gather",
                        "GatherBlockQuantized",
                        "DequantizeLinear",
                        "GroupQueryAttention",
                        "MultiHeadAttention",
                        "If",
                        "FastGelu",
                        "Softmax",
                        "Tanh",
                    )
                }
            }
            for key, f in facts.items()
        },
        "verification": report,
        "export_stats": stats,
        "tools": _tool_versions(),
    }


def _readable_by_all(root: Path) -> None:
    """mkdtemp makes the folder 0700 and ONNX writes external weight files 0600; a bundle is shared (services,
    other users), so give everything the permissions a plain mkdir / open would have under the current umask."""
    umask = _current_umask()
    root.chmod(0o777 & ~umask)
    for p in root.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _current_umask() -> int:
    """The umask, read without setting it (Linux 4.7+ reports it in /proc/self/status): os.umask(0) would change it
    for every thread of the process while we look."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)  # no /proc: the only portable way, set back at once
    os.umask(umask)
    return umask


def _disk_full(out: Path) -> ExportError:
    return ExportError(
        f"the disk under {out.parent} is full; free space or choose another output folder. Nothing was written."
    )


def export(
    source: str,
    out_dir: str | os.PathLike,
    variants: str | list[str] | None = None,
    force: bool = False,
    max_new_tokens: int = 16,
    threads: int | None = None,
    revision: str | None = None,
    log=print,
) -> dict:
    """Export `source` to a bundle at `out_dir`; return the manifest. Raises ExportError with a clear message."""
    names = parse_variants(variants if isinstance(variants, str) or variants is None else ",".join(variants))
    out = Path(out_dir).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out} already exists and is not empty; choose another folder or pass --force.")
    src = fetch_source(str(source), revision)
    src_real, out_real = src.resolve(), out.resolve()
    if out_real == src_real or out_real in src_real.parents:
        raise ExportError(
            f"the output folder {out} holds the checkpoint being exported ({src}); --force would "
            f"delete it. Choose an output folder outside the checkpoint."
        )
    config = check_checkpoint(src)
    t0 = time.perf_counter()
    try:  # before the model loads: a target that cannot be written fails in a moment
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        work = tmp.parent / f"{tmp.name}.work"  # an fp32 copy of a bf16 checkpoint, beside the bundle
    except OSError as e:
        raise ExportError(
            f"cannot write the bundle under {out.parent} ({e.strerror}); choose a folder you can "
            f"write to. Nothing was written."
        ) from None
    try:
        # Memory plan (docs/design.md, "Export within memory"): the PyTorch model and an ONNX Runtime session of
        # the same weights are never alive together, and no part's weights exist twice.
        for name in CONFIG_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        variant_files = recipe_files(names)
        # Provisional manifest (no checksums yet) so the runtime's processor and variants open the folder.
        write_manifest(tmp, {"variants": variant_files}, with_files=False)
        weights = fp32_weights(src, work, log)
        model = load_model(weights)
        t = time.perf_counter()
        processor = Processor.open(tmp)
        refs = verify.reference_outputs(model, processor, verify.sample_inputs(processor.spec.tile), max_new_tokens)
        del model
        gc.collect()
        log(f"PyTorch reference outputs in {time.perf_counter() - t:.1f} s (peak RSS {peak_rss_mb():.0f} MB)")
        fp32 = export_fp32(weights, tmp / "onnx", log)
        shutil.rmtree(work, ignore_errors=True)  # the fp32 copy, if one was made
        facts = quantize_parts(fp32, tmp / "onnx", names, log)
        graphs = kernel_graphs.write_kernel_graphs(tmp / "onnx", variant_files)
        if graphs:  # the provisional manifest names them, so verification runs what this machine will run
            write_manifest(tmp, {"variants": variant_files, "kernel_graphs": graphs}, with_files=False)
            log(
                "kernel graphs (fp32 products read in place; vision attention where a CPU has AVX-512 BF16, the "
                f"4-bit decoder where it has AVX-512 VNNI): {', '.join(graphs.values())}"
            )
        report = verify.verify_variants(refs, tmp, names, max_new_tokens=max_new_tokens, threads=threads, log=log)
        if not report["fp32"]["all_tokens_equal"]:
            raise ExportError(
                "the fp32 ONNX model does not reproduce the PyTorch model's greedy tokens "
                f"(max logit difference {report['fp32']['max_abs_logit_diff']:.3g}); the export is "
                "wrong, so no bundle was written. Please report this with the checkpoint's config."
            )
        stats = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak_rss_mb()}
        manifest = write_manifest(
            tmp,
            {
                **manifest_fields(str(source), config, variant_files, facts, report, stats),
                **({"kernel_graphs": graphs} if graphs else {}),
            },
        )
        _readable_by_all(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return manifest
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(out) from None
        raise ExportError(f"could not write the bundle ({e}); nothing was written.") from None
    except RuntimeError as e:  # torch / protobuf writers report a full disk as RuntimeError
        if "No space left" in str(e):
            raise _disk_full(out) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
