"""Captions of a live source as they happen: newest frame only, unchanged scenes skipped, optional trigger.

The loop takes the newest frame from the source (older ones were dropped by the source's one-frame slot), lets
the motion gate throw away frames that show nothing new, captions the rest and yields LiveCaption records with
their timing, so a caller sees how stale each caption is and how many frames went by uncaptioned.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from .. import defaults
from ..engine.detail import tiling
from ..engine.tile_reuse import TileReuse
from ..errors import IncompleteAnswerError, InputError
from ..records import Event, LiveCaption
from .budget import Budget
from .events import EventState, Trigger, end_event, fingerprint, new_event
from .evidence import EventLog
from .lookback import FrameRing
from .motion import MotionGate
from .sources import LiveSource, open_source

if TYPE_CHECKING:
    from ..engine.core import Engine

DEFAULT_LIVE_PROMPT = defaults.FRAME_PROMPT
CONSTRAINTS = ("choices", "json_schema", "regex", "grammar", "constraint")
__all__ = ["DEFAULT_LIVE_PROMPT", "Trigger", "watch"]  # Trigger lives in events.py; imported here as before


def watch(
    vlm: Engine,
    source: str | int | LiveSource | Sequence[str | int | LiveSource],
    *,
    prompt: str = DEFAULT_LIVE_PROMPT,
    max_new_tokens: int | None = None,
    threshold: float = 6.0,
    min_interval: float = 0.0,
    heartbeat: float | None = None,
    split: bool = False,
    longest_edge: int | None = None,
    reuse_tiles: bool = True,
    budget_s: float | None = None,
    trigger: Trigger | None = None,
    evidence: str | os.PathLike | None = None,
    lookback: float = 0.0,
    after: float = 0.0,
    max_captions: int | None = None,
    source_options: dict | None = None,
    **generate_kw: Any,
) -> Iterator[LiveCaption]:
    """Yield a LiveCaption for each frame worth describing until the sources end (or max_captions).

    Sources opened here are closed when the generator ends, whatever ends it. A failed source raises its
    SourceError after the captions it gave (with several sources, once the others have ended too). With a
    constraint (choices=, json_schema=, regex=), a frame whose answer cannot finish within max_new_tokens gives a
    caption with `error` set and no value (it never triggers); the watch goes on.

    Args:
        vlm: the loaded model (`VLM.watch` passes itself).
        source: a camera index, /dev/videoN, stream URL, video file (replayed in real time) or a LiveSource such
            as PushSource, or a list of them: then each round takes the newest frame of every source that shows
            something new, and captions them together (resized side by side, decoded as one batch:
            Engine.caption_batch), each caption naming its source.
        prompt: the instruction per frame (default edgevlm.defaults.FRAME_PROMPT).
        max_new_tokens: per caption (default 32).
        threshold: motion-gate level (mean grey-level difference, 0-255) under which a frame is 'nothing new'
            (0 captions every frame it gets to).
        min_interval: at least this many seconds between caption starts, per source.
        heartbeat: caption an unchanged scene anyway after this many seconds.
        split: False captions each frame as one tile (fast); True uses the image grid.
        longest_edge: with split, resize each frame to this many pixels along its longer side before cutting it
            into tiles (as `Engine.ask`; the CLI's --detail medium).
        reuse_tiles: each source keeps its last frame's tiles and their features (an edgevlm.TileReuse), so a
            split frame runs the encoder only for the tiles that changed; exact (the same tokens), on by default.
            The caption's timings say how many tiles were encoded and reused.
        budget_s: seconds from a frame's capture to its caption. The first frame calibrates this machine (four
            short captions); then the detail level and answer length (up to max_new_tokens, or only the detail
            with a structured answer) are chosen to keep each caption within it, and re-chosen as captions run late
            (a busier machine: at once) or early (with room to spare). Each caption's `plan` says what was in
            force; split and longest_edge are the plan's. A budget below what the cheapest plan takes here is an
            InputError.
        trigger: a Trigger (a pattern or a condition on a structured answer, hold, cooldown, callbacks, stop): a
            run of matching captions is one event (edgevlm.Event records: start, clip, end), given to the
            trigger's on_event, set on the caption it starts or ends (LiveCaption.event), and written to evidence.
        evidence: a folder for events.jsonl and each event's evidence: the frame that fired it (<id>.jpg) and, with
            lookback or after, a clip (<id>.mp4); every file is written whole or not at all.
        lookback: seconds of video before the event's first matching caption that its clip starts with (each
            source keeps its recent frames, JPEG-compressed at up to 10 per second, within 32 MB).
        after: seconds of video after the caption that fired the event that its clip goes on for.
        max_captions: stop after this many captions.
        source_options: options for sources opened here (retry_for=, ...: edgevlm.media.sources.open_source).
        **generate_kw: generation options, as `Engine.ask`.

    Example:
        import edgevlm

        vlm = edgevlm.load("./smolvlm2-256m-bundle")
        alarm = edgevlm.Trigger(when="person == true", callback=lambda c: print("alarm at", c.timestamp))
        schema = {"type": "object", "properties": {"person": {"type": "boolean"}}, "required": ["person"]}
        for c in vlm.watch("clip.mp4", json_schema=schema, trigger=alarm, max_captions=2):
            print(c.timestamp, c.value)
    """
    # a list or tuple is several sources; anything else (a Path included) is one
    given = list(source) if isinstance(source, (list, tuple)) else [cast("str | int | LiveSource", source)]
    if not given:
        raise InputError("watch needs at least one source.")
    if trigger is not None and not isinstance(trigger, Trigger):
        raise InputError("trigger= takes an edgevlm.Trigger, such as Trigger(when='person == true', hold=2).")
    for name, value in (("lookback", lookback), ("after", after)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 600:
            raise InputError(f"{name}={value!r}: seconds of video for an event's clip, a number from 0 to 600.")
    if evidence is None and (lookback or after):
        raise InputError("lookback= and after= make clips for the evidence folder: give evidence= (--evidence DIR).")
    if evidence is not None and trigger is None:
        raise InputError("evidence= records events: give a trigger (--trigger) to say what an event is.")
    tokens = defaults.task_default(max_new_tokens, generate_kw.get("config"), "live")
    constrained = any(generate_kw.get(k) is not None for k in CONSTRAINTS)
    budget = (
        None
        if budget_s is None
        else Budget(budget_s, max_new_tokens=max_new_tokens if not constrained else tokens, fixed_tokens=constrained)
    )
    feeds: list[_Feed] = []
    count = 0
    events = _Events(vlm, trigger, prompt, generate_kw, lookback, after) if trigger is not None else None
    if events is not None and evidence is not None:  # checked writable now, before any frame is read
        events.log = EventLog(evidence)
    completed = False
    try:
        for s in given:  # inside the try: a source that fails to open closes the ones opened before it
            feeds.append(_Feed(s, source_options, threshold, reuse_tiles))
            if events is not None:
                events.attach(feeds[-1])
        if len(feeds) > 1:  # each caption says where it came from; sources of equal names get their position
            names = [f.src.name for f in feeds]
            for i, f in enumerate(feeds):
                f.name = names[i] if names.count(names[i]) == 1 else f"{names[i]}#{i + 1}"
        if budget is not None:
            budget.sources = len(feeds)
        while max_captions is None or count < max_captions:
            ready = [
                (f, frame)
                for f in feeds
                if (frame := f.next_frame(min_interval, heartbeat, 0.25 if len(feeds) == 1 else 0.0))
            ]
            if not ready:
                if all(f.src.finished for f in feeds):
                    break
                if len(feeds) > 1:
                    time.sleep(0.01)
                continue
            ready = ready[: None if max_captions is None else max_captions - count]
            shape = {"split": split, "longest_edge": longest_edge}
            if budget is not None:
                if budget.plan is None:
                    _calibrate(vlm, budget, ready[0][1], prompt, generate_kw)
                assert budget.plan is not None
                shape = tiling(budget.plan.detail, vlm.spec.tile)
                shape.setdefault("split", True)
                tokens = budget.plan.max_new_tokens
            plan = budget.plan.to_dict() if budget is not None and budget.plan is not None else None
            start = time.monotonic()
            for f, _ in ready:
                f.last_start = start
            answers = _caption(
                vlm,
                [frame.image for _, frame in ready],
                [f.tiles for f, _ in ready],
                tokens,
                prompt,
                shape,
                generate_kw,
            )
            done = time.monotonic()
            if budget is not None and answers:
                first = ready[0][1]
                budget.observe(answers[0][0], done - first.captured, start - first.captured)
            stop = False
            for (f, frame), (r, error) in zip(ready, answers):
                caption = f.record(frame, r, error, start, done)
                caption.plan = plan
                count += 1
                if events is not None:
                    stop = events.update(f, caption, frame.image, error) and trigger is not None and trigger.stop
                yield caption
                if stop:
                    break
            if stop:
                break
        for f in feeds:
            if f.src.error is not None:
                raise f.src.error
        completed = True
    except GeneratorExit:  # the caller stopped iterating: a deliberate end, so clips are written with what they have
        completed = True
        raise
    finally:
        try:
            if events is not None:
                events.finish(feeds, wait=completed)
        finally:
            for f in feeds:
                if f.own:
                    f.src.close()


class _Feed:
    """One source of a watch: its newest frame, its motion gate and counters."""

    def __init__(self, source: str | int | LiveSource, options: dict | None, threshold: float, reuse_tiles: bool):
        self.own = not isinstance(source, LiveSource)
        self.tiles = TileReuse() if reuse_tiles else None
        self.src = open_source(source, **(options or {}))
        self.gate, self.static = MotionGate(threshold), 0
        self.last_start: float | None = None
        self.name: str | None = None  # set when the watch has several sources
        self.events: EventState | None = None
        self.ring: FrameRing | None = None

    def next_frame(self, min_interval: float, heartbeat: float | None, timeout: float):
        """The newest frame if it is worth a caption now, else None (counted as static when the gate says so)."""
        frame = self.src.get(timeout=timeout)
        if frame is None:
            return None
        now = time.monotonic()
        if self.last_start is not None and now - self.last_start < min_interval:
            return None
        due = heartbeat is not None and self.last_start is not None and now - self.last_start >= heartbeat
        if not self.gate.changed(frame.image) and not due:
            self.static += 1
            return None
        return frame

    def record(self, frame, r, error: str | None, start: float, done: float) -> LiveCaption:
        s = self.src.stats
        return LiveCaption(
            timestamp=round(frame.timestamp, 3),
            text=r.text,
            value=r.value,
            wall_time=time.time(),
            frame_age_ms=round((start - frame.captured) * 1e3, 1),
            latency_ms=round((done - frame.captured) * 1e3, 1),
            frames_read=s.frames_read,
            frames_dropped=s.frames_dropped,
            frames_static=self.static,
            reconnects=s.reconnects,
            timings={
                "vision_ms": round(r.vision_ms, 1),
                "prefill_ms": round(r.prefill_ms, 1),
                "total_ms": round(r.total_ms, 1),
                "new_tokens": r.new_tokens,
                "tiles": r.tiles,
                "tiles_reused": r.reused_tiles,
            },
            error=error,
            source=self.name,
        )


class _Events:
    """A watch's trigger at work: each source's event state, the evidence folder, clips and callbacks."""

    def __init__(self, vlm: Engine, trigger: Trigger, prompt: str, generate_kw: dict, lookback: float, after: float):
        self.trigger, self.lookback, self.after = trigger, lookback, after
        self.log: EventLog | None = None
        self.model = fingerprint(vlm, prompt, generate_kw)

    def attach(self, feed: _Feed) -> None:
        feed.events = EventState(self.trigger)
        if self.log is not None and (self.lookback or self.after):
            log = self.log
            feed.ring = FrameRing(max(self.lookback, 0.001), lambda clip: log.write_clip(cast(Event, clip.key), clip))
            feed.src.add_tap(feed.ring.add)

    def update(self, feed: _Feed, caption: LiveCaption, image: Any, error: str | None) -> bool:
        """Whether this caption started an event. A caption with an error neither matches nor breaks a run."""
        assert feed.events is not None
        self._deliver_clips()
        caption.triggered = error is None and self.trigger.matches(caption)
        phase = feed.events.update(caption, None if error is not None else caption.triggered)
        if feed.ring is not None:  # a run building up to an event keeps its lookback frames
            feed.ring.pin = feed.events.run_start
            caption.timings["lookback_bytes"] = feed.ring.nbytes  # within the ring's cap (lookback.py)
        if phase == "start":
            event = new_event(feed.events, caption, feed.name or feed.src.name, self.model)
            if self.log is not None:
                event.evidence = self.log.write_frame(event.id, image)
            if feed.ring is not None:
                feed.ring.start_clip(event, event.start - self.lookback, event.fired + self.after)
            caption.event = event
            self._emit(event)
            if self.trigger.callback is not None:
                self.trigger.callback(caption)
            return True
        if phase == "end":
            caption.event = end_event(feed.events, "cooldown")
            self._emit(caption.event)
        return False

    def finish(self, feeds: list[_Feed], wait: bool) -> None:
        """The watch ends: running events end ("source ended"), clips still collecting are written with what
        they have (wait) or dropped (an error or an interrupt: nothing half-written is left)."""
        for f in feeds:
            if f.ring is not None:
                f.src.remove_tap(f.ring.add)
                if wait:
                    f.ring.flush()
        try:
            for f in feeds:
                if f.events is not None and f.events.active is not None:
                    self._emit(end_event(f.events, "source ended"))
            if self.log is not None:
                self.log.drain(wait=wait)
                self._deliver_clips()
        finally:
            if self.log is not None:
                self.log.close()

    def _deliver_clips(self) -> None:
        if self.log is not None:
            for record in self.log.finished():
                self._emit(record)

    def _emit(self, event: Event) -> None:
        if self.log is not None:
            self.log.record(event)
        if self.trigger.on_event is not None:
            self.trigger.on_event(event)


def _calibrate(vlm: Engine, budget: Budget, frame: Any, prompt: str, generate_kw: dict[str, Any]) -> None:
    """The budget's measurements, on the first frame (no structured answer: eight tokens may not complete one)."""
    plain = {k: v for k, v in generate_kw.items() if k not in CONSTRAINTS and k != "ignore_eos"}
    height, width = frame.image.shape[:2]

    def caption(image: Any, detail: str, max_new_tokens: int) -> Any:
        return vlm.caption(
            image,
            max_new_tokens=max_new_tokens,
            prompt=prompt,
            cache=False,
            ignore_eos=True,
            **tiling(detail, vlm.spec.tile),
            **plain,
        )

    budget.calibrate(vlm, frame.image, (width, height), caption)


def _caption(
    vlm: Engine,
    images: list,
    reuse: list[TileReuse | None],
    max_new_tokens: int | None,
    prompt: str,
    tiling: dict[str, Any],
    generate_kw: dict[str, Any],
) -> list[tuple[Any, str | None]]:
    """(Result, error) per image: one batch for several unconstrained frames; otherwise one by one, where an
    answer that cannot complete becomes a caption with `error` set."""
    constrained = any(generate_kw.get(k) is not None for k in CONSTRAINTS)
    if len(images) > 1 and not constrained:
        return [
            (r, None)
            for r in vlm.caption_batch(
                images,
                max_new_tokens=max_new_tokens,
                prompt=prompt,
                cache=False,
                reuse=reuse,
                **tiling,
                **generate_kw,
            )
        ]
    out: list[tuple[Any, str | None]] = []
    for image, tiles in zip(images, reuse):
        try:
            out.append(
                (
                    vlm.caption(
                        image,
                        max_new_tokens=max_new_tokens,
                        prompt=prompt,
                        cache=False,
                        reuse=tiles,
                        **tiling,
                        **generate_kw,
                    ),
                    None,
                )
            )
        except IncompleteAnswerError as e:  # one frame's structured answer did not fit: say so, go on
            out.append((e.result, str(e)))
    return out
