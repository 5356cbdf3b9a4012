"""Hub ids: telling one from a mistyped local path, and downloading exactly what one variant needs.

The official repos hold every variant (several GB). The download fetches the configs and the manifest first, then
exactly the chosen variant's files: from the manifest when the repo is an edgevlm bundle (per-part dicts and
`mixed` included, external data with its graph), else by the official layout's suffixes from the repo's file list.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import ModelError
from .bundle_format import MANIFEST, choose_parts, external_data, manifest_files_for, scan_layout, validate_manifest

_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def looks_like_hub_id(s: str) -> bool:
    """`org/name` with the hub's characters, and nothing on this machine that makes it read as a path: a mistyped
    local folder (`models/smolvlm2` beside an existing `models/`) is reported as a missing folder, not as a
    failed download with network advice."""
    parts = s.split("/")
    if len(parts) != 2 or not all(_HUB_NAME.fullmatch(p) for p in parts) or ".." in s or "--" in s:
        return False
    return not Path(s).exists() and not Path(parts[0]).exists()


def is_remote(model: str | os.PathLike) -> bool:
    return not Path(model).exists() and looks_like_hub_id(str(model))


def resolve(
    model: str | os.PathLike,
    revision: str | None = None,
    progress: bool = True,
    variant: str | Mapping[str, str] | None = None,
    onnx: bool = True,
) -> Path:
    """A local folder as is; otherwise a hub id fetched into the usual Hugging Face cache: the configs and the
    manifest, then (onnx=True) exactly the chosen variant's ONNX files."""
    if not is_remote(model):
        return Path(model)
    root = _snapshot(str(model), revision, progress, ["*.json", "*.jinja"])
    if onnx:
        wanted = _variant_files(root, str(model), revision, variant)
        _snapshot(str(model), revision, progress, wanted)
    return root


def repo_files(repo_id: str, revision: str | None = None) -> list[str]:
    """The file names in a hub repo (no download)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision or "main")
    except Exception as e:  # huggingface_hub raises many kinds (offline, 404, auth, connection)
        raise _failed(repo_id, e) from None
    return [s.rfilename for s in info.siblings or []]


def _variant_files(
    root: Path, repo_id: str, revision: str | None, variant: str | Mapping[str, str] | None
) -> list[str]:
    if (root / MANIFEST).exists():
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{root / MANIFEST} is not valid JSON ({e}); the hub copy is damaged.") from None
        return manifest_files_for(validate_manifest(manifest, root), variant)
    names = repo_files(repo_id, revision)
    layout = scan_layout(names)
    if not layout:
        raise ModelError(
            f"{repo_id} holds no complete set of ONNX parts (onnx/vision_encoder*.onnx, "
            f"onnx/embed_tokens*.onnx, onnx/decoder_model_merged*.onnx); pick a repo with ONNX files."
        )
    wanted = list(choose_parts(layout, variant, repo_id).values())
    return wanted + [external_data(f) for f in wanted if external_data(f) in names]


def _snapshot(repo_id: str, revision: str | None, progress: bool, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as e:  # huggingface_hub raises many kinds (offline, 404, auth, connection)
        raise _failed(repo_id, e) from None


def _failed(repo_id: str, e: Exception) -> ModelError:
    first = str(e).splitlines()[0] if str(e) else ""
    return ModelError(
        f"could not download {repo_id} from the Hugging Face hub ({type(e).__name__}: {first}). No "
        f"local folder of that name exists either. If you are offline, export a model with `edgevlm "
        f"export` or copy a model folder here and pass its path instead."
    )
