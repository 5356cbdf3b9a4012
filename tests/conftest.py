"""Shared fixtures: local SmolVLM2 checkpoints (no hub), their exported bundles, the transformers reference.

Checkpoints and bundles are built once per test session; tiny sizes keep the whole suite within minutes on a
2-core machine while keeping the real tile, patch, scale-factor and token-id geometry of each architecture.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from videotools import free_port

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def require(condition: object, reason: str) -> None:
    """A prerequisite outside Python (root, Chromium, GStreamer, another Python, the kernel library): where it is
    missing the test skips with `reason` on a developer's machine, and fails in CI (.ci/run sets EDGEVLM_CI=1,
    and provides every one of them), so nothing is ever skipped into green there."""
    if condition:
        return
    if os.environ.get("EDGEVLM_CI"):
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


ROOT = Path(__file__).resolve().parents[1]


def _bundle_cache(arch: str, variants: str) -> Path:
    """Where a built (checkpoint, bundle) pair is kept between sessions: named by the sources that make it, so a
    change to the exporter or the checkpoint tool builds afresh. The runtime's tests then run without torch on
    a machine where the cache is filled (tests/test_lean.py runs some that way)."""
    h = hashlib.sha256(f"{arch}|{variants}".encode())
    for p in sorted(
        [
            *(ROOT / "export").glob("*.py"),
            ROOT / "tools" / "checkpoints.py",
            ROOT / "edgevlm" / "engine" / "prompt.py",
            ROOT / "edgevlm" / "engine" / "kernels.py",  # the kernel graphs' rewrites
        ]
    ):
        h.update(p.name.encode() + p.read_bytes())
    base = os.environ.get("EDGEVLM_TEST_CACHE") or os.path.join(
        os.environ.get("EDGEVLM_CACHE") or os.path.join(Path.home(), ".cache", "edgevlm"), "test-bundles"
    )
    return Path(base) / f"tiny_{arch.replace('.', '_')}_{h.hexdigest()[:16]}"


def _torch_version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def _build(tmp_path_factory, arch: str, variants: str) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp(f"tiny_{arch.replace('.', '_')}")
    cached = _bundle_cache(arch, variants)
    built_with = cached / "built-with.json"
    here = _torch_version()
    if built_with.is_file() and (here is None or json.loads(built_with.read_text()).get("torch") == here):
        # a copy: a test that alters its bundle in place must not alter the cache
        shutil.copytree(cached / "ckpt", root / "ckpt")
        shutil.copytree(cached / "bundle", root / "bundle")
        return root / "ckpt", root / "bundle"
    from edgevlm_export.pipeline import export

    from tools.checkpoints import make_checkpoint

    ckpt = make_checkpoint(root / "ckpt", arch=arch, size="tiny", seed=0)
    bundle = root / "bundle"
    export(ckpt, bundle, variants, log=lambda m: None)
    staging = None
    try:  # kept for the next session; a cache that cannot be written only means building again
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_mkdirs(cached.parent)))
        shutil.copytree(ckpt, staging / "ckpt")
        shutil.copytree(bundle, staging / "bundle")
        (staging / "built-with.json").write_text(json.dumps({"torch": here}))
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(staging, cached)
    except OSError:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return ckpt, bundle


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny256(tmp_path_factory):
    """(checkpoint, bundle) for the 256M architecture at tiny size, every variant exported."""
    return _build(tmp_path_factory, "256M", "fp32,fp16,int8,q4,mixed")


@pytest.fixture(scope="session")
def tiny22b(tmp_path_factory):
    """(checkpoint, bundle) for the 2.2B architecture (patch 14, tile 384, scale 3, full MHA) at tiny size."""
    return _build(tmp_path_factory, "2.2B", "fp32")


@pytest.fixture(scope="session", params=["256M", "2.2B"])
def tiny_model(request, tiny256, tiny22b):
    return {"256M": tiny256, "2.2B": tiny22b}[request.param]


@pytest.fixture(scope="session")
def real_text_bundle(tmp_path_factory, tiny256):
    """(bundle, torch model): the full 256M text decoder with trained SmolLM2-135M weights (fp32, int8, q4) and a
    stand-in vision file; for measurements that need logits that mean something (text-only prompts)."""
    from tools.checkpoints import real_text_bundle as build

    return build(tmp_path_factory.mktemp("real256"), tiny256[1] / "onnx" / "vision_encoder.onnx")


@pytest.fixture(scope="session")
def reference_cache():
    """transformers models and processors, loaded once per checkpoint."""
    return {}


def reference(ckpt: Path, cache: dict):
    if ckpt not in cache:
        from transformers import SmolVLMForConditionalGeneration, SmolVLMProcessor

        model = SmolVLMForConditionalGeneration.from_pretrained(str(ckpt), attn_implementation="eager").eval()
        cache[ckpt] = (model, SmolVLMProcessor.from_pretrained(str(ckpt)))
    return cache[ckpt]


def random_image(h: int, w: int, seed: int = 0, channels: int = 3) -> Image.Image:
    """A smooth gradient plus noise: exercises resampling without being pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], -1)
    noise = rng.integers(-40, 40, (h, w, 3))
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    if channels == 4:
        alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA")
    return Image.fromarray(rgb, "RGB")


# Property-based tests run a bounded number of examples (hypothesis' default is 100; CI stays at that).
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True)
    _hyp_settings.register_profile("long", max_examples=2000, deadline=None)
    _hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis comes with the dev extra
    pass


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Poll `predicate` every 50 ms until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster on 127.0.0.1 (one per test module that asks): `ray start --head` in a private temp
    dir, stopped afterwards, with token authentication as docs/archive.md sets it up. The drivers get the token's
    file and not RAY_AUTH_MODE: edgevlm turns token mode on when it finds a token, as `ray start` does."""
    ray_bin = Path(sys.executable).parent / "ray"
    port = free_port()
    tmp = tmp_path_factory.mktemp("ray")
    (tmp / "auth_token").write_text(uuid.uuid4().hex)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_TMPDIR=str(tmp), RAY_AUTH_TOKEN_PATH=str(tmp / "auth_token"))
    subprocess.run(
        [
            str(ray_bin),
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        env={**env, "RAY_AUTH_MODE": "token"},
        timeout=180,
    )
    yield f"127.0.0.1:{port}", env
    subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env, timeout=120)
