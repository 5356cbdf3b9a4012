"""Caption one archive item: the unit of work every runner (in-process, worker processes, Ray actors) repeats.

The output is written atomically (a hidden temp file renamed at the end), so an input has either its complete
output or none: an error or an interruption discards the temp file, and a worker killed outright leaves only a
`.NAME.*.partial` file, which `remove_partials` clears before the input is done again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..engine.bundle_format import sha256_file
from ..engine.detail import tiling
from ..errors import EdgeVLMError
from ..media.captions import CaptionWriter
from ..media.outputs import OutputStream, OutputTarget
from ..media.timeline import DEFAULT_TIMELINE_PROMPT
from ..media.video import probe


def caption_item(vlm: Any, item: dict[str, Any], fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    """Caption `item` (an Item as a dict) into its output; the manifest row. Input errors become an error row;
    anything else (a bug, an interruption) propagates."""
    t0 = time.perf_counter()
    row = {
        "input": item["input"],
        "output": item["output"],
        "kind": item["kind"],
        "input_size": item["size"],
        "input_mtime_ns": item["mtime_ns"],
        "worker": f"{os.uname().nodename}:{os.getpid()}",
    }
    output = Path(item["output"])
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_partials(output)
        if item["kind"] == "video":
            row.update(_video(vlm, item["input"], output, fmt, options))
        else:
            row.update(_image(vlm, item["input"], output, fmt, options))
        row.update(status="done", sha256=sha256_file(output), error=None)
    except EdgeVLMError as e:
        row.update(status="error", sha256=None, error=str(e))
    row["seconds"] = round(time.perf_counter() - t0, 3)
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return row


def _video(vlm: Any, path: str, output: Path, fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    duration = probe(path).duration
    writer = CaptionWriter(fmt, OutputTarget(output, inputs=[path]))
    try:
        opts = {"prompt": DEFAULT_TIMELINE_PROMPT, **{k: v for k, v in options.items() if k != "detail"}}
        for segment in vlm.timeline(path, **opts):
            writer.write(segment)
        writer.commit()
    except BaseException:
        writer.discard()  # half a timeline is no output: resuming does the input again
        raise
    return {"duration": round(duration, 3), "segments": writer.count}


def _image(vlm: Any, path: str, output: Path, fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    not_for_images = ("every", "scene", "threshold", "sample_fps", "budget_per_minute", "detail")
    opts = {k: v for k, v in options.items() if k not in not_for_images}
    opts.update(tiling(options.get("detail"), vlm.spec.tile))
    r = vlm.caption(path, **opts)
    stream = OutputStream(OutputTarget(output, inputs=[path]), "atomic")
    try:
        stream.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" if fmt == "jsonl" else r.text + "\n")
        stream.commit()
    except BaseException:
        stream.discard()
        raise
    return {"duration": 0.0, "segments": 1}


def remove_partials(output: Path) -> None:
    """Temp files a killed worker left for this output (an interrupted worker removes its own)."""
    for stale in output.parent.glob(f".{output.name}.*.partial"):
        stale.unlink(missing_ok=True)
