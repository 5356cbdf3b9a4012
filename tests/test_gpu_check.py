"""benchmarks/gpu_check.py, the GPU check run on a lent GPU machine (docs/gpu.md), on its CPU fallback path: the
same script end to end on the tiny checkpoint, so it is known to work when a GPU turns up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_end_to_end_on_the_cpu(tiny256, tmp_path):
    ckpt, bundle = tiny256
    out = tmp_path / "gpu.md"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            str(ckpt),
            str(bundle),
            "--providers",
            "cpu",
            "--runs",
            "1",
            "--new-tokens",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    table = out.read_text()
    for case in ("image_split", "image_no_split", "text_only"):  # fp32 on the "device" = fp32 on the CPU
        assert f"| {case} | True |" in table, table
    assert "fell back to the CPU: False" in table
    for row in (
        "| W1 | PyTorch fp32 eager (cpu)",
        "| W1 | edgevlm fp32",
        "| W2 | edgevlm fp16",
        "| resident on the device (IO binding) |",
        "| copied through the host |",
    ):
        assert row in table, table
