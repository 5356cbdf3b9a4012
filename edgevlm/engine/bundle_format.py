"""The bundle format, in one place: the exporter writes it with these names and the runtime reads it with them.

A bundle is Hugging Face's official ONNX layout (configs at the top, parts under onnx/ with the usual suffixes)
plus `edgevlm.json`: variants, sha256 and size of every file, and the export's verification report. This module
knows the part names, the variant recipes and suffixes, the external-data rule, the default-variant rule, and how
a manifest is validated and written. It needs neither onnx nor torch (docs/design.md, "Bundle format").
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, overload

from ..errors import InputError, ModelError

MANIFEST = "edgevlm.json"
FORMAT = "edgevlm-bundle"
FORMAT_VERSION = 1
PARTS = ("vision_encoder", "embed_tokens", "decoder_model_merged")
SHORT_PARTS = {"vision_encoder": "vision", "embed_tokens": "embed", "decoder_model_merged": "decoder"}
# File-name suffixes of the official layout; our precisions and their other variant names map onto them.
SUFFIXES = {
    "fp32": "",
    "fp16": "_fp16",
    "int8": "_int8",
    "uint8": "_uint8",
    "quantized": "_quantized",
    "q4": "_q4",
    "q4f16": "_q4f16",
    "bnb4": "_bnb4",
}
# What `edgevlm export` makes: variant -> part -> precision. "mixed" is an int8 vision encoder with 4-bit text.
RECIPES = {
    "fp32": {"vision_encoder": "fp32", "embed_tokens": "fp32", "decoder_model_merged": "fp32"},
    "fp16": {"vision_encoder": "fp16", "embed_tokens": "fp16", "decoder_model_merged": "fp16"},
    "int8": {"vision_encoder": "int8", "embed_tokens": "int8", "decoder_model_merged": "int8"},
    "q4": {"vision_encoder": "q4", "embed_tokens": "q4", "decoder_model_merged": "q4"},
    "mixed": {"vision_encoder": "int8", "embed_tokens": "q4", "decoder_model_merged": "q4"},
}
VARIANTS = tuple(RECIPES)
REQUIRED_CONFIGS = ("config.json", "tokenizer.json")
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
)
# Protobuf cannot hold 2 GB: parts over this keep their weights in `<name>.onnx_data` beside the graph.
EXTERNAL_DATA_LIMIT = 1 << 30
_SHA256 = re.compile(r"[0-9a-f]{64}")


def part_file(part: str, precision: str) -> str:
    """The relative path of one part at one precision: onnx/decoder_model_merged_q4.onnx."""
    return f"onnx/{part}{SUFFIXES[precision]}.onnx"


@overload
def external_data(path: Path) -> Path: ...
@overload
def external_data(path: str) -> str: ...
def external_data(path: str | Path) -> str | Path:
    """Where a graph's external weights live: the file name plus `_data` (HF's convention)."""
    return path.with_name(path.name + "_data") if isinstance(path, Path) else f"{path}_data"


def with_external_data(paths: Iterable[Path]) -> list[Path]:
    """The files a set of graphs really needs: each graph and, where it exists, its external weights."""
    out = []
    for p in paths:
        out.append(p)
        if external_data(p).exists():
            out.append(external_data(p))
    return out


def recipe_files(variants: Iterable[str]) -> dict[str, dict[str, str]]:
    """The manifest's `variants` entry for exported variants."""
    return {v: {part: part_file(part, prec) for part, prec in RECIPES[v].items()} for v in variants}


def default_variant(names: Iterable[str]) -> str:
    """fp32 when there is one (it reproduces PyTorch's tokens), else the first by name."""
    names = sorted(names)
    return "fp32" if "fp32" in names else names[0]


def choose_parts(
    variants: Mapping[str, Mapping[str, Any]], variant: str | Mapping[str, str] | None, where: str = "the model"
) -> dict[str, Any]:
    """A variant name, None (the default variant) or a {part: variant} dict ("vision"/"decoder" short names too)
    -> one entry per part, taken from `variants` (variant -> part -> file)."""
    if variant is None:
        variant = default_variant(variants)
    if isinstance(variant, str):
        if variant not in variants:
            raise ModelError(
                f"variant {variant!r} is not in {where}; it has: {', '.join(sorted(variants))}. Pick "
                f"one of those (edgevlm info lists them)."
            )
        return dict(variants[variant])
    _check_part_keys(variant)
    chosen = {}
    for part in PARTS:
        short = SHORT_PARTS[part]
        v = variant.get(part, variant.get(short, "fp32"))
        if v not in variants or part not in variants[v]:
            raise ModelError(
                f"no {v!r} file for the {short} part in {where}; available variants: {', '.join(sorted(variants))}"
            )
        chosen[part] = variants[v][part]
    return chosen


def _check_part_keys(variant: Mapping[str, str]) -> None:
    """A misspelt part ("vison") would otherwise load that part silently at fp32: the slow, large file."""
    known = [*PARTS, *SHORT_PARTS.values()]
    for key in variant:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(
                f"unknown part {key!r} in the variant dict{hint}; the parts are "
                f"{', '.join(repr(k) for k in SHORT_PARTS.values())} (or {', '.join(PARTS)})."
            )
    for part, short in SHORT_PARTS.items():
        if part in variant and short in variant:
            raise InputError(f"the variant dict names the {short} part twice ({part!r} and {short!r}); keep one.")


def scan_layout(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Variants of a folder in the official onnx/ layout (no manifest), from its file names alone."""
    have = set(names)
    found = {}
    for variant, suffix in SUFFIXES.items():
        parts = {part: f"onnx/{part}{suffix}.onnx" for part in PARTS}
        if all(f in have for f in parts.values()):
            found[variant] = parts
    return found


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """Every file of a bundle but the manifest: sha256 and size."""
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(root: Path, fields: dict[str, Any], with_files: bool = True) -> dict[str, Any]:
    """Write edgevlm.json: format and version, the given fields, and (unless provisional) the file table."""
    files = file_table(root) if with_files else {}
    # each kernel graph's standard file as it was made from (engine/bundle.py: a graph beside another is not used)
    sources = {k: files[s]["sha256"] for s, k in fields.get("kernel_graphs", {}).items() if s in files}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **fields,
        **({"kernel_graph_sources": sources} if sources else {}),
        "files": files,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _relative_inside(rel: object, root: Path, what: str) -> str:
    if not isinstance(rel, str) or not rel:
        raise ModelError(
            f"{root / MANIFEST}: {what} must be a non-empty path string; got {rel!r}. The manifest is "
            f"damaged; re-export the bundle."
        )
    p = Path(rel)
    if p.is_absolute() or "\\" in rel or ".." in p.parts or rel.startswith("~"):
        raise ModelError(
            f"{root / MANIFEST}: {what} {rel!r} points outside the bundle (absolute path or '..'); "
            f"a bundle may only name its own files. Re-export it, and do not trust this folder."
        )
    return p.as_posix()


def validate_manifest(manifest: object, root: Path) -> dict:
    """Check the manifest's shape before anything in it is used: an object of the right format and version,
    variants naming each part by a relative path inside the bundle, and files with sha256 and size."""

    def bad(why: str) -> ModelError:
        return ModelError(
            f"{root / MANIFEST} is not a valid edgevlm manifest: {why}. Re-export the bundle (or "
            f"remove {MANIFEST} to load the folder as an unverified Hugging Face layout)."
        )

    if not isinstance(manifest, dict):
        raise bad(f"it holds {type(manifest).__name__}, not an object")
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"format {manifest.get('format')!r} version {version!r}; expected {FORMAT!r} with an integer version")
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{root / MANIFEST} is format version {version}; this edgevlm reads {FORMAT} up to version "
            f"{FORMAT_VERSION}. Upgrade edgevlm or re-export the bundle."
        )
    variants, files = manifest.get("variants"), manifest.get("files")
    if not isinstance(variants, dict) or not variants:
        raise bad("'variants' is missing or empty")
    if not isinstance(files, dict):
        raise bad("'files' is missing")
    for name, parts in variants.items():
        if not isinstance(parts, dict) or set(parts) != set(PARTS):
            raise bad(f"variant {name!r} must name exactly the parts {', '.join(PARTS)}")
        for part, rel in parts.items():
            parts[part] = _relative_inside(rel, root, f"variant {name!r} part {part}")
    graphs = manifest.get("kernel_graphs", {})
    if not isinstance(graphs, dict):
        raise bad("'kernel_graphs' must map a standard file to its kernel graph")
    for standard, kernel in list(graphs.items()):
        graphs[_relative_inside(standard, root, "a kernel graph's file")] = _relative_inside(
            kernel, root, "a kernel graph"
        )
    for rel, entry in files.items():
        _relative_inside(rel, root, "a file entry")
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and _SHA256.fullmatch(entry["sha256"])
            and isinstance(entry.get("size"), int)
            and not isinstance(entry.get("size"), bool)
            and entry["size"] >= 0
        ):
            raise bad(f"the entry for {rel} needs a sha256 (64 hex digits) and a size (bytes)")
    return manifest


def manifest_files_for(manifest: dict, variant: str | Mapping[str, str] | None) -> list[str]:
    """The relative paths one variant needs from a (validated) manifest: its graphs, their external data, and the
    kernel graph of any of them (small; whether it is used is decided at load, on the machine that runs it)."""
    parts = choose_parts(manifest["variants"], variant)
    graphs = manifest.get("kernel_graphs", {})
    out = []
    for rel in parts.values():
        out.append(rel)
        if external_data(rel) in manifest["files"]:
            out.append(external_data(rel))
        if rel in graphs:
            out.append(graphs[rel])
    return out
