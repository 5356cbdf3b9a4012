"""Find and check a model's files: an edgevlm bundle, a folder in Hugging Face's official onnx/ layout, or a hub id.

An edgevlm bundle *is* the official layout (config files at the top, ONNX parts under onnx/ with the usual
suffixes) plus `edgevlm.json`, a manifest with variants, sha256 of every file and the export's verification
report. So tools made for the official files read our bundles, and we read theirs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from . import verified
from .bundle_format import (
    MANIFEST,
    REQUIRED_CONFIGS,
    SHORT_PARTS,
    choose_parts,
    default_variant,
    external_data,
    scan_layout,
    sha256_file,
    validate_manifest,
)
from .hub import resolve

__all__ = [
    "DEFAULT_MODEL",
    "MANIFEST",
    "Bundle",
    "ModelSpec",
    "check_part_inputs",
    "describe",
    "open_bundle",
    "read_spec",
    "resolve",
    "sha256_file",
    "verify_files",
]

DEFAULT_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
# Inputs that tell the parts apart: a file in the wrong place (parts swapped) is caught by these at load.
PART_INPUTS = {
    "vision_encoder": ("pixel_values",),
    "embed_tokens": ("input_ids",),
    "decoder_model_merged": ("inputs_embeds", "attention_mask", "past_key_values.0.key"),
}
log = logging.getLogger("edgevlm")
_warned_unverified: set[str] = set()


@dataclass
class ModelSpec:
    """The architecture facts the runtime needs, read from config.json / preprocessor / processor configs."""

    image_token_id: int
    tile: int
    patch: int
    scale_factor: int
    image_seq_len: int
    hidden: int
    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    eos_ids: list[int]
    longest_edge: int
    image_mean: list[float]
    image_std: list[float]
    rescale_factor: float
    do_image_splitting: bool
    video_sampling: dict = field(default_factory=dict)
    video_longest_edge: int = 1456  # first resize of a video frame, before the square tile resize
    video_fps: float = 1.0
    video_max_frames: int = 64


@dataclass
class Bundle:
    root: Path
    spec: ModelSpec
    files: dict[str, dict[str, Path]]  # variant -> part -> path
    manifest: dict | None
    chat_template: str | None
    special_tokens: dict[str, Any] = field(default_factory=dict)  # bos_token, eos_token ... as transformers has them
    # standard file -> its kernel graph (engine/kernels.py): the same part with attention on edgevlm's kernel
    kernel_graphs: dict[Path, Path] = field(default_factory=dict)

    @property
    def variants(self) -> list[str]:
        return sorted(self.files)

    @property
    def default_variant(self) -> str:
        return default_variant(self.files)

    def part_files(self, variant: str | dict[str, str] | None) -> dict[str, Path]:
        """Resolve a variant name (or a {part: variant} dict for mixed precision) to one file per part."""
        return choose_parts(self.files, variant, str(self.root))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({e}); re-export or re-download the model.") from None
    except OSError as e:
        raise ModelError(
            f"{path} cannot be read ({e.strerror}); check the model folder's files and permissions."
        ) from None


def _read_object(path: Path) -> dict:
    """A JSON file that must hold an object (a config); a missing file reads as {}."""
    value = _read_json(path)
    if not isinstance(value, dict):
        raise ModelError(
            f"{path} must hold a JSON object, not {type(value).__name__}; re-export or re-download the model."
        )
    return value


def read_spec(root: Path) -> ModelSpec:
    config = _read_object(root / "config.json")
    if config.get("model_type") not in ("smolvlm", "idefics3"):
        raise ModelError(
            f"{root / 'config.json'} is not a SmolVLM config (model_type="
            f"{config.get('model_type')!r}); point edgevlm at a SmolVLM2 model folder."
        )
    try:
        return _spec(root, config)
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else f"has a value of the wrong kind ({e})"
        raise ModelError(
            f"{root / 'config.json'} (or a processor config beside it) {what}; it is not a complete "
            f"SmolVLM2 config. Re-export or re-download the model."
        ) from None


def _spec(root: Path, config: dict) -> ModelSpec:
    pre = _read_object(root / "preprocessor_config.json")
    proc = _read_object(root / "processor_config.json")
    gen = _read_object(root / "generation_config.json")
    vision, text = config["vision_config"], config["text_config"]
    tile, patch, scale = vision["image_size"], vision["patch_size"], config.get("scale_factor", 2)
    eos = gen.get("eos_token_id", text.get("eos_token_id", 2))
    eos_ids = list(eos) if isinstance(eos, list) else [eos]
    heads = text["num_attention_heads"]
    spec = ModelSpec(
        image_token_id=config.get("image_token_id", 49190),
        tile=pre.get("max_image_size", {}).get("longest_edge", tile),
        patch=patch,
        scale_factor=scale,
        image_seq_len=proc.get("image_seq_len", (tile // patch) ** 2 // scale**2),
        hidden=text["hidden_size"],
        num_layers=text["num_hidden_layers"],
        kv_heads=text.get("num_key_value_heads", heads),
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        vocab_size=text["vocab_size"],
        max_positions=text.get("max_position_embeddings", 8192),
        eos_ids=eos_ids,
        longest_edge=pre.get("size", {}).get("longest_edge", 4 * tile),
        image_mean=list(pre.get("image_mean", [0.5, 0.5, 0.5])),
        image_std=list(pre.get("image_std", [0.5, 0.5, 0.5])),
        rescale_factor=pre.get("rescale_factor", 1 / 255),
        do_image_splitting=pre.get("do_image_splitting", True),
        **_video_rules(root, pre),
    )
    for name in (
        "image_token_id",
        "tile",
        "patch",
        "scale_factor",
        "image_seq_len",
        "hidden",
        "num_layers",
        "kv_heads",
        "head_dim",
        "vocab_size",
        "max_positions",
        "longest_edge",
    ):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{name} must be a positive integer, not {value!r}")  # read_spec: ModelError
    return spec


def _video_rules(root: Path, pre: dict) -> dict:
    """The video processor's settings as transformers resolves them: a video_preprocessor_config.json if there is
    one, else the image config, where a `size` entry overrides video_sampling.video_size (SmolVLMVideoProcessor's
    __init__ does exactly that, so released SmolVLM2 models resize frames to 2048 / 1536 first, then to the tile)."""
    cfg = _read_object(root / "video_preprocessor_config.json") or pre
    sampling = dict(cfg.get("video_sampling", {}))
    size = cfg.get("size") or sampling.get("video_size") or {"longest_edge": 4 * 364}
    return {
        "video_sampling": sampling,
        "video_longest_edge": int(size.get("longest_edge", 4 * 364)),
        "video_fps": float(sampling.get("fps", 1)),
        "video_max_frames": int(sampling.get("max_frames", 64)),
    }


def _chat_template(root: Path) -> str | None:
    if (root / "chat_template.jinja").exists():
        return (root / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        template = _read_object(root / name).get("chat_template")
        if isinstance(template, str) and template:
            return template
    return None


def _special_tokens(root: Path) -> dict[str, Any]:
    """The tokenizer's special-tokens map (bos_token, eos_token, unk_token, pad_token ...), as transformers passes
    it to chat templates and uses to decide whether a rendered prompt already carries its BOS."""
    out: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        for key, value in _read_object(root / name).items():
            if key.endswith("_token") and not key.startswith("add_"):
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    out[key] = value
    return out


def open_bundle(root: str | os.PathLike, listing: list[str] | None = None) -> Bundle:
    """Read a local model folder (bundle or official layout). Checksums are checked later, per variant.
    `listing`: the file names of a hub repo whose ONNX files were not downloaded (edgevlm info HUB_ID)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ModelError(
            f"{root} is a file, not a model folder; pass a bundle folder made by `edgevlm export`, a "
            f"folder with an onnx/ subfolder, or a Hugging Face hub id."
        )
    if not root.is_dir():
        raise ModelError(
            f"model folder {root} does not exist; pass a bundle made by `edgevlm export`, a folder "
            f"with an onnx/ subfolder, or a Hugging Face hub id."
        )
    for name in REQUIRED_CONFIGS:
        if not (root / name).is_file():
            raise ModelError(
                f"{root} has no {name}; it is not a complete SmolVLM2 ONNX model folder "
                f"(re-export it with `edgevlm export`, or re-download it)."
            )
    manifest = None
    if (root / MANIFEST).exists():  # present means trusted only if valid: never silently unverified
        manifest = validate_manifest(_read_json(root / MANIFEST), root)
        files = {v: {p: root / rel for p, rel in parts.items()} for v, parts in manifest["variants"].items()}
    else:
        names = listing if listing is not None else [p.relative_to(root).as_posix() for p in root.glob("onnx/*")]
        files = {v: {p: root / rel for p, rel in parts.items()} for v, parts in scan_layout(names).items()}
        if files and str(root) not in _warned_unverified:
            _warned_unverified.add(str(root))
            log.warning(
                "warning: %s has no %s, so it is loaded as an unverified Hugging Face onnx/ layout (no "
                "checksums checked).",
                root,
                MANIFEST,
            )
    if not files:
        raise ModelError(
            f"{root} holds no complete set of ONNX parts (onnx/vision_encoder*.onnx, "
            f"onnx/embed_tokens*.onnx, onnx/decoder_model_merged*.onnx)."
        )
    graphs = {root / k: root / v for k, v in _matching_kernel_graphs(manifest or {}).items()}
    return Bundle(
        root=root,
        spec=read_spec(root),
        files=files,
        manifest=manifest,
        chat_template=_chat_template(root),
        special_tokens=_special_tokens(root),
        kernel_graphs=graphs,
    )


def _matching_kernel_graphs(manifest: dict) -> dict[str, str]:
    """The manifest's kernel graphs whose standard file is still the one each was made from. A kernel graph reads
    its weights at offsets inside its standard file, so beside another file (parts swapped or replaced, and the
    checksums redone) it would read the wrong bytes or none: that standard file then opens alone, and its own
    checks say what is wrong with it. (Bundles exported before the sources were recorded keep their graphs.)"""
    graphs, sources = manifest.get("kernel_graphs", {}), manifest.get("kernel_graph_sources", {})
    files = manifest.get("files", {})
    kept = {}
    for standard, kernel in graphs.items():
        made_from = sources.get(kernel) if isinstance(sources, dict) else None
        if made_from is not None and made_from != files.get(standard, {}).get("sha256"):
            log.warning("%s was not made from %s as it is now; using ONNX Runtime's kernels", kernel, standard)
            continue
        kept[standard] = kernel
    return kept


def check_part_inputs(part: str, path: Path, input_names: list[str]) -> None:
    """A file must have the inputs of the part it stands for; swapped or foreign files are a model error."""
    missing = [n for n in PART_INPUTS[part] if n not in input_names]
    if missing:
        raise ModelError(
            f"{path.name} is used as the {SHORT_PARTS[part]} part but lacks its input(s) "
            f"{', '.join(missing)} (it has {', '.join(input_names) or 'none'}); the bundle's files are "
            f"mixed up or foreign. Re-export it."
        )


def verify_files(bundle: Bundle, paths: list[Path], full: bool = False) -> None:
    """Check size and sha256 of `paths` (and config files) against the manifest; raise ModelError on a mismatch.

    A file whose sha256 matched once is trusted while its identity on disk is unchanged (device, inode, size,
    mtime and ctime, recorded in the user's cache: verified.py), so a 9 GB 2.2B bundle is hashed on its first
    load, not on every start. A file changed in place changes its ctime, which no program can set back, and is
    hashed again. full=True hashes everything regardless (load(verify="full"))."""
    if bundle.manifest is None:
        return
    recorded = bundle.manifest.get("files", {})
    wanted = {p.relative_to(bundle.root).as_posix() for p in paths}
    wanted |= {name for name in recorded if not name.endswith((".onnx", ".onnx_data"))}
    for p in paths:  # external weight files travel with their graph
        data = external_data(p)
        if data.exists() or (data.relative_to(bundle.root).as_posix() in recorded):
            wanted.add(data.relative_to(bundle.root).as_posix())
    stamps = verified.Stamps.load()
    for rel in sorted(wanted):
        entry = recorded.get(rel)
        path = bundle.root / rel
        if entry is None:
            raise ModelError(
                f"{rel} is not listed in {bundle.root / MANIFEST}; the bundle was changed after export. Re-export it."
            )
        if not path.is_file():
            raise ModelError(f"{path} is missing from the bundle; re-export it or copy the whole folder again.")
        try:
            if path.stat().st_size != entry["size"]:
                same = False
            elif not full and stamps.holds(path, entry["sha256"]):
                continue
            else:
                same = sha256_file(path) == entry["sha256"]
        except OSError as e:
            raise ModelError(f"{path} cannot be read ({e.strerror}); check the bundle's permissions.") from None
        if not same:
            raise ModelError(
                f"{path} does not match its checksum in {MANIFEST} (altered or truncated); "
                f"re-export the bundle or copy it again."
            )
        stamps.add(path, entry["sha256"])
    stamps.save()


def describe(b: Bundle) -> dict[str, Any]:
    """What `edgevlm info` shows: architecture, variants with their files and sizes, verification."""
    s = b.spec
    manifest = b.manifest or {}
    data: dict[str, Any] = {
        "model": str(b.root),
        "bundle": b.manifest is not None,
        "architecture": manifest.get("architecture", "unknown"),
        "tile": s.tile,
        "patch": s.patch,
        "scale_factor": s.scale_factor,
        "image_seq_len": s.image_seq_len,
        "text": {"hidden": s.hidden, "layers": s.num_layers, "kv_heads": s.kv_heads, "vocab": s.vocab_size},
        "variants": {
            v: {p: f.relative_to(b.root).as_posix() for p, f in parts.items()} for v, parts in b.files.items()
        },
        "default_variant": b.default_variant,
    }
    if b.manifest:
        data["verification"] = {
            v: {
                "tokens_equal": r["all_tokens_equal"],
                "max_abs_logit_diff": r["max_abs_logit_diff"],
                "top1_agreement": r.get("min_teacher_forced_top1"),
            }
            for v, r in manifest.get("verification", {}).items()
        }
        table = manifest["files"]
        data["variant_bytes"] = {
            v: sum(
                table.get(rel, {}).get("size", 0) + table.get(rel + "_data", {}).get("size", 0)
                for rel in parts.values()
            )
            for v, parts in data["variants"].items()
        }
    return data
