"""Every code block of README.md, CONTRIBUTING.md and docs/*.md works as written (issue 24: the first hour), and
so does the Example of every public function's docstring, whose Args name each of its parameters.

Each fenced block is checked by its language:
- python and bash blocks run, each in a fresh folder (its working directory) that holds what the docs name:
  photo.jpg, a.jpg, b.jpg, door.jpg, street.jpg, car.jpg, video.mp4, clip.mp4, archive/cam1 and archive/cam2 with
  videos, my-local-checkpoint/ (a tiny local checkpoint), ./bundle and ./smolvlm2-256m-bundle (its export; left out
  where the block exports that bundle itself), and tools/ (as in the clone's root, for `python -m
  tools.checkpoints`). `python` and `edgevlm` are this test run's. The hub is a local stand-in (tests/hub_server.py)
  serving the tiny checkpoint as HuggingFaceTB/SmolVLM2-256M-Video-Instruct. A block that talks to 127.0.0.1:8000
  gets `edgevlm serve ./smolvlm2-256m-bundle` there (on another free port, written into the block, when 8000 is
  taken). The folder also has cpp_bindings/ and examples/ (the clone's), .venv/ (this run's virtual environment) and shared/
  (archive/ and bundle/), ffmpeg is on PATH (imageio-ffmpeg's), and a block that writes to ~/ gets a fresh HOME.
  Two placeholders stand for what no test machine has: a camera (`rtsp://cam/stream` becomes video.mp4) and a
  Ray cluster's head (`HEAD_IP:6379` becomes a local cluster with token authentication, as docs/archive.md
  starts one; `/shared/` the folder's shared/).
- c and cpp blocks must equal a file of examples/cpp, which ctest builds and runs.
- text blocks are synopses and pictures, not code.
A block that cannot run here says why in an HTML comment on the line above it (`<!-- not run: REASON -->`).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import random_image, require
from hub_server import HubStandIn
from videotools import ffmpeg, free_port, make, scenes

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
NOT_RUN = re.compile(r"^\s*<!-- not run: (.+?) -->\s*$")
LANGUAGES = {"python", "bash", "c", "cpp", "text"}
HUB_ID = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason, where the block says it cannot run here
    name: str = ""  # a docstring's function

    @property
    def id(self) -> str:
        return self.name or f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, language, start = m.group(1), m.group(2), i
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: a fence that never closes"
        i += 1
        above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        reason = NOT_RUN.match(above)
        out.append(Block(path, start + 1, language, "\n".join(body) + "\n", reason.group(1) if reason else None))
    return out


def public_functions() -> list:
    """The public API whose docstrings promise Args and a runnable Example (faster-whisper's and
    transformers.js' conventions)."""
    import edgevlm
    from edgevlm.media.live import watch
    from edgevlm.media.timeline import timeline

    vlm = edgevlm.VLM
    methods = ["chat", "ask", "caption", "caption_batch", "stream", "ask_video", "caption_video", "timeline", "watch"]
    methods += ["prepare", "encode", "generator", "start", "logits", "preprocess", "user_message"]
    return [edgevlm.load, *(getattr(vlm, m) for m in methods), timeline, watch, edgevlm.TileReuse, edgevlm.Trigger]


def docstring_parts(fn) -> tuple[set[str], str]:
    """(the names its Args section describes, its Example's code)."""
    doc = inspect.getdoc(fn) or ""
    args = doc.partition("\nArgs:\n")[2].partition("\n\n")[0]
    names = set()
    for line in args.splitlines():
        m = re.match(r"^ {4}([*\w][\w, *]*):", line)
        if m:
            names |= {n.strip().lstrip("*") for n in m.group(1).split(",")}
    example = doc.partition("\nExample:\n")[2]
    return names, textwrap.dedent(example).strip() + "\n" if example.strip() else ""


def example_blocks() -> list[Block]:
    out = []
    for fn in public_functions():
        _, code = docstring_parts(fn)
        source = Path(inspect.getsourcefile(fn))
        out.append(Block(source, inspect.getsourcelines(fn)[1], "python", code, None, fn.__qualname__))
    return out


ALL = [b for path in DOCS for b in blocks(path)]
RUN = [b for b in ALL if b.language in ("python", "bash") and b.not_run is None] + example_blocks()


def test_public_docstrings_have_args_and_an_example():
    missing = []
    for fn in public_functions():
        names, example = docstring_parts(fn)
        params = [p.name for p in inspect.signature(fn).parameters.values() if p.name != "self"]
        if not example:
            missing.append(f"{fn.__qualname__}: no Example")
        if set(params) - names:
            missing.append(f"{fn.__qualname__}: Args lacks {sorted(set(params) - names)}")
    assert not missing, "\n".join(missing)


def test_every_block_is_accounted_for():
    """A fence without a language, or with one this test does not know, would be silently unchecked."""
    unknown = [f"{b.id} ({b.language or 'no language'})" for b in ALL if b.language not in LANGUAGES]
    assert not unknown, "label these blocks (python, bash, c, cpp or text): " + ", ".join(unknown)
    skipped = [b for b in ALL if b.not_run is not None]
    assert all(len(b.not_run) > 15 for b in skipped)  # a reason, not a bare marker
    assert all(b.language in ("python", "bash") for b in skipped)  # only runnable blocks can be excused
    assert len(RUN) >= 12 and len(skipped) <= 10, (len(RUN), [b.id for b in skipped])


def test_c_blocks_are_examples_that_ctest_builds():
    examples = {p.read_text() for p in (ROOT / "examples" / "cpp").iterdir() if p.suffix in (".c", ".cpp")}
    # ctest builds caption.cpp itself, and examples/cpp as an installed package's user would (install_and_consume)
    cmake = (ROOT / "cpp_bindings" / "tests" / "CMakeLists.txt").read_text()
    cmake += (ROOT / "examples" / "cpp" / "CMakeLists.txt").read_text()
    for b in ALL:
        if b.language in ("c", "cpp"):
            assert b.code in examples, f"{b.id} differs from every file in examples/cpp"
    for p in (ROOT / "examples" / "cpp").iterdir():
        if p.suffix in (".c", ".cpp"):
            assert p.name in cmake, f"ctest does not build {p.name}"


# ------------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def fixtures(tiny256, tmp_path_factory) -> Path:
    """What the docs' blocks name, made once; each block gets links to it in a folder of its own."""
    root = tmp_path_factory.mktemp("docs_fixtures")
    for seed, name in enumerate(["photo.jpg", "a.jpg", "b.jpg", "door.jpg", "street.jpg", "car.jpg"]):
        random_image(360 + 40 * seed, 480, seed=seed).save(root / name, quality=90)
    make(root / "video.mp4", "testsrc", 4, H264)
    scenes(root / "clip.mp4", colors=("red", "blue"), seconds=2)
    for cam, colors in (("cam1", ("red", "green")), ("cam2", ("blue", "white"))):
        (root / "archive" / cam).mkdir(parents=True)
        scenes(root / "archive" / cam / "door.mp4", colors=colors, seconds=1)
    (root / "my-local-checkpoint").symlink_to(tiny256[0])
    for name in ("tools", "cpp_bindings", "examples"):
        (root / name).symlink_to(ROOT / name)
    (root / ".venv").symlink_to(sys.prefix)
    (root / "shared").mkdir()
    (root / "shared" / "archive").symlink_to(root / "archive")
    (root / "shared" / "bundle").symlink_to(tiny256[1])
    (root / "bin").mkdir()
    (root / "bin" / "ffmpeg").symlink_to(ffmpeg())
    return root


@pytest.fixture(scope="module")
def hub(tiny256):
    with HubStandIn(tiny256[0], HUB_ID) as server:
        yield server


@pytest.fixture(scope="module")
def server(tiny256):
    """`edgevlm serve` of the tiny bundle on 8000 (another port where 8000 is taken); started on first use."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from server_load import start_server

    procs: list[subprocess.Popen] = []

    def port() -> int:
        if not procs:
            try:
                procs.append(start_server(str(tiny256[1]), 8000))
            except RuntimeError:
                procs.append(start_server(str(tiny256[1]), free_port()))
        return int(procs[0].args[procs[0].args.index("--port") + 1])

    yield port
    for p in procs:
        p.terminate()
        p.wait(30)


def workspace(block: Block, fixtures: Path, bundle: Path, where: Path) -> Path:
    where.mkdir()
    for item in fixtures.iterdir():
        (where / item.name).symlink_to(item.resolve() if item.is_symlink() else item)
    makes_bundle = re.search(r"-o \./smolvlm2-256m-bundle\b", block.code)
    for name in ("bundle", *(() if makes_bundle else ("smolvlm2-256m-bundle",))):
        (where / name).symlink_to(bundle)
    return where


def environment(hub: HubStandIn, home: Path, bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(bin_dir), env.get("PATH", "")])
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5")
    env.pop("PYTHONPATH", None)  # the blocks see what a user's shell sees: the installed edgevlm
    return env


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs_as_written(block, fixtures, tiny256, hub, server, tmp_path, request):
    cwd = workspace(block, fixtures, tiny256[1], tmp_path / "work")
    env = environment(hub, tmp_path / "hf", fixtures / "bin")
    served_before = len(hub.downloaded)
    code = block.code
    if "127.0.0.1:8000" in code:
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{server()}")
    code = code.replace("rtsp://cam/stream", "video.mp4")
    if "HEAD_IP:6379" in code:
        address, ray_env = request.getfixturevalue("ray_cluster")
        code = code.replace("HEAD_IP:6379", address).replace("/shared/", f"{cwd}/shared/")
        env.update({k: ray_env[k] for k in ("RAY_TMPDIR", "RAY_AUTH_TOKEN_PATH")})
    if "~/" in code:
        env["HOME"] = str(tmp_path / "home")
    if "cmake " in code:
        require(shutil.which("cmake") and shutil.which("c++"), "the C block needs cmake and a C++ compiler")
    if block.language == "python":
        (cwd / "block.py").write_text(code)
        argv = [sys.executable, "block.py"]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", code]
    run = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    said = f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    assert run.returncode == 0, f"{block.id} failed (exit {run.returncode}):\n{code}\n{said}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if f"export {HUB_ID}" in code:  # the hub id was really fetched (from the stand-in), not found somewhere local
        assert len(hub.downloaded) > served_before
    if "--ray " in code:  # every video of the archive captioned on the cluster
        assert sorted(p.name for p in (cwd / "shared" / "captions").rglob("*.srt")) == ["door.srt", "door.srt"]
    if "cmake --install" in code:  # what a consumer finds under the prefix, and a watch caption per frame read
        assert (tmp_path / "home" / ".local" / "lib" / "pkgconfig" / "edgevlm.pc").is_file()
        assert re.search(r"^frame \d+ \(\d+ ms\): ", run.stdout, re.M), run.stdout[-2000:]
    shutil.rmtree(cwd / "smolvlm2-256m", ignore_errors=True)  # a hub export: the disk is shared with later tests
