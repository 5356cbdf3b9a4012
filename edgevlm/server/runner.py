"""One model, many HTTP clients: a bounded queue in front of a single worker thread.

One answer runs at a time. The model already uses every core for one answer, so running two at once would make
both slower and use more memory. Waiting requests are counted; one more than `max_queue` is refused with a
Retry-After estimate instead of waiting without bound. The worker hands text pieces to the request's event queue
as they are decoded. Between tokens it checks whether the client left or the deadline passed, and cancels the
answer if so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..engine.tile_reuse import TileReuse
from ..errors import EdgeVLMError
from .openai_api import StopStrings

log = logging.getLogger("edgevlm.server")


class QueueFull(Exception):
    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the server is busy: {depth} requests are queued; retry in {retry_after} s.")
        self.depth, self.retry_after = depth, retry_after


class TimedOut(Exception):
    pass


@dataclass
class Event:
    kind: str  # "piece" (text), "done" (summary), "error" (exception)
    text: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class Job:
    """One request's work: run `work(job)` on the worker thread, which posts Events."""

    work: Callable[[Job], None]
    deadline: float
    loop: asyncio.AbstractEventLoop  # the server's: events are handed to it thread-safely
    cancel: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    on_end: Callable[[], None] | None = None  # frees the runner's slot; called on the loop, once

    def post(self, event: Event) -> None:
        if event.kind in ("done", "error"):
            self.end()  # queued first: a client that sees this answer end finds the slot free (call_soon is FIFO)
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def end(self) -> None:
        """Free the slot (from the worker thread; idempotent). The worker posts nothing after its last event, and
        the executor has one thread, so a job admitted now still never overlaps this one on the model."""
        end, self.on_end = self.on_end, None
        if end is not None:
            self.loop.call_soon_threadsafe(end)

    async def next(self) -> Event:
        return await self.events.get()

    @property
    def should_stop(self) -> bool:
        return self.cancel.is_set() or time.monotonic() > self.deadline


class Runner:
    def __init__(self, max_queue: int, timeout: float):
        self.max_queue, self.timeout = max_queue, timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgevlm-model")
        self.in_flight = 0  # running + waiting
        self._recent: deque[float] = deque(maxlen=20)  # seconds per finished job, for Retry-After

    @property
    def waiting(self) -> int:
        return max(self.in_flight - 1, 0)

    def retry_after(self) -> int:
        per_job = sum(self._recent) / len(self._recent) if self._recent else 1.0
        return max(1, round(per_job * (self.waiting + 1)))

    def submit(self, work: Callable[[Job], None]) -> Job:
        """Admit `work` (or raise QueueFull) and queue it for the worker thread; read its events with
        `await job.next()`. Whoever submits sets `job.cancel` when it stops listening (a client gone); the slot
        frees before the job's last event reaches its client (so a client that retries at once finds it free),
        and answers never overlap on the model (one worker thread)."""
        if self.in_flight > self.max_queue:
            raise QueueFull(self.waiting, self.retry_after())
        loop = asyncio.get_running_loop()
        job = Job(work, deadline=time.monotonic() + self.timeout, loop=loop)
        self.in_flight += 1
        started = time.monotonic()
        job.on_end = lambda: self._finished(started)
        # A work that ends without a last event (its client left) frees the slot when the worker returns.
        loop.run_in_executor(self._executor, self._execute, job).add_done_callback(lambda _: job.end())
        return job

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the model's worker thread and wait for it, from another thread (a realtime session's
        caption loop): it takes its turn between the HTTP requests, never beside them."""
        return self._executor.submit(fn).result()

    def _finished(self, started: float) -> None:
        self.in_flight -= 1
        self._recent.append(time.monotonic() - started)

    @staticmethod
    def _execute(job: Job) -> None:
        if job.should_stop:  # the client left (or the deadline passed) while the job waited
            job.post(Event("error", error=TimedOut() if not job.cancel.is_set() else EdgeVLMError("cancelled")))
            return
        try:
            job.work(job)
        except BaseException as e:  # every failure reaches the request as an event; the worker lives on
            if not isinstance(e, EdgeVLMError):
                log.exception("request failed")
            job.post(Event("error", error=e))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def chat_work(
    vlm: Any,
    messages: list[dict[str, Any]],
    options: dict[str, Any],
    stops: list[str],
    reuse: TileReuse | None = None,
):
    """The worker-side body of one chat answer: prepare, encode, generate with the engine's public API, posting
    text pieces (stop strings cut, never shown) and a closing summary. With `reuse` (the request's session), the
    images are frames of one camera: their unchanged tiles keep the features of the session's last frame."""
    if reuse is not None:
        messages = [_with_reuse(m, reuse) for m in messages]

    def work(job: Job) -> None:
        t0 = time.perf_counter()
        gen, prompt, encoded = vlm.start(messages, **options)
        cutter, stopped, first = StopStrings(stops), False, True

        def tokens():
            for token in gen:
                yield token
                if job.should_stop:
                    gen.cancel()

        for piece in vlm.tokenizer.stream(tokens()):
            if first:  # the model starts its answer with a space after "Assistant:"
                piece = piece.lstrip()
                first = not piece
            text, stopped = cutter.feed(piece)
            if text:
                job.post(Event("piece", text))
            if stopped:
                gen.cancel()
                break
        if not stopped and (tail := cutter.flush()):
            job.post(Event("piece", tail))
        if gen.finish_reason == "cancelled" and not stopped:
            if job.cancel.is_set():
                return  # the client left: nobody to answer
            raise TimedOut()
        finish = "stop" if stopped or gen.finish_reason == "stop" else "length"
        if gen.constraint is not None and not gen.constraint.complete and not stopped:
            finish = "length"  # OpenAI's signal for an answer cut short: the JSON is incomplete, and says so
        job.post(
            Event(
                "done",
                info={
                    "finish_reason": finish,
                    "prompt_tokens": len(prompt.input_ids),
                    "completion_tokens": len(gen.tokens),
                    "seconds": time.perf_counter() - t0,
                    "tiles": encoded.tiles,
                    "tiles_reused": encoded.reused,
                },
            )
        )

    return work


def _with_reuse(message: dict[str, Any], reuse: TileReuse) -> dict[str, Any]:
    if isinstance(message["content"], str):
        return message
    items = [{**item, "reuse": reuse} if item["type"] == "image" else item for item in message["content"]]
    return {**message, "content": items}
