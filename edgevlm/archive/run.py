"""An archive run: plan the inputs, skip what the manifest says is finished, caption the rest with a runner
(in this process, `jobs` worker processes, or Ray actors), record every row, and sum it up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgeVLMError
from ..media.video import probe
from .manifest import Manifest
from .plan import Item, plan
from .work import remove_partials


@dataclass
class Summary:
    planned: int = 0
    skipped: int = 0  # finished by an earlier run
    done: int = 0
    errors: int = 0
    video_seconds: float = 0.0  # of the inputs captioned in this run
    wall_seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files_per_hour(self) -> float:
        return (self.done + self.errors) / self.wall_seconds * 3600 if self.wall_seconds else 0.0

    @property
    def video_hours_per_hour(self) -> float:
        return self.video_seconds / self.wall_seconds if self.wall_seconds else 0.0


@dataclass
class ArchiveJob:
    """What to caption and how. `load_kwargs` go to edgevlm.load in every worker (model, variant, threads...);
    `options` to vlm.timeline / vlm.caption (every, prompt, max_new_tokens...)."""

    inputs: list[str]
    out_dir: str
    fmt: str = "srt"
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    jobs: int = 1
    ray_address: str | None = None
    use_ray: bool = False
    actors: int = 1
    threads: int | None = None
    redo: bool = False


def caption_archive(
    job: ArchiveJob,
    on_plan: Callable[[list[Item], list[Item], float], None] | None = None,
    on_row: Callable[[dict, Item], None] | None = None,
) -> Summary:
    """Run `job`. on_plan(all items, items to do, seconds of video to do) before work starts; on_row(row, item)
    after each input (the manifest has it by then). Interrupting (KeyboardInterrupt) stops the runner; every
    input finished so far keeps its output and row."""
    t0 = time.monotonic()
    items = plan(job.inputs, job.out_dir, job.fmt)
    summary = Summary(planned=len(items))
    with Manifest(job.out_dir) as manifest:
        todo = [i for i in items if job.redo or not manifest.finished(i)]
        summary.skipped = len(items) - len(todo)
        durations = {i.input: _duration(i) for i in todo}
        if on_plan:
            on_plan(items, todo, sum(durations.values()))
        by_input = {i.input: i for i in todo}
        recorded: set[str] = set()
        rows = _runner(job, [i.to_dict() for i in todo]) if todo else iter(())
        try:
            for row in rows:
                manifest.record(row)
                recorded.add(row["input"])
                if row["status"] == "done":
                    summary.done += 1
                    summary.video_seconds += row.get("duration") or 0.0
                else:
                    summary.errors += 1
                    summary.failed.append((row["input"], row["error"]))
                if on_row:
                    on_row(row, by_input[row["input"]])
        finally:
            if hasattr(rows, "close"):
                rows.close()  # stops the workers when interrupted
            for item in todo:  # a worker stopped mid-input leaves a temp file: no half outputs stay behind
                if item.input not in recorded:
                    remove_partials(Path(item.output))
            summary.wall_seconds = time.monotonic() - t0
    return summary


def _runner(job: ArchiveJob, items: list[dict]) -> Iterator[dict]:
    if job.use_ray:
        from .ray_cluster import run_ray

        return run_ray(job.ray_address, job.load_kwargs, items, job.fmt, job.options, job.actors, job.threads)
    from .local import run_here, run_processes, threads_per_job

    threads = threads_per_job(job.jobs, job.threads)
    load_kwargs = {**job.load_kwargs, "threads": threads}
    if job.jobs > 1:
        return run_processes(load_kwargs, items, job.fmt, job.options, job.jobs)

    def load():
        from ..vlm import load as load_model

        return load_model(**load_kwargs)

    return run_here(load, items, job.fmt, job.options)


def _duration(item: Item) -> float:
    if item.kind != "video":
        return 0.0
    try:
        return probe(item.input).duration
    except EdgeVLMError:
        return 0.0  # a file that does not probe fails properly when its turn comes
