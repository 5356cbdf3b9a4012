"""Find and check a model's files: an edgevlm bundle, a folder in Hugging Face's official onnx/ layout, or a hub id.

An edgevlm bundle *is* the official layout (config files at the top, ONNX parts under onnx/ with the usual
suffixes) plus `edgevlm.json`, a manifest with variants, sha256 of every file and the export's verification
report. So tools made for the official files read our bundles, and we read theirs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

MANIFEST = "edgevlm.json"
FORMAT = "edgevlm-bundle"
FORMAT_VERSION = 1
DEFAULT_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
PARTS = ("vision_encoder", "embed_tokens", "decoder_model_merged")
# File-name suffixes of the official layout; our variant names map onto them.
SUFFIXES = {"fp32": "", "fp16": "_fp16", "int8": "_int8", "uint8": "_uint8", "quantized": "_quantized",
            "q4": "_q4", "q4f16": "_q4f16", "bnb4": "_bnb4"}
REQUIRED_CONFIGS = ("config.json", "tokenizer.json")
# Inputs that tell the parts apart: a file in the wrong place (parts swapped) is caught by these at load.
PART_INPUTS = {"vision_encoder": ("pixel_values",), "embed_tokens": ("input_ids",),
               "decoder_model_merged": ("inputs_embeds", "attention_mask", "past_key_values.0.key")}
_SHA256 = re.compile(r"[0-9a-f]{64}")
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

    @property
    def variants(self) -> list[str]:
        return sorted(self.files)

    def part_files(self, variant: str | dict[str, str] | None) -> dict[str, Path]:
        """Resolve a variant name (or a {part: variant} dict for mixed precision) to one file per part."""
        if variant is None:
            variant = "fp32" if "fp32" in self.files else self.variants[0]
        if isinstance(variant, str):
            if variant not in self.files:
                raise ModelError(f"variant {variant!r} is not in {self.root}; it has: {', '.join(self.variants)}. "
                                 f"Pick one of those (edgevlm info {self.root} lists them).")
            return dict(self.files[variant])
        chosen = {}
        for part in PARTS:
            short = _short_part(part)
            v = variant.get(part, variant.get(short, "fp32"))
            if v not in self.files or part not in self.files[v]:
                raise ModelError(f"no {v!r} file for the {short} part in {self.root}; available variants: "
                                 f"{', '.join(self.variants)}")
            chosen[part] = self.files[v][part]
        return chosen


def _short_part(part: str) -> str:
    return {"vision_encoder": "vision", "embed_tokens": "embed", "decoder_model_merged": "decoder"}[part]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({e}); re-export or re-download the model.") from None
    except OSError as e:
        raise ModelError(f"{path} cannot be read ({e.strerror}); check the model folder's files and "
                         f"permissions.") from None


def _read_object(path: Path) -> dict:
    """A JSON file that must hold an object (a config); a missing file reads as {}."""
    value = _read_json(path)
    if not isinstance(value, dict):
        raise ModelError(f"{path} must hold a JSON object, not {type(value).__name__}; re-export or re-download "
                         f"the model.")
    return value


def read_spec(root: Path) -> ModelSpec:
    config = _read_object(root / "config.json")
    if config.get("model_type") not in ("smolvlm", "idefics3"):
        raise ModelError(f"{root / 'config.json'} is not a SmolVLM config (model_type="
                         f"{config.get('model_type')!r}); point edgevlm at a SmolVLM2 model folder.")
    try:
        return _spec(root, config)
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else f"has a value of the wrong kind ({e})"
        raise ModelError(f"{root / 'config.json'} (or a processor config beside it) {what}; it is not a complete "
                         f"SmolVLM2 config. Re-export or re-download the model.") from None


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
    for name in ("image_token_id", "tile", "patch", "scale_factor", "image_seq_len", "hidden", "num_layers",
                 "kv_heads", "head_dim", "vocab_size", "max_positions", "longest_edge"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{name} must be a positive integer, not {value!r}")
    return spec


def _video_rules(root: Path, pre: dict) -> dict:
    """The video processor's settings as transformers resolves them: a video_preprocessor_config.json if there is
    one, else the image config, where a `size` entry overrides video_sampling.video_size (SmolVLMVideoProcessor's
    __init__ does exactly that, so released SmolVLM2 models resize frames to 2048 / 1536 first, then to the tile)."""
    cfg = _read_object(root / "video_preprocessor_config.json") or pre
    sampling = dict(cfg.get("video_sampling", {}))
    size = cfg.get("size") or sampling.get("video_size") or {"longest_edge": 4 * 364}
    return {"video_sampling": sampling, "video_longest_edge": int(size.get("longest_edge", 4 * 364)),
            "video_fps": float(sampling.get("fps", 1)), "video_max_frames": int(sampling.get("max_frames", 64))}


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


def _scan_official_layout(root: Path) -> dict[str, dict[str, Path]]:
    files: dict[str, dict[str, Path]] = {}
    onnx_dir = root / "onnx"
    for variant, suffix in SUFFIXES.items():
        found = {part: onnx_dir / f"{part}{suffix}.onnx" for part in PARTS}
        found = {p: f for p, f in found.items() if f.exists()}
        if len(found) == len(PARTS):
            files[variant] = found
    return files


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def open_bundle(root: str | os.PathLike) -> Bundle:
    """Read a local model folder (bundle or official layout). Checksums are checked later, per variant."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ModelError(f"{root} is a file, not a model folder; pass a bundle folder made by `edgevlm export`, a "
                         f"folder with an onnx/ subfolder, or a Hugging Face hub id.")
    if not root.is_dir():
        raise ModelError(f"model folder {root} does not exist; pass a bundle made by `edgevlm export`, a folder "
                         f"with an onnx/ subfolder, or a Hugging Face hub id.")
    for name in REQUIRED_CONFIGS:
        if not (root / name).is_file():
            raise ModelError(f"{root} has no {name}; it is not a complete SmolVLM2 ONNX model folder "
                             f"(re-export it with `edgevlm export`, or re-download it).")
    manifest = None
    if (root / MANIFEST).exists():  # present means trusted only if valid: never silently unverified
        manifest = validate_manifest(_read_json(root / MANIFEST), root)
        files = {v: {p: root / rel for p, rel in parts.items()} for v, parts in manifest["variants"].items()}
    else:
        files = _scan_official_layout(root)
        if files and str(root) not in _warned_unverified:
            _warned_unverified.add(str(root))
            log.warning("warning: %s has no %s, so it is loaded as an unverified Hugging Face onnx/ layout (no "
                        "checksums checked).", root, MANIFEST)
    if not files:
        raise ModelError(f"{root} holds no complete set of ONNX parts (onnx/vision_encoder*.onnx, "
                         f"onnx/embed_tokens*.onnx, onnx/decoder_model_merged*.onnx).")
    return Bundle(root=root, spec=read_spec(root), files=files, manifest=manifest, chat_template=_chat_template(root),
                  special_tokens=_special_tokens(root))


def _relative_inside(rel: object, root: Path, what: str) -> str:
    if not isinstance(rel, str) or not rel:
        raise ModelError(f"{root / MANIFEST}: {what} must be a non-empty path string; got {rel!r}. The manifest is "
                         f"damaged; re-export the bundle.")
    p = Path(rel)
    if p.is_absolute() or "\\" in rel or ".." in p.parts or rel.startswith("~"):
        raise ModelError(f"{root / MANIFEST}: {what} {rel!r} points outside the bundle (absolute path or '..'); "
                         f"a bundle may only name its own files. Re-export it, and do not trust this folder.")
    return p.as_posix()


def validate_manifest(manifest: object, root: Path) -> dict:
    """Check the manifest's shape before anything in it is used: an object of the right format and version,
    variants naming each part by a relative path inside the bundle, and files with sha256 and size."""
    def bad(why: str) -> ModelError:
        return ModelError(f"{root / MANIFEST} is not a valid edgevlm manifest: {why}. Re-export the bundle (or "
                          f"remove {MANIFEST} to load the folder as an unverified Hugging Face layout).")

    if not isinstance(manifest, dict):
        raise bad(f"it holds {type(manifest).__name__}, not an object")
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"format {manifest.get('format')!r} version {version!r}; expected {FORMAT!r} with an integer "
                  f"version")
    if version > FORMAT_VERSION:
        raise ModelError(f"{root / MANIFEST} is format version {version}; this edgevlm reads {FORMAT} up to version "
                         f"{FORMAT_VERSION}. Upgrade edgevlm or re-export the bundle.")
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
    for rel, entry in files.items():
        _relative_inside(rel, root, "a file entry")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and _SHA256.fullmatch(entry["sha256"]) and isinstance(entry.get("size"), int)
                and not isinstance(entry.get("size"), bool) and entry["size"] >= 0):
            raise bad(f"the entry for {rel} needs a sha256 (64 hex digits) and a size (bytes)")
    return manifest


def check_part_inputs(part: str, path: Path, input_names: list[str]) -> None:
    """A file must have the inputs of the part it stands for; swapped or foreign files are a model error."""
    missing = [n for n in PART_INPUTS[part] if n not in input_names]
    if missing:
        raise ModelError(f"{path.name} is used as the {_short_part(part)} part but lacks its input(s) "
                         f"{', '.join(missing)} (it has {', '.join(input_names) or 'none'}); the bundle's files are "
                         f"mixed up or foreign. Re-export it.")


def verify_files(bundle: Bundle, paths: list[Path]) -> None:
    """Check size and sha256 of `paths` (and config files) against the manifest; raise ModelError on a mismatch."""
    if bundle.manifest is None:
        return
    recorded = bundle.manifest.get("files", {})
    wanted = {p.relative_to(bundle.root).as_posix() for p in paths}
    wanted |= {name for name in recorded if not name.endswith((".onnx", ".onnx_data"))}
    for p in paths:  # external weight files travel with their graph
        data = p.with_name(p.name + "_data")
        if data.exists() or (data.relative_to(bundle.root).as_posix() in recorded):
            wanted.add(data.relative_to(bundle.root).as_posix())
    for rel in sorted(wanted):
        entry = recorded.get(rel)
        path = bundle.root / rel
        if entry is None:
            raise ModelError(f"{rel} is not listed in {bundle.root / MANIFEST}; the bundle was changed after "
                             f"export. Re-export it.")
        if not path.is_file():
            raise ModelError(f"{path} is missing from the bundle; re-export it or copy the whole folder again.")
        try:
            same = path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]
        except OSError as e:
            raise ModelError(f"{path} cannot be read ({e.strerror}); check the bundle's permissions.") from None
        if not same:
            raise ModelError(f"{path} does not match its checksum in {MANIFEST} (altered or truncated); "
                             f"re-export the bundle or copy it again.")


def resolve(model: str | os.PathLike, revision: str | None = None, progress: bool = True,
            variant: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id fetched into the usual Hugging Face cache.

    Only the configs, the tokenizer and the ONNX files of the chosen variant are downloaded (the official repos
    hold every variant, several GB in all).
    """
    path = Path(model)
    if path.exists() or not looks_like_hub_id(str(model)):
        return path
    return _download(str(model), revision, progress, SUFFIXES.get(variant or "fp32"))


_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def looks_like_hub_id(s: str) -> bool:
    """`org/name` with the hub's characters, and nothing on this machine that makes it read as a path: a mistyped
    local folder (`models/smolvlm2` beside an existing `models/`) is reported as a missing folder, not as a
    failed download with network advice."""
    parts = s.split("/")
    if len(parts) != 2 or not all(_HUB_NAME.fullmatch(p) for p in parts) or ".." in s or "--" in s:
        return False
    return not Path(s).exists() and not Path(parts[0]).exists()


def _download(repo_id: str, revision: str | None, progress: bool, suffix: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()
    patterns = ["*.json", "*.jinja"]
    patterns += [f"onnx/{part}{suffix}.onnx*" for part in PARTS] if suffix is not None else ["onnx/*"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as e:  # huggingface_hub raises many kinds (offline, 404, auth, connection)
        raise ModelError(f"could not download {repo_id} from the Hugging Face hub ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}). If you are offline, export a model with "
                         f"`edgevlm export` or copy a model folder here and pass its path instead.") from None
