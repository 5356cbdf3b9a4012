"""The runtime stays lean: no torch / transformers at import or while captioning, none in its requirements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HEAVY = ("torch", "transformers", "optimum", "tensorflow", "edgevlm_export")
ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_pulls_in_no_heavy_module():
    loaded = run_py(f"import sys, edgevlm; print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    assert loaded == ""


def test_captioning_imports_no_heavy_module(tiny256, tmp_path):
    _, bundle = tiny256
    from conftest import random_image

    random_image(100, 80).save(tmp_path / "a.png")
    code = (
        f"import sys, edgevlm\n"
        f"vlm = edgevlm.load({str(bundle)!r}, variant='q4')\n"
        f"r = vlm.caption({str(tmp_path / 'a.png')!r}, max_new_tokens=3)\n"
        f"assert r.new_tokens == 3\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert run_py(code) == ""


def test_cli_caption_imports_no_heavy_module(tiny256, tmp_path):
    _, bundle = tiny256
    from conftest import random_image

    random_image(60, 90).save(tmp_path / "b.png")
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['edgevlm', 'caption', {str(tmp_path / 'b.png')!r}, '-m', {str(bundle)!r}, "
        f"'--max-new-tokens', '2', '--no-split']\n"
        "try:\n    runpy.run_module('edgevlm.cli', run_name='__main__')\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert run_py(code).splitlines()[-1] == "HEAVY="


def test_install_requirements_exclude_torch_and_transformers():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [
        d.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
        for d in project["dependencies"]
    ]
    assert names and not set(names) & {"torch", "transformers", "optimum", "onnx", "onnxscript", "accelerate"}
    # what `pip install` resolves for each extra: tests/test_packaging.py
    assert "torch" in " ".join(project["optional-dependencies"]["export"])


def test_runtime_source_never_imports_export_or_torch():
    for path in (ROOT / "edgevlm").rglob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                assert "torch" not in stripped and "transformers" not in stripped, (path, line)
                if path.name != "cli.py":  # the CLI's `export` command imports the exporter lazily
                    assert "edgevlm_export" not in stripped, (path, line)


def test_video_and_live_paths_import_no_heavy_module(tiny256, tmp_path):
    from videotools import scenes

    _, bundle = tiny256
    path = scenes(tmp_path / "s.mp4", ("red", "blue"), seconds=1)
    code = (
        "import sys, edgevlm\n"
        f"vlm = edgevlm.load({str(bundle)!r})\n"
        f"segs = list(vlm.timeline({str(path)!r}, max_new_tokens=2))\n"
        f"r = vlm.ask_video({str(path)!r}, 'What happens?', max_new_tokens=2)\n"
        f"caps = list(vlm.watch({str(path)!r}, max_new_tokens=2, max_captions=1))\n"
        "assert segs and r.tiles == 2 and caps\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert run_py(code) == ""


def test_runtime_tests_run_without_torch(tiny256, tmp_path):
    """The runtime's own tests need no torch once the tiny bundles are built: conftest keeps them in a cache named
    by the exporter's sources (EDGEVLM_TEST_CACHE, default $EDGEVLM_CACHE/test-bundles), and this session has
    just filled it. Here torch, transformers and the exporter cannot be imported at all."""
    blocked = "torch", "torchvision", "transformers", "edgevlm_export"
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); import pytest; "
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--basetemp', {str(tmp_path / 'run')!r}, "
        f"'tests/test_limits.py', 'tests/test_engine.py']))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-1000:]
