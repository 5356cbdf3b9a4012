"""A doorbell camera that sends alerts with proof: a structured answer per frame, an event only when "someone is
at the door" holds for two captions in a row, no second alert until it has been false for 10 s, and for each
event the frame that fired it and a clip from 5 s before to 3 s after, in EVENTS_DIR beside events.jsonl.

    python examples/doorbell.py BUNDLE SOURCE [EVENTS_DIR] [SECONDS]

SOURCE: a camera index, /dev/videoN, an rtsp/http/udp URL or a video file (replayed in real time). Each event
record (edgevlm/media/event.schema.json) names the model, variant, file digests and prompt that said it.
"""

import sys
import time
from dataclasses import dataclass

import edgevlm


@dataclass
class Door:
    person: bool
    package: bool


def on_event(event: edgevlm.Event) -> None:
    if event.phase == "start":  # the alert: send it, with event.evidence attached
        print(f"ALERT {event.id}: someone at the door since {event.start:.1f}s, frame {event.evidence}", flush=True)
    elif event.phase == "clip":
        print(f"CLIP {event.id}: {event.clip['file']} ({event.clip['start']:.1f}-{event.clip['end']:.1f}s)", flush=True)
    else:
        print(f"END {event.id}: gone since {event.end:.1f}s", flush=True)


def main(bundle: str, source: str, events_dir: str, seconds: float) -> None:
    vlm = edgevlm.load(bundle)
    trigger = edgevlm.Trigger(when="person == true", hold=2, cooldown=10, on_event=on_event)
    start = time.monotonic()
    for c in vlm.watch(
        source,
        prompt="Is someone at the door? Is there a package? Answer in JSON.",
        json_schema=Door,
        max_new_tokens=32,
        heartbeat=1.0,  # a caption at least every second, even when nothing moves: hold and cooldown count them
        trigger=trigger,
        evidence=events_dir,
        lookback=5,
        after=3,
    ):
        print(f"[{c.timestamp:6.2f}s] {c.value}", flush=True)
        if time.monotonic() - start > seconds:
            break


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], args[2] if len(args) > 2 else "doorbell-events", float(args[3]) if len(args) > 3 else 3600)
