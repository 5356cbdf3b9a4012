"""A camera SDK that calls you back with frames (here simulated by a thread at 50 fps), edgevlm running beside it,
and an alert callback when a caption mentions what you are waiting for.

    python examples/callback_integration.py BUNDLE [PATTERN] [SECONDS]

The SDK's callback only does `source.push(...)`: it never waits for the model, so the camera's own thread keeps
its rate however slow the model is.
"""

import sys
import threading
import time

import numpy as np

import edgevlm
from edgevlm import PushSource, Trigger


class FakeCameraSDK:
    """Stands in for a vendor SDK: calls `on_frame(rgb_array, timestamp_s)` from its own thread."""

    def __init__(self, on_frame, fps: float = 50):
        self.on_frame, self.fps = on_frame, fps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0, i = time.monotonic(), 0
        while not self._stop.is_set():
            frame = np.zeros((240, 320, 3), np.uint8)
            frame[:, :, i // 100 % 3] = 255  # the scene changes colour every 2 s
            self.on_frame(frame, time.monotonic() - t0)
            i += 1
            time.sleep(1 / self.fps)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main(bundle: str, pattern: str, seconds: float) -> None:
    vlm = edgevlm.load(bundle)
    source = PushSource()
    camera = FakeCameraSDK(lambda frame, ts: source.push(frame, timestamp=ts))
    alerts = []
    trigger = Trigger(pattern, callback=lambda c: alerts.append(c))
    camera.start()
    end = time.monotonic() + seconds
    try:
        for c in vlm.watch(source, max_new_tokens=16, trigger=trigger):
            flag = "  <-- ALERT" if c.triggered else ""
            print(f"[{c.timestamp:6.2f}s] {c.text}{flag}", flush=True)
            if time.monotonic() > end:
                break
    finally:
        camera.stop()
        source.close()
    print(
        f"{len(alerts)} alert(s) for /{pattern}/; frames pushed {source.stats.frames_read}, "
        f"dropped {source.stats.frames_dropped}"
    )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "person", float(sys.argv[3]) if len(sys.argv) > 3 else 10.0)
