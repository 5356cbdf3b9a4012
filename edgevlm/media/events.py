"""Triggers that fire events, not flickers: a condition must hold before an event starts, and stay false for a
cooldown before it ends and the trigger re-arms.

A VLM's answer about one frame can change on the next for no reason in the scene (a different word, a missed
object), so an alarm on single captions fires on noise and users end up writing their own debounce. The rules
here are the ones camera NVRs use for motion: `hold` consecutive matching captions (and `hold_s` seconds since the
first) start an event; a matching caption while it runs keeps it going; `cooldown` seconds without a match (from the first caption without one) end it.
One event per run of matches, whatever flickers inside it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..records import Event, LiveCaption
from ..version import __version__
from .conditions import Condition

if TYPE_CHECKING:
    from ..engine.core import Engine

SCHEMA_FILE = Path(__file__).with_name("event.schema.json")


@cache
def event_schema() -> dict[str, Any]:
    """The JSON Schema every Event.to_dict() validates against (published as edgevlm/media/event.schema.json)."""
    return json.loads(SCHEMA_FILE.read_text())


@dataclass
class Trigger:
    """When a watch's captions make an event. Match either the caption text against `pattern` (a case-insensitive
    regular expression) or, for a structured watch (choices= / json_schema= / regex=), the answer's value against
    `when`, a condition such as "person == true and count >= 2" (see edgevlm.media.conditions).

    Args:
        pattern: regular expression searched in each caption's text.
        callback: called with the caption that starts an event (after hold), once per event.
        stop: end the watch at the first event.
        when: condition on a structured answer's value (instead of pattern).
        hold: consecutive matching captions before an event starts (1: the first match starts it).
        hold_s: and at least this many seconds (source time) from the first of them (0: no time condition).
        cooldown: seconds (source time, from the first caption without a match) before the event ends and the
            trigger re-arms; a match within them continues the same event (0: the first caption without one ends it).
        on_event: called with every Event record (start, clip, end), as they happen, on the watch's thread.

    Example:
        import edgevlm

        vlm = edgevlm.load("./smolvlm2-256m-bundle")
        door = edgevlm.Trigger(when="value == yes", hold=2, cooldown=10, on_event=lambda e: print(e.phase, e.start))
        for c in vlm.watch("clip.mp4", choices=["yes", "no"], prompt="Anyone there?", trigger=door, heartbeat=1):
            print(c.timestamp, c.value, c.triggered)
    """

    pattern: str | None = None
    callback: Callable[[LiveCaption], None] | None = None
    stop: bool = False
    when: str | None = None
    hold: int = 1
    hold_s: float = 0.0
    cooldown: float = 0.0
    on_event: Callable[[Event], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.pattern is None) == (self.when is None):
            raise InputError(
                "a Trigger needs a pattern (matched against the caption text) or when= (a condition "
                "on a structured answer), one of the two."
            )
        if isinstance(self.hold, bool) or not isinstance(self.hold, int) or not 1 <= self.hold <= 10_000:
            raise InputError(f"hold={self.hold!r}: the number of matching captions, a whole number from 1 to 10000.")
        for name in ("hold_s", "cooldown"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86_400:
                raise InputError(f"{name}={value!r}: seconds, a number from 0 to 86400.")
        try:
            self._regex = re.compile(self.pattern, re.IGNORECASE) if self.pattern is not None else None
        except re.error as e:
            raise InputError(f"pattern {self.pattern!r} is not a valid regular expression ({e}).") from None
        self._condition = Condition(self.when) if self.when is not None else None

    def matches(self, caption: LiveCaption) -> bool:
        """Whether this one caption matches (LiveCaption.triggered); events need `hold` of them."""
        if self._regex is not None:
            return self._regex.search(caption.text) is not None
        return self._condition is not None and self._condition(caption.value)

    def describe(self) -> dict[str, Any]:
        what = {"pattern": self.pattern} if self.pattern is not None else {"when": self.when}
        return {**what, "hold": self.hold, "hold_s": self.hold_s, "cooldown": self.cooldown}


class EventState:
    """One source's side of a trigger: counts the run of matches, knows whether an event is running."""

    def __init__(self, trigger: Trigger):
        self.trigger = trigger
        self.run = 0  # consecutive matching captions while armed
        self.run_start: float | None = None
        self.active: Event | None = None
        self.last_match: float | None = None
        self.false_since: float | None = None  # the first caption without a match while the event runs

    def update(self, caption: LiveCaption, matched: bool | None) -> str | None:
        """ "start" when this caption starts an event, "end" when it ends one, else None. matched None (a structured
        answer that could not complete) neither counts nor breaks a run."""
        if matched is None:
            return None
        t = caption.timestamp
        if self.active is not None:
            if matched:
                self.last_match, self.false_since = t, None
                return None
            self.false_since = t if self.false_since is None else self.false_since
            return "end" if t - self.false_since >= self.trigger.cooldown else None
        if not matched:
            self.run, self.run_start = 0, None
            return None
        self.run += 1
        self.run_start = t if self.run_start is None else self.run_start
        self.last_match = t
        if self.run >= self.trigger.hold and t - self.run_start >= self.trigger.hold_s:
            return "start"
        return None


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def new_event(state: EventState, caption: LiveCaption, source: str, model: dict[str, Any]) -> Event:
    assert state.run_start is not None
    state.active = Event(
        id=f"{caption.timestamp:011.3f}-{uuid.uuid4().hex[:8]}".replace(".", "s", 1),
        phase="start",
        source=source,
        start=state.run_start,
        fired=caption.timestamp,
        end=None,
        wall_time=now_iso(),
        text=caption.text,
        value=caption.value,
        trigger=state.trigger.describe(),
        model=model,
    )
    state.run, state.run_start = 0, None
    return state.active


def end_event(state: EventState, reason: str) -> Event:
    """The "end" record of the running event; the trigger re-arms."""
    assert state.active is not None
    record = replace(state.active, phase="end", end=state.last_match, wall_time=now_iso(), reason=reason, clip=None)
    state.active, state.run, state.run_start, state.false_since = None, 0, None, None
    return record


def fingerprint(vlm: Engine, prompt: str, generate_kw: dict[str, Any]) -> dict[str, Any]:
    """Which model, files and request said it: enough to audit an alert later or reproduce its answer."""
    from ..engine import structured

    manifest = vlm.bundle.manifest or {}
    table = manifest.get("files", {})
    files = {}
    for path in sorted(vlm.files.values()):
        rel = path.relative_to(vlm.bundle.root).as_posix()
        files[rel] = table.get(rel, {}).get("sha256")
    constraint = generate_kw.get("constraint") or structured.from_options(
        **{k: generate_kw.get(k) for k in ("choices", "json_schema", "regex", "grammar")}
    )
    return {
        "bundle": str(vlm.bundle.root),
        "source_model": manifest.get("source"),
        "variant": vlm.variant,
        "files": files,
        "edgevlm": __version__,
        "prompt": prompt,
        "constraint": None
        if constraint is None
        else {
            "kind": constraint.kind,
            "description": constraint.description,
            "grammar_sha256": hashlib.sha256(constraint.compiled.encode()).hexdigest(),
        },
    }
