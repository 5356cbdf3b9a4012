"""A real RTSP server on 127.0.0.1 for the tests: GStreamer's gst-rtsp-server (Debian's
gir1.2-gst-rtsp-server-1.0, through PyGObject) streaming an H.264 file as a camera would, in real time.

    python rtsp_server.py PORT FILE.mp4        (serves rtsp://127.0.0.1:PORT/cam; prints "ready" once listening)

Run with a python that has PyGObject and GStreamer (Debian's /usr/bin/python3, or EDGEVLM_GST_PYTHON). The file's
H.264 is sent as it is (no encoding here); one pipeline is shared by every client, so a client that reconnects
sees the stream where it is now, as with a camera. The file ending ends the stream.
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(port: int, path: str) -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{path}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )'
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"could not listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
