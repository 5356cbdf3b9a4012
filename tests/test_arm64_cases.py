"""The aarch64 stage's comparison rule (.ci/arm64/cases.py): what fails a run and what is only reported. The stage
itself runs in .ci/run (docs/arm64.md); these cases pin the rule it applies to its numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SPEC = importlib.util.spec_from_file_location("arm64_cases", Path(__file__).parents[1] / ".ci" / "arm64" / "cases.py")
cases = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(cases)


def _record(tokens: dict[str, list[int]], logits: dict[str, np.ndarray]):
    x86 = {"cases": {k: {"tokens": t} for k, t in tokens.items()}}
    return x86, logits


def _run(key: str, tokens: list[int], logits: np.ndarray) -> dict:
    return {key: {"tokens": tokens, "logits": logits, "seconds": 1.0, "text": ""}}


ROWS = np.array([[1.0, 5.0, -2.0], [0.5, 0.1, 4.0]], dtype=np.float32)


def test_fp32_must_match_tokens_and_logits():
    x86, logits = _record({"m/fp32/a": [1, 2]}, {"m/fp32/a": ROWS})
    rows, failures = cases.compare(x86, logits, _run("m/fp32/a", [1, 2], ROWS + 1e-6))
    assert failures == [] and rows[0]["tokens_equal"] and rows[0]["max_rel_logit_diff"] < 1e-6
    _, failures = cases.compare(x86, logits, _run("m/fp32/a", [1, 0], ROWS))
    assert failures and "step 1" in failures[0]
    _, failures = cases.compare(x86, logits, _run("m/fp32/a", [1, 2], ROWS * 1.001))
    assert failures and "logits differ" in failures[0]


def test_quantized_difference_fails_only_where_x86_quantized_equals_fp32():
    tokens = {"m/fp32/a": [1, 2], "m/q4/a": [1, 2], "m/fp32/b": [1, 2], "m/q4/b": [1, 3]}
    x86, logits = _record(tokens, dict.fromkeys(tokens, ROWS))
    _, failures = cases.compare(x86, logits, _run("m/q4/a", [1, 3], ROWS * 1.05))
    assert failures and "where x86 q4 equals x86 fp32" in failures[0]
    rows, failures = cases.compare(x86, logits, _run("m/q4/b", [1, 2], ROWS * 1.05))
    assert failures == [] and rows[0]["first_difference"] == 1 and not rows[0]["x86_quantized_equals_x86_fp32"]
