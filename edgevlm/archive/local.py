"""Archive runners on one machine: in this process, or `jobs` worker processes that each load the model once.

Threads are split between the workers (cores // jobs each), so two workers on two cores do not fight over the
same cores. Rows come back to the caller (the one manifest writer) as each input finishes, in finishing order.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .work import caption_item

_worker: dict[str, Any] = {}  # per worker process: the loaded model and the run's settings


def threads_per_job(jobs: int, threads: int | None) -> int:
    return threads or max(1, (os.cpu_count() or 1) // jobs)


def run_here(load: Callable[[], Any], items: Iterable[dict], fmt: str, options: dict) -> Iterator[dict]:
    vlm = load()
    for item in items:
        yield caption_item(vlm, item, fmt, options)


def run_processes(load_kwargs: dict, items: list[dict], fmt: str, options: dict, jobs: int) -> Iterator[dict]:
    """Rows from `jobs` spawned worker processes. Closing the iterator early (Ctrl-C, SIGTERM) terminates the
    workers; an input a worker was on has no row and no output, so the next run does it again."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding ONNX Runtime threads
    pool = ctx.Pool(jobs, initializer=_init_worker, initargs=(load_kwargs, fmt, options))
    try:
        yield from pool.imap_unordered(_caption_in_worker, items, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _init_worker(load_kwargs: dict, fmt: str, options: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop; it terminates the pool
    from ..vlm import load

    _worker.update(vlm=load(**load_kwargs), fmt=fmt, options=options)


def _caption_in_worker(item: dict) -> dict:
    return caption_item(_worker["vlm"], item, _worker["fmt"], _worker["options"])
