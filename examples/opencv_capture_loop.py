"""Your own OpenCV capture loop feeding edgevlm: the loop reads frames as fast as the camera delivers them and
pushes each into a PushSource (never blocks, keeps only the newest); the main thread captions what is new.

    python examples/opencv_capture_loop.py BUNDLE [CAMERA_INDEX | /dev/videoN | URL | FILE] [MAX_CAPTIONS]

(`edgevlm watch SOURCE` does the same in one command; this is the shape to copy when the loop is yours, e.g.
to draw on the frames or record them too.)
"""

import os
import sys
import threading
import time

import cv2

import edgevlm
from edgevlm import PushSource


def capture_loop(cap: cv2.VideoCapture, source: PushSource, stop: threading.Event, pace: float) -> None:
    while not stop.is_set():
        ok, frame = cap.read()
        if not ok:
            break
        # ... your own per-frame work (display, recording, tracking) goes here ...
        source.push(frame, timestamp=cap.get(cv2.CAP_PROP_POS_MSEC) / 1000, color="bgr")  # OpenCV frames are BGR
        if pace:
            time.sleep(pace)  # a file plays like a camera, at its frame rate
    source.close()


def main(bundle: str, target: str, max_captions: int | None) -> None:
    vlm = edgevlm.load(bundle)
    cap = cv2.VideoCapture(int(target) if target.isdigit() else target)
    if not cap.isOpened():
        sys.exit(f"error: cannot open {target}")
    source, stop = PushSource(), threading.Event()
    pace = 1 / (cap.get(cv2.CAP_PROP_FPS) or 30) if os.path.isfile(target) else 0.0
    reader = threading.Thread(target=capture_loop, args=(cap, source, stop, pace), daemon=True)
    reader.start()
    try:
        for c in vlm.watch(source, max_new_tokens=24, max_captions=max_captions):
            print(
                f"[{c.timestamp:7.2f}s] {c.text}   (latency {c.latency_ms:.0f} ms, dropped {c.frames_dropped})",
                flush=True,
            )
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        reader.join()
        cap.release()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "0", int(sys.argv[3]) if len(sys.argv) > 3 else None)
