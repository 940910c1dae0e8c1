"""A stub of the Kubernetes API's custom-objects endpoints that plays a training job's lifecycle.

A real HTTP server (``http.server`` in a thread) answering what the official ``kubernetes`` client
sends for ``CustomObjectsApi.create/get/delete_namespaced_custom_object``:

    POST   /apis/GROUP/VERSION/namespaces/NS/PLURAL          201, or 409 when the name exists
    GET    /apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME     the object; each GET moves it one step on
    DELETE /apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME     200, or 404

A job's status follows a script (a list of ``status`` dicts, the last one repeated): each GET
shows the next one. ``on_create(obj)`` runs when a job is created (a test stands in for the job's
pods there, e.g. writing node 0's run folder to S3). Every request is recorded in ``requests``.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

_PATH = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/?]+)"
                   r"(?:/(?P<name>[^/?]+))?")


def condition(type_: str, reason: str = "", message: str = "") -> dict:
    return {"type": type_, "status": "True", "reason": reason or type_, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


#: Lifecycles: what successive GETs show.
TRAINJOB_SUCCEEDS = [{}, {"jobsStatus": [{"name": "node", "active": 2}]},
                     {"conditions": [condition("Complete", "JobsCompleted", "TrainJob is completed")]}]
PYTORCHJOB_SUCCEEDS = [{"conditions": [condition("Created", "PyTorchJobCreated")]},
                       {"conditions": [condition("Running", "PyTorchJobRunning")]},
                       {"conditions": [condition("Succeeded", "PyTorchJobSucceeded", "job succeeded")]}]


def failing(kind: str, reason: str, message: str) -> list[dict]:
    """Created, running, then failed with ``reason`` and ``message``."""
    running = [{}, {"jobsStatus": [{"name": "node", "active": 2}]}] if kind == "trainjob" else PYTORCHJOB_SUCCEEDS[:2]
    return [*running, {"conditions": [condition("Failed", reason, message)]}]


class KubeApiStub:
    """``with KubeApiStub(script) as api: api.host`` is the URL for ``kubernetes.client.Configuration``."""

    def __init__(self, script: list[dict], on_create: Callable[[dict], Any] | None = None):
        self.script, self.on_create = script, on_create
        self.objects: dict[tuple, dict] = {}
        self.reads: dict[tuple, int] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with stub.lock:
                    stub.requests.append((method, self.path, body))
                match = _PATH.match(self.path)
                if not match:
                    return self._send(404, _status(404, "NotFound", f"no route {self.path}"))
                key = (match["group"], match["version"], match["ns"], match["plural"])
                code, answer = stub.handle(method, key, match["name"] or (body or {}).get("metadata", {}).get("name"),
                                           body, with_name=bool(match["name"]))
                self._send(code, answer)

            def do_POST(self):
                self._route("POST")

            def do_GET(self):
                self._route("GET")

            def do_DELETE(self):
                self._route("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, method: str, key: tuple, name: str | None, body: dict | None, with_name: bool):
        full = (*key, name)
        with self.lock:
            if method == "POST" and not with_name:
                if full in self.objects:
                    return 409, _status(409, "AlreadyExists", f'{key[3]} "{name}" already exists')
                obj = dict(body)
                obj["metadata"] = {**obj["metadata"], "uid": f"uid-{len(self.objects)}"}
                self.objects[full] = obj
                self.reads[full] = 0
                created = obj
            elif full not in self.objects:
                return 404, _status(404, "NotFound", f'{key[3]} "{name}" not found')
            elif method == "GET":
                step = min(self.reads[full], len(self.script) - 1)
                self.reads[full] += 1
                return 200, {**self.objects[full], "status": self.script[step]}
            elif method == "DELETE":
                return 200, self.objects.pop(full)
            else:
                return 405, _status(405, "MethodNotAllowed", method)
        if self.on_create:
            self.on_create(created)
        return 201, created

    def __enter__(self) -> "KubeApiStub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def api_client(self):
        """A real ``kubernetes.client.ApiClient`` pointed at this stub."""
        from kubernetes import client

        configuration = client.Configuration(host=self.host)
        return client.ApiClient(configuration)


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}
