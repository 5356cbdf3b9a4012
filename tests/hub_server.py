"""A local stand-in for the Hugging Face hub (the real one is unreachable from here).

Serves one folder as repo `owner/name` over the two endpoints huggingface_hub's snapshot_download uses: the
revision info (`/api/models/{repo}/revision/{rev}`) and file resolution (`/{repo}/resolve/{rev}/{path}`, HEAD and
GET with X-Repo-Commit / ETag headers). Counts requests so tests can see what was downloaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, folder: Path, repo_id: str):
        self.folder, self.repo_id = Path(folder), repo_id
        self.downloaded: list[str] = []
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head: bool):
                path = unquote(self.path.split("?")[0])
                api = f"/api/models/{hub.repo_id}/revision/"
                resolve = f"/{hub.repo_id}/resolve/"
                if path.startswith(api):
                    info = {"id": hub.repo_id, "sha": COMMIT, "siblings": [{"rfilename": f} for f in hub._files()]}
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
                if path.startswith(resolve):
                    rel = path[len(resolve) :].split("/", 1)[1]
                    file = hub.folder / rel
                    if not file.is_file():
                        return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"}, head)
                    data = file.read_bytes()
                    etag = hashlib.sha256(data).hexdigest()
                    if not head:
                        hub.downloaded.append(rel)
                    return self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}, head)
                if path.startswith("/api/models/"):
                    return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)
                return self._send(404, b"not found", None, head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        return Handler
