"""Hub ids through huggingface_hub against a local stand-in server; the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import random_image
from hub_server import HubStandIn

REPO = "edgevlm-test/SmolVLM2-tiny"


def run_cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgevlm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def hub_env(server: HubStandIn, home: Path) -> dict:
    return {
        "HF_ENDPOINT": server.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }


def test_hub_id_downloads_only_the_chosen_variant_then_runs(tiny256, tmp_path):
    _, bundle = tiny256
    random_image(80, 120).save(tmp_path / "img.png")
    with HubStandIn(bundle, REPO) as hub:
        r = run_cli(
            "caption",
            tmp_path / "img.png",
            "-m",
            REPO,
            "--variant",
            "q4",
            "--max-new-tokens",
            "3",
            "--no-split",
            env=hub_env(hub, tmp_path / "hf"),
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
        onnx = sorted(f for f in hub.downloaded if f.startswith("onnx/"))
        assert onnx == [
            "onnx/decoder_model_merged_q4.kernels.onnx",
            "onnx/decoder_model_merged_q4.onnx",
            "onnx/embed_tokens_q4.onnx",
            "onnx/vision_encoder_q4.kernels.onnx",
            "onnx/vision_encoder_q4.onnx",
        ]
        # The snapshot lands in the Hugging Face cache layout; a second run downloads nothing new.
        assert list((tmp_path / "hf").rglob("models--edgevlm-test--SmolVLM2-tiny"))
        count = len(hub.downloaded)
        r = run_cli(
            "caption",
            tmp_path / "img.png",
            "-m",
            REPO,
            "--variant",
            "q4",
            "--max-new-tokens",
            "3",
            "--no-split",
            env=hub_env(hub, tmp_path / "hf"),
        )
        assert r.returncode == 0 and len(hub.downloaded) == count


def test_unreachable_hub_is_a_clear_error(tmp_path):
    env = {
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
    }
    r = run_cli("info", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", env=env)
    assert r.returncode == 3
    assert "could not download" in r.stderr and "pass its path" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_repo_on_hub_is_a_clear_error(tiny256, tmp_path):
    with HubStandIn(tiny256[1], REPO) as hub:
        r = run_cli("info", "someone/does-not-exist", env=hub_env(hub, tmp_path / "hf"))
    assert r.returncode == 3 and "could not download" in r.stderr and "Traceback" not in r.stderr


def test_cli_caption_ask_info(tiny256, tmp_path):
    _, bundle = tiny256
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    random_image(100, 140, seed=1).save(a)
    random_image(90, 60, seed=2).save(b)
    r = run_cli("caption", a, "-m", bundle, "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["new_tokens"] == 4 and record["tiles"] > 1 and record["prompt_tokens"] > 64
    # the default path (fp32, every tile) is the slowest: said once on stderr, with the faster choices
    hint = "note: fp32 on the CPU with 13 image tiles"
    assert r.stderr.count(hint) == 1 and "--variant mixed" in r.stderr, r.stderr
    r = run_cli("ask", a, b, "What changed?", "-m", bundle, "--max-new-tokens", "3", "--no-split", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == 2 and json.loads(r.stdout)["tiles"] == 2
    assert "note: fp32" not in r.stderr
    r = run_cli("caption", a, "-m", bundle, "--max-new-tokens", "1", "--variant", "int8")
    assert r.returncode == 0 and "note: fp32" not in r.stderr, r.stderr
    r = run_cli("ask", "What is the capital of France?", "-m", bundle, "--max-new-tokens", "3", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == 0
    # --detail trades tiles for speed: low one tile, medium the longer side at 2 tiles, high the model's rule
    tiles = {
        d: json.loads(run_cli("caption", a, "-m", bundle, "--max-new-tokens", "1", "--json", "--detail", d).stdout)[
            "tiles"
        ]
        for d in ("low", "medium", "high")
    }
    assert tiles == {"low": 1, "medium": 5, "high": record["tiles"]} and record["tiles"] == 13, tiles
    r = run_cli("caption", a, "-m", bundle, "--detail", "max")
    assert r.returncode == 2 and "--detail" in r.stderr and "low" in r.stderr
    r = run_cli("info", bundle)
    assert r.returncode == 0 and "variant q4" in r.stdout and "tokens equal=True" in r.stdout
    # each variant's measured agreement, and what tokens equal=False means for a quantized one
    assert re.search(r"variant fp32 .*top-1 agreement 100\.0 %", r.stdout) and "expected there" in r.stdout
    info = json.loads(run_cli("info", bundle, "--json").stdout)
    assert info["verification"]["fp32"]["tokens_equal"] is True and "CPUExecutionProvider" in info["providers_auto"]


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "does not exist"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n garbage", "corrupt|truncated|not an image"),
        (b"hello world", "not an image"),
    ],
)
def test_cli_bad_images_exit_2_without_traceback(tiny256, tmp_path, content, needle):
    import re

    path = tmp_path / "input.png"
    if content is not None:
        path.write_bytes(content)
    r = run_cli("caption", path, "-m", tiny256[1], "--max-new-tokens", "2")
    assert r.returncode == 2
    assert re.search(needle, r.stderr) and "Traceback" not in r.stderr


def test_cli_unknown_variant_and_provider(tiny256, tmp_path):
    random_image(50, 50).save(tmp_path / "a.png")
    r = run_cli("caption", tmp_path / "a.png", "-m", tiny256[1], "--variant", "int2")
    assert r.returncode == 3 and "int2" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("caption", tmp_path / "a.png", "-m", tiny256[1], "--providers", "cuda")
    assert r.returncode == 3 and "not available" in r.stderr and "Traceback" not in r.stderr


def test_providers_choice_and_fallback_flag(tiny256):
    import edgevlm
    from edgevlm.engine import providers

    assert providers.choose(None)[-1] == "CPUExecutionProvider"
    assert providers.choose("cpu") == ["CPUExecutionProvider"]
    vlm = edgevlm.load(tiny256[1], providers="cpu", threads=1, memory_arena=False)
    assert vlm.providers["decoder_model_merged"] == ["CPUExecutionProvider"]
    assert vlm.fell_back_to_cpu is False


def test_openvino_provider_only_when_asked_for(monkeypatch):
    """Measured slower than the CPU provider (docs/benchmarks.md): installed, it is still not chosen automatically."""
    from edgevlm.engine import providers

    monkeypatch.setattr(providers, "available", lambda: ["OpenVINOExecutionProvider", "CPUExecutionProvider"])
    assert providers.choose(None) == ["CPUExecutionProvider"]
    assert providers.choose("openvino") == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]


def test_cli_bench_reports_every_measure(tiny256):
    r = run_cli("bench", tiny256[1], "--variants", "fp32,q4", "--runs", "1", "--new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [x["variant"] for x in data["results"]] == ["fp32", "q4"]
    for x in data["results"]:
        assert x["new_tokens"] == 4  # end-of-sequence ignored: always the asked length
        assert x["prompt_tokens"] >= 64 + 10 and x["vision_ms_per_tile"] > 0 and x["decode_tokens_per_s"] > 0
        assert x["peak_rss_mb"] > 0 and x["bundle_mb"] > 0
    assert data["results"][1]["bundle_mb"] < data["results"][0]["bundle_mb"]
    assert data["import_s"] > 0


def _onnx(hub) -> list[str]:
    return sorted({f for f in hub.downloaded if f.startswith("onnx/")})


@pytest.mark.parametrize(
    "variant,expected",
    [
        # (a quantized vision encoder and a 4-bit decoder come with their kernel graphs, 0.6 and 0.12 MB at full
        # size: engine/kernels.py)
        (
            "mixed",
            [
                "onnx/decoder_model_merged_q4.kernels.onnx",
                "onnx/decoder_model_merged_q4.onnx",
                "onnx/embed_tokens_q4.onnx",
                "onnx/vision_encoder_int8.kernels.onnx",
                "onnx/vision_encoder_int8.onnx",
            ],
        ),
        (
            {"vision": "int8", "decoder": "q4"},
            [
                "onnx/decoder_model_merged_q4.kernels.onnx",
                "onnx/decoder_model_merged_q4.onnx",
                "onnx/embed_tokens.onnx",
                "onnx/vision_encoder_int8.kernels.onnx",
                "onnx/vision_encoder_int8.onnx",
            ],
        ),
    ],
)
def test_hub_download_reads_the_manifest_first_then_fetches_one_variant(tiny256, tmp_path, variant, expected):
    with HubStandIn(tiny256[1], REPO) as hub:
        assert load_from_hub(hub, tmp_path, variant) == "2"
        assert _onnx(hub) == expected


def load_from_hub(hub, tmp_path, variant) -> str:
    """edgevlm.load(hub id) in a fresh process (huggingface_hub reads its endpoint settings at import)."""
    code = (
        "import json, sys, numpy as np, edgevlm\n"
        "vlm = edgevlm.load(sys.argv[1], variant=json.loads(sys.argv[2]), progress=False)\n"
        "print(vlm.caption(np.zeros((40, 50, 3), np.uint8), max_new_tokens=2).new_tokens)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, REPO, json.dumps(variant)],
        capture_output=True,
        text=True,
        env={**os.environ, **hub_env(hub, tmp_path / "hf")},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_hub_layout_without_manifest_fetches_one_variant_by_suffix(tiny256, tmp_path):
    from hostile_tools import link_copy

    folder = link_copy(tiny256[1], tmp_path / "official")
    (folder / "edgevlm.json").unlink()
    with HubStandIn(folder, REPO) as hub:
        assert load_from_hub(hub, tmp_path, "int8") == "2"
        assert _onnx(hub) == [
            "onnx/decoder_model_merged_int8.onnx",
            "onnx/embed_tokens_int8.onnx",
            "onnx/vision_encoder_int8.onnx",
        ]


@pytest.mark.parametrize("manifest", [True, False])
def test_info_on_a_hub_id_downloads_no_onnx_file(tiny256, tmp_path, manifest):
    from hostile_tools import link_copy

    folder = link_copy(tiny256[1], tmp_path / "repo")
    if not manifest:
        (folder / "edgevlm.json").unlink()
    with HubStandIn(folder, REPO) as hub:
        r = run_cli("info", REPO, "--json", env=hub_env(hub, tmp_path / "hf"))
        assert r.returncode == 0, r.stderr
        assert _onnx(hub) == []
    data = json.loads(r.stdout)
    assert {"fp32", "fp16", "int8", "q4"} <= set(data["variants"]) and data["default_variant"] == "fp32"
    assert data["bundle"] is manifest and ("variant_bytes" in data) is manifest
