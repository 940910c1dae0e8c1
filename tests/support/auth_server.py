"""An HTTP server on 127.0.0.1 that requires basic auth: MLflow's health and search routes itself,
or everything forwarded to a real MLflow server (``upstream``).

    with BasicAuthServer("alice", "s3cr3t") as server:
        server.uri()                 # http://alice:s3cr3t@127.0.0.1:PORT
        server.uri(password="bad")   # the wrong password
        server.plain_uri             # http://127.0.0.1:PORT (credentials from the environment)
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "authorization", "host", "content-length"}


class BasicAuthServer:
    """Answers only requests with ``Authorization: Basic user:password``; 401 otherwise."""

    def __init__(self, user: str, password: str, upstream: str | None = None) -> None:
        self.user, self.password, self.upstream = user, password, upstream
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.seen: list[tuple[str, str, bool]] = []  # (method, path, authorized)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply(self, status: int, body: bytes, content_type: str = "application/json",
                       headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                authorized = self.headers.get("Authorization") == outer.expected
                outer.seen.append((self.command, self.path, authorized))
                if not authorized:
                    self._reply(401, b'{"error_code": "UNAUTHENTICATED", "message": "credentials required"}',
                                headers={"WWW-Authenticate": 'Basic realm="mlflow"'})
                elif outer.upstream:
                    self._forward(body)
                elif self.path.split("?")[0] == "/health":
                    self._reply(200, b"OK", "text/plain")
                elif self.path.split("?")[0] == "/version":
                    self._reply(200, b"3.0.0", "text/plain")
                elif "/mlflow/experiments/search" in self.path:
                    self._reply(200, json.dumps({"experiments": []}).encode())
                else:
                    self._reply(404, b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "not here"}')

            def _forward(self, body: bytes) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                request = urllib.request.Request(outer.upstream.rstrip("/") + self.path, data=body or None,
                                                 headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        status, payload, kind = response.status, response.read(), response.headers.get("Content-Type")
                except urllib.error.HTTPError as e:
                    status, payload, kind = e.code, e.read(), e.headers.get("Content-Type")
                self._reply(status, payload, kind or "application/octet-stream")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def plain_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri(self, user: str | None = None, password: str | None = None) -> str:
        return f"http://{user or self.user}:{password or self.password}@127.0.0.1:{self.port}"

    def __enter__(self) -> "BasicAuthServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
