"""One table of defaults for Python, the CLI, the server and C (docs/design.md, "Shared options"): the C header's
EVLM_DEFAULT_* values against the Python runtime's, and the table's names against both interfaces."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import edgevlm
from edgevlm import defaults
from edgevlm.engine import providers
from edgevlm.engine.generate import GenerationConfig
from edgevlm.engine.limits import DEFAULT_MAX_IMAGE_PIXELS

ROOT = Path(__file__).resolve().parents[1]
HEADER = (ROOT / "cpp_bindings" / "include" / "edgevlm" / "edgevlm.h").read_text()


def c_defaults() -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in re.findall(r"^#define EVLM_DEFAULT_(\w+)\s+(\"[^\"]*\"|[-\d.]+f?)", HEADER, re.M):
        out[name] = value[1:-1] if value.startswith('"') else float(value.rstrip("f"))
    return out


def test_c_header_defaults_equal_python_defaults():
    c, py = c_defaults(), GenerationConfig()
    expected = {
        "MAX_NEW_TOKENS": py.max_new_tokens,
        "CAPTION_TOKENS": defaults.MAX_NEW_TOKENS["caption"],
        "LIVE_TOKENS": defaults.MAX_NEW_TOKENS["live"],
        "TEMPERATURE": py.temperature,
        "TOP_K": py.top_k,
        "TOP_P": py.top_p,
        "REPETITION_PENALTY": py.repetition_penalty,
        "MAX_IMAGE_PIXELS": DEFAULT_MAX_IMAGE_PIXELS,
        "CAPTION_PROMPT": defaults.CAPTION_PROMPT,
        "LIVE_PROMPT": defaults.FRAME_PROMPT,
        "PROVIDERS": "auto",  # Python's providers=None; "auto" is accepted by both
    }
    assert set(c) == set(expected), set(c) ^ set(expected)
    for name, value in expected.items():
        assert c[name] == value, (name, c[name], value)
    assert py.max_new_tokens == defaults.MAX_NEW_TOKENS["chat"]
    assert inspect.signature(edgevlm.load).parameters["providers"].default is None
    assert providers.choose(None) == providers.choose(c["PROVIDERS"])


def _table() -> list[list[str]]:
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index("### Shared options") :]
    section = section[: section.index("\n#", 1)]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row] for row in rows]


def test_design_table_names_exist_in_both_interfaces():
    """Each row: Python name, C name, default, meaning. The Python name is a GenerationConfig field, a load()
    parameter or a Result field; the C name a field or function of edgevlm.h."""
    rows = _table()
    assert len(rows) >= 12
    python_names = (
        {f.name for f in dataclasses.fields(GenerationConfig)}
        | set(inspect.signature(edgevlm.load).parameters)
        | {f.name for f in dataclasses.fields(edgevlm.Result)}
    )
    for py, c, default, meaning in rows:
        for name in re.findall(r"`([\w.]+)`", py):
            assert name.split(".")[-1] in python_names, (py, name)
        for name in re.findall(r"`([\w.]+)`", c):
            assert re.search(rf"\b{re.escape(name.split('.')[-1])}\b", HEADER), (c, name)
        assert default and meaning, py
