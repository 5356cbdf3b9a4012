"""A GStreamer pipeline ending in an appsink, feeding edgevlm through a PushSource (PyGObject's GStreamer).

    python examples/gstreamer_appsink.py BUNDLE ["GSTREAMER PIPELINE ending in appsink name=sink"] [MAX_CAPTIONS]

Needs PyGObject with GStreamer (Debian: apt install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
gstreamer1.0-plugins-good; the venv must see them: python3 -m venv --system-site-packages). The default pipeline
is GStreamer's test pattern; put your camera in front, e.g. "v4l2src ! videoconvert ! ...", or
"rtspsrc location=rtsp://... ! decodebin ! videoconvert ! ...".
"""

import sys

import numpy as np

import edgevlm
from edgevlm import PushSource

DEFAULT = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! "
    "videoconvert ! video/x-raw,format=RGB ! appsink name=sink emit-signals=true max-buffers=1 drop=true"
)


def main(bundle: str, description: str, max_captions: int | None) -> None:
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError) as e:
        sys.exit(f"error: PyGObject with GStreamer is not available here ({e}); see the install line above.")
    Gst.init(None)
    vlm = edgevlm.load(bundle)
    source = PushSource()

    def on_sample(sink):  # GStreamer's streaming thread: copy the frame out and return at once
        sample = sink.emit("pull-sample")
        caps = sample.get_caps().get_structure(0)
        w, h = caps.get_value("width"), caps.get_value("height")
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            stride = len(info.data) // h
            rows = np.frombuffer(info.data, np.uint8).reshape(h, stride)[:, : w * 3]
            source.push(rows.reshape(h, w, 3), timestamp=buf.pts / Gst.SECOND)
            buf.unmap(info)
        return Gst.FlowReturn.OK

    pipeline = Gst.parse_launch(description)
    pipeline.get_by_name("sink").connect("new-sample", on_sample)
    pipeline.set_state(Gst.State.PLAYING)
    try:
        for c in vlm.watch(source, max_new_tokens=24, max_captions=max_captions, threshold=0):
            print(
                f"[{c.timestamp:7.2f}s] {c.text}   (latency {c.latency_ms:.0f} ms, dropped {c.frames_dropped})",
                flush=True,
            )
    except KeyboardInterrupt:
        pass
    finally:
        pipeline.set_state(Gst.State.NULL)
        source.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(
        sys.argv[1],
        sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else DEFAULT,
        int(sys.argv[3]) if len(sys.argv) > 3 else None,
    )
