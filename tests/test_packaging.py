"""Packaging as pip resolves it for real (dry runs against the package registry): each install line of the README
gets exactly the ONNX Runtime it should (onnxruntime and onnxruntime-gpu install the same package and cannot live
side by side), never torch without the exporter; the built wheel carries both packages and the CLI entry point;
and the runtime works on the oldest Python that pyproject.toml admits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).resolve().parents[1]
ORT = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def resolve(spec: str, tmp_path: Path) -> set[str]:
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--resume-retries", "5", "--report", str(report), spec]
    # onnxruntime-gpu's wheel (~250 MB) is downloaded for its metadata: a dropped connection resumes, and a failed
    # resolution is tried twice more (a registry outage of a minute must not fail CI); the third failure stands.
    for attempt in range(3):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
        if out.returncode == 0 or attempt == 2:
            break
        time.sleep(15 * (attempt + 1))
    assert out.returncode == 0, out.stderr[-3000:]
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


@pytest.mark.parametrize(
    "extras,runtime",
    [("", None), ("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu"), ("gpu,export", "onnxruntime-gpu")],
)
def test_each_install_line_resolves_exactly_one_onnxruntime(extras, runtime, tmp_path):
    names = resolve(f".[{extras}]" if extras else ".", tmp_path)
    assert "edgevlm" in names and {"numpy", "tokenizers", "opencv-python-headless"} <= names
    assert sorted(names & set(ORT)) == ([runtime] if runtime else [])
    heavy = names & {"torch", "transformers", "optimum", "onnxscript", "accelerate"}
    assert bool(heavy) == ("export" in extras), heavy


def test_readme_install_lines_are_the_tested_ones():
    readme = (ROOT / "README.md").read_text()
    for line in ('pip install ".[cpu]"', 'pip install ".[gpu]"', 'pip install -e ".[cpu,export,dev]"'):
        assert line in readme, line
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cpu"] == ["onnxruntime>=1.20"] and extras["gpu"] == ["onnxruntime-gpu>=1.20"]
    assert not any("onnxruntime" in d for d in extras["export"] + extras["dev"])


def _wheel(tmp_path, env: dict | None = None) -> tuple[list[str], str]:
    import shutil

    src = tmp_path / "src"  # a clean copy: an in-tree build/ folder from an earlier build would leak stale files
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".cache", ".pytest_cache", "_kernels"
        ),
    )
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = next(tmp_path.glob("edgevlm-*.whl"))
    return zipfile.ZipFile(wheel).namelist(), out.stdout + out.stderr


KERNEL_LIBRARY = "edgevlm/_kernels/libedgevlm_kernels.so"


def test_wheel_without_a_compiler_has_no_kernels_and_says_so(tmp_path):
    """EDGEVLM_BUILD_KERNELS=0 stands for a machine without cmake, a compiler or ONNX Runtime's headers: the wheel
    still builds, without the library, and the build says so in one line."""
    names, log = _wheel(tmp_path, {"EDGEVLM_BUILD_KERNELS": "0"})
    assert KERNEL_LIBRARY not in names and "edgevlm/engine/core.py" in names
    assert "edgevlm: the kernel library was not built (EDGEVLM_BUILD_KERNELS=0)" in log


def test_wheel_holds_runtime_and_exporter(tmp_path):
    names, log = _wheel(tmp_path)
    if os.environ.get("EDGEVLM_CI"):  # CI has cmake, g++ and reaches Debian's archive for the headers
        assert KERNEL_LIBRARY in names, log[-3000:]
    elif KERNEL_LIBRARY not in names:
        assert "edgevlm: the kernel library was not built" in log
    assert {
        "edgevlm/cli.py",
        "edgevlm/vlm.py",
        "edgevlm/engine/core.py",
        "edgevlm/media/live.py",
        "edgevlm_export/pipeline.py",
        "edgevlm/py.typed",
    } <= set(names)  # py.typed: PEP 561, typed
    runtime = {n for n in names if n.startswith("edgevlm/") and n.endswith(".py")}
    assert runtime == {p.relative_to(ROOT).as_posix() for p in (ROOT / "edgevlm").rglob("*.py")}, "a module is missing"
    assert not any(n.startswith(("tests/", "tools/")) for n in names)
    assert "edgevlm_export/checkpoints.py" not in names  # test tooling stays out of the product
    wheel = zipfile.ZipFile(next(tmp_path.glob("edgevlm-*.whl")))
    meta = wheel.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert re.search(r"^Requires-Python: >=3\.10$", meta, re.M)
    entry = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "edgevlm = edgevlm.cli:main" in entry


def test_runtime_on_the_oldest_supported_python(tiny256, tmp_path):
    """EDGEVLM_PY310: a Python 3.10 venv with `pip install .[cpu]` (.ci/run makes it). It captions with the tiny
    bundle through the CLI, imports no torch, and `pip check` finds nothing broken."""
    py = os.environ.get("EDGEVLM_PY310")
    require(py, "set EDGEVLM_PY310 to a Python 3.10 venv with edgevlm[cpu] installed (.ci/py310-venv DIR makes one)")
    from conftest import random_image

    random_image(70, 90).save(tmp_path / "a.png")
    version = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert version.stdout.strip() == "(3, 10)", version
    r = subprocess.run(
        [
            py,
            "-m",
            "edgevlm.cli",
            "caption",
            str(tmp_path / "a.png"),
            "-m",
            str(tiny256[1]),
            "--max-new-tokens",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["new_tokens"] == 3
    r = subprocess.run(
        [py, "-c", "import sys, edgevlm; edgevlm.load; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.stdout.strip() == "False", r.stderr
    r = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_without_onnxruntime_the_error_says_which_extra(tmp_path):
    """`pip install edgevlm` alone has no ONNX Runtime: loading a model says how to get one, in one line."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "onnxruntime.py").write_text("raise ImportError('blocked for the test')\n")
    r = subprocess.run(
        [sys.executable, "-m", "edgevlm.cli", "caption", "x.png", "-m", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{blocker}:{ROOT}"},
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: ONNX Runtime is not installed: pip install 'edgevlm[cpu]' (or "
        "'edgevlm[gpu]' for CUDA; from a checkout: pip install '.[cpu]')."
    ]


def test_readme_stays_a_first_screen():
    """README.md is for a newcomer's first hour (at most 200 lines); the interfaces in full, contributor and CI
    details live beside it, and every document it points to exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for doc in re.findall(r"\b((?:docs/[\w-]+|CONTRIBUTING)\.md)\b", readme):
        assert (ROOT / doc).is_file(), doc


def test_c_docs_show_the_example_files_whole():
    """The C and C++ code in docs/c-api.md are examples/cpp/caption.c and caption.cpp as they are: ctest builds and
    runs those files, so the documented code is the tested code."""
    doc = (ROOT / "docs" / "c-api.md").read_text()
    for lang, name in (("c", "caption.c"), ("cpp", "caption.cpp")):
        blocks = re.findall(rf"```{lang}\n(.*?)```", doc, re.S)
        assert (ROOT / "examples" / "cpp" / name).read_text() in blocks, name
