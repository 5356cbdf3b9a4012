"""A camera that drives an alarm from a structured answer, not from prose: every caption is a `Scene` (a dataclass
turned into a JSON schema), and the trigger fires on a field.

    python examples/structured_alarm.py BUNDLE SOURCE [MAX_CAPTIONS]

SOURCE: a camera index, /dev/videoN, an rtsp/http/udp URL or a video file (replayed in real time).
"""

import sys
from dataclasses import dataclass
from typing import Literal

import edgevlm


@dataclass
class Scene:
    person: bool
    people: Literal[0, 1, 2, 3, 4, 5]
    activity: Literal["walking", "standing", "sitting", "none", "other"]


def alarm(caption: edgevlm.LiveCaption) -> None:
    scene: Scene = caption.value
    print(f"ALARM at {caption.timestamp:.1f}s: {scene.people} people, {scene.activity}", flush=True)


def main(bundle: str, source: str, max_captions: int) -> None:
    vlm = edgevlm.load(bundle)
    trigger = edgevlm.Trigger(callback=alarm, when="person == true or people >= 1")
    for c in vlm.watch(
        source,
        prompt="Is there a person? Answer in JSON.",
        json_schema=Scene,
        max_new_tokens=64,
        trigger=trigger,
        max_captions=max_captions,
    ):
        print(f"[{c.timestamp:6.2f}s] {c.value}  ({c.latency_ms:.0f} ms)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 10)
