"""A local HTTP server that speaks the KFP v2beta1 REST routes ``kfp.Client`` (kfp 2.17) calls.

No KFP backend can run in this environment, so the submission tests talk to this server instead.
It implements, with in-memory state and generated ids, the routes the client uses in
``components.kubeflow.submission.submit``:

=======  ==========================================  ======================================
GET      /apis/v2beta1/healthz                       ``kfp.Client()`` calls it on start
GET      /apis/v2beta1/pipelines?filter=...          ``get_pipeline_id`` (display_name EQUALS)
POST     /apis/v2beta1/pipelines/upload              multipart ``uploadfile``; name etc. in the query
POST     /apis/v2beta1/pipelines/upload_version      multipart ``uploadfile``; ``pipelineid``, ``name``
GET      /apis/v2beta1/experiments?filter=...        ``get_experiment(experiment_name=...)``
POST     /apis/v2beta1/experiments                   ``create_experiment``
POST     /apis/v2beta1/runs                          ``run_pipeline``
POST     /apis/v2beta1/recurringruns                 ``create_recurring_run``
GET      /apis/v2beta1/recurringruns?filter=...      ``list_recurring_runs`` (``experiment_id``, ``namespace``)
POST     /apis/v2beta1/recurringruns/{id}:disable    ``disable_recurring_run`` (``:enable`` likewise)
DELETE   /apis/v2beta1/recurringruns/{id}            ``delete_recurring_run``
GET      /apis/v2beta1/{pipelines,experiments,runs,recurringruns}/{id}   get by id
=======  ==========================================  ======================================

Namespaces as the KFP API server (2.15) treats them: pipelines are listed and uploaded with the
``namespace`` query parameter (none: the shared ones); an experiment has the ``namespace`` of its
body, and runs and recurring runs take their experiment's. With ``multi_user=True`` the healthz
says so and an experiment without a namespace is refused, as the server refuses it.

Authentication as the gateway in front of a Kubeflow API enforces it: with ``accept`` (pairs of a
header name and its value, e.g. ``("Authorization", "Bearer T")`` or ``("Cookie", "name=value")``)
a request that carries none of them is answered 401 and recorded; every request's headers are
recorded anyway, so a test can assert what the client sent.

Every request is recorded (:class:`Request`: method, path, query, headers, JSON body or multipart
parts). Anything else answers 404 with a grpc-gateway style JSON error and is recorded in
:attr:`KfpApiServer.unknown`, so a test can assert that the client used no route this server does
not know. Failures are injected with ``fail_on`` (or :meth:`KfpApiServer.fail`)::

    with KfpApiServer(fail_on=[("POST", "/apis/v2beta1/runs", 400,
                                {"error": "bad", "code": 3, "message": "invalid parameter train_epochs"})]) as kfp:
        ...  # kfp.url is http://127.0.0.1:PORT
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Optional
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"
#: grpc codes used in the JSON errors of the KFP API server (grpc-gateway).
GRPC_INVALID_ARGUMENT, GRPC_NOT_FOUND, GRPC_UNIMPLEMENTED, GRPC_UNAUTHENTICATED = 3, 5, 12, 16


@dataclass
class Part:
    """One part of a multipart/form-data body."""

    name: str
    filename: Optional[str]
    content_type: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


@dataclass
class Request:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw_body: bytes = b""
    json: Any = None
    parts: dict[str, Part] = field(default_factory=dict)
    status: int = 0  # what the server answered
    unknown: bool = False  # a route the server does not implement

    def q(self, name: str) -> Optional[str]:
        """The (last) value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Failure:
    """Answer ``status`` with ``body`` to requests matching method and path (``times``: None is always)."""

    method: str
    path: str
    status: int
    body: Any
    times: Optional[int] = None

    def matches(self, method: str, path: str) -> bool:
        return self.method.upper() == method and self.path.rstrip("/") == path.rstrip("/") and self.times != 0


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(message: str, code: int) -> dict:
    """The JSON shape of an error of the KFP API server (grpc-gateway status)."""
    return {"error": message, "code": code, "message": message, "details": []}


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """The parts of a multipart/form-data body, by form field name."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
    if not message.is_multipart():
        raise ValueError(f"not a multipart body ({content_type})")
    parts = {}
    for sub in message.iter_parts():
        name = sub.get_param("name", header="content-disposition")
        parts[name] = Part(name=name, filename=sub.get_filename(), content_type=sub.get_content_type(),
                           data=sub.get_payload(decode=True) or b"")
    return parts


def _filter_display_name(filter_text: Optional[str]) -> Optional[str]:
    """The value of a ``display_name EQUALS`` predicate of a v2beta1 filter (the only one the client sends)."""
    if not filter_text:
        return None
    spec = json.loads(filter_text)
    for predicate in spec.get("predicates", []):
        if predicate.get("key") in ("display_name", "name") and predicate.get("operation") in (1, "EQUALS"):
            return predicate.get("stringValue", predicate.get("string_value"))
    raise ValueError(f"unsupported filter {filter_text}")


class KfpApiServer:
    """A threaded KFP v2beta1 API stand-in on 127.0.0.1 and a free port; use as a context manager."""

    def __init__(self, fail_on: Iterable[tuple] = (), multi_user: bool = False,
                 accept: Iterable[tuple[str, str]] = ()) -> None:
        self.requests: list[Request] = []
        self.failures: list[Failure] = [Failure(*f) for f in fail_on]
        self.multi_user = multi_user
        self.accept = list(accept)
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._lock = threading.RLock()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "KfpApiServer":
        owner = self

        class Handler(_Handler):
            server_state = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kfp-api-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "KfpApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test helpers ----------------------------------------------------------------------
    def fail(self, method: str, path: str, status: int, body: Any, times: Optional[int] = None) -> None:
        """Answer ``status``/``body`` to ``method path`` from now on (``times`` requests, or always)."""
        with self._lock:
            self.failures.append(Failure(method, path, status, body, times))

    def calls(self, method: Optional[str] = None, path: Optional[str] = None) -> list[Request]:
        """The recorded requests, optionally only those with this method and path."""
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method.upper()) and (path is None or r.path == path)]

    def call(self, method: str, path: str) -> Request:
        """The one request with this method and path (fails if there were none or several)."""
        found = self.calls(method, path)
        assert len(found) == 1, f"expected one {method} {path}, got {len(found)}: {self.summary()}"
        return found[0]

    @property
    def unknown(self) -> list[Request]:
        """Requests to routes this server does not implement (answered 404)."""
        with self._lock:
            return [r for r in self.requests if r.unknown]

    def summary(self) -> list[str]:
        with self._lock:
            return [f"{r.method} {r.path} -> {r.status}" for r in self.requests]

    def reset(self) -> None:
        """Forget the recorded requests (the state, e.g. uploaded pipelines, stays)."""
        with self._lock:
            self.requests.clear()

    # -- the API ---------------------------------------------------------------------------
    def enabled_recurring_runs(self, name: Optional[str] = None) -> list[dict]:
        """The enabled recurring runs (called ``name``)."""
        with self._lock:
            return [r for r in self.recurring_runs.values()
                    if r["status"] == "ENABLED" and (name is None or r["display_name"] == name)]

    def _authenticated(self, req: Request) -> bool:
        return not self.accept or any(req.header(name) == value for name, value in self.accept)

    def handle(self, req: Request) -> tuple[int, Any]:
        if not self._authenticated(req):
            return 401, _error("Unauthenticated: no valid credentials in the request", GRPC_UNAUTHENTICATED)
        with self._lock:
            for failure in self.failures:
                if failure.matches(req.method, req.path):
                    if failure.times is not None:
                        failure.times -= 1
                    return failure.status, failure.body
        route = (req.method, req.path[len(API):] if req.path.startswith(API + "/") else None)
        try:
            with self._lock:
                return self._route(req, *route)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            return 400, _error(f"bad request: {exc}", GRPC_INVALID_ARGUMENT)

    def _route(self, req: Request, method: str, sub: Optional[str]) -> tuple[int, Any]:
        parts = sub.strip("/").split("/") if sub else []
        if method == "GET" and parts == ["healthz"]:
            return 200, {"multi_user": self.multi_user}
        if method == "GET" and parts == ["pipelines"]:
            namespace = req.q("namespace") or ""
            return 200, self._list({k: p for k, p in self.pipelines.items() if p["namespace"] == namespace},
                                   "pipelines", req)
        if method == "POST" and parts == ["pipelines", "upload"]:
            return self._upload_pipeline(req)
        if method == "POST" and parts == ["pipelines", "upload_version"]:
            return self._upload_version(req)
        if method == "GET" and parts == ["experiments"]:
            namespace = req.q("namespace")
            return 200, self._list({k: e for k, e in self.experiments.items()
                                    if namespace is None or e["namespace"] == namespace}, "experiments", req)
        if method == "POST" and parts == ["experiments"]:
            return self._create_experiment(req)
        if method == "POST" and parts == ["runs"]:
            return self._create_run(req)
        if method == "POST" and parts == ["recurringruns"]:
            return self._create_recurring_run(req)
        if method == "GET" and parts == ["recurringruns"]:
            experiment, namespace = req.q("experiment_id"), req.q("namespace")
            chosen = {k: r for k, r in self.recurring_runs.items()
                      if (experiment is None or r["experiment_id"] == experiment)
                      and (namespace is None or r["namespace"] == namespace)}
            return 200, self._list(chosen, "recurringRuns", req)  # the API's JSON name of the list
        if len(parts) == 2 and parts[0] == "recurringruns" and (
                (method == "POST" and parts[1].endswith((":disable", ":enable"))) or method == "DELETE"):
            run_id, _, action = parts[1].partition(":")
            if run_id not in self.recurring_runs:
                return 404, _error(f"recurring run {run_id} not found", GRPC_NOT_FOUND)
            if method == "DELETE":
                del self.recurring_runs[run_id]
            else:
                self.recurring_runs[run_id].update(status="ENABLED" if action == "enable" else "DISABLED",
                                                   mode="ENABLE" if action == "enable" else "DISABLE",
                                                   updated_at=_now())
            return 200, {}
        stores = {"pipelines": self.pipelines, "experiments": self.experiments, "runs": self.runs,
                  "recurringruns": self.recurring_runs}
        if method == "GET" and len(parts) == 2 and parts[0] in stores:
            obj = stores[parts[0]].get(parts[1])
            if obj is None:
                return 404, _error(f"{parts[0]} {parts[1]} not found", GRPC_NOT_FOUND)
            return 200, obj
        req.unknown = True
        return 404, _error(f"{req.method} {req.path}: route not implemented by the test server", GRPC_NOT_FOUND)

    def _list(self, store: dict, key: str, req: Request) -> dict:
        name = _filter_display_name(req.q("filter"))
        items = [o for o in store.values() if name is None or o["display_name"] == name]
        # grpc-gateway omits empty fields: an empty list is an object without the list.
        return {key: items, "total_size": len(items)} if items else {}

    @staticmethod
    def _upload_file(req: Request) -> tuple[str, dict]:
        """The uploaded YAML: the pipeline spec, and the platform spec (kfp-kubernetes) when there is one.

        Like the KFP server, a two-document file is stored as ``{pipeline_spec, platform_spec}``.
        """
        part = req.parts.get("uploadfile")
        if part is None:
            raise ValueError("missing the multipart field uploadfile")
        import yaml

        try:
            docs = [d for d in yaml.safe_load_all(part.text) if d is not None]
        except yaml.YAMLError as exc:
            raise ValueError(f"the uploaded file is not YAML: {exc}") from None
        if not docs or not isinstance(docs[0], dict) or "pipelineInfo" not in docs[0]:
            raise ValueError("the uploaded file is not a KFP pipeline spec (no pipelineInfo)")
        if len(docs) == 1:
            return part.text, docs[0]
        return part.text, {"pipeline_spec": docs[0], "platform_spec": docs[1]}

    def _upload_pipeline(self, req: Request) -> tuple[int, Any]:
        _, spec = self._upload_file(req)
        info = spec.get("pipeline_spec", spec).get("pipelineInfo", {})
        name = req.q("display_name") or req.q("name") or info.get("name")
        pipeline_namespace = req.q("namespace") or ""
        if any(p["display_name"] == name and p["namespace"] == pipeline_namespace for p in self.pipelines.values()):
            return 409, _error(f"Failed to upload pipeline: pipeline {name!r} already exists", 6)
        pipeline_id = str(uuid.uuid4())
        pipeline = {"pipeline_id": pipeline_id, "display_name": name, "name": req.q("name") or name,
                    "description": req.q("description") or "", "created_at": _now(),
                    "namespace": req.q("namespace") or ""}
        self.pipelines[pipeline_id] = pipeline
        # The server creates the first version from the same file, named like the pipeline.
        self._add_version(pipeline_id, name, spec, req.q("description") or "")
        return 200, pipeline

    def _add_version(self, pipeline_id: str, name: str, spec: dict, description: str) -> dict:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "display_name": name,
                   "name": name, "description": description, "created_at": _now(), "pipeline_spec": spec}
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _upload_version(self, req: Request) -> tuple[int, Any]:
        _, spec = self._upload_file(req)
        pipeline_id = req.q("pipelineid")
        if pipeline_id not in self.pipelines:
            return 404, _error(f"Failed to create a pipeline version: pipeline {pipeline_id} not found", GRPC_NOT_FOUND)
        name = req.q("display_name") or req.q("name")
        if not name:
            return 400, _error("Failed to create a pipeline version: name is empty", GRPC_INVALID_ARGUMENT)
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            return 409, _error(f"Failed to create a pipeline version: version {name!r} already exists", 6)
        return 200, self._add_version(pipeline_id, name, spec, req.q("description") or "")

    def _create_experiment(self, req: Request) -> tuple[int, Any]:
        body = req.json or {}
        name = body.get("display_name")
        if not name:
            return 400, _error("Failed to create an experiment: display_name is empty", GRPC_INVALID_ARGUMENT)
        namespace = body.get("namespace") or ""
        if self.multi_user and not namespace:
            return 400, _error("Invalid input error: An experiment cannot have an empty namespace in multi-user mode",
                               GRPC_INVALID_ARGUMENT)
        if any(e["display_name"] == name and e["namespace"] == namespace for e in self.experiments.values()):
            return 409, _error(f"Failed to create an experiment: {name!r} already exists", 6)
        experiment = {"experiment_id": str(uuid.uuid4()), "display_name": name,
                      "description": body.get("description") or "", "created_at": _now(),
                      "namespace": namespace, "storage_state": "AVAILABLE",
                      "last_run_created_at": _now()}
        self.experiments[experiment["experiment_id"]] = experiment
        return 200, experiment

    def _namespace_of(self, body: dict) -> str:
        """A run's namespace: its experiment's (the server resolves it so)."""
        experiment = self.experiments.get(body.get("experiment_id") or "")
        return experiment["namespace"] if experiment else (body.get("namespace") or "")

    def _check_run_body(self, body: dict) -> Optional[tuple[int, Any]]:
        if body.get("experiment_id") and body["experiment_id"] not in self.experiments:
            return 404, _error(f"experiment {body['experiment_id']} not found", GRPC_NOT_FOUND)
        ref = body.get("pipeline_version_reference")
        if ref:
            version = self.versions.get(ref.get("pipeline_version_id"))
            if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
                return 404, _error(f"pipeline version {ref} not found", GRPC_NOT_FOUND)
        elif not body.get("pipeline_spec"):
            return 400, _error("a run needs pipeline_spec or pipeline_version_reference", GRPC_INVALID_ARGUMENT)
        return None

    def _create_run(self, req: Request) -> tuple[int, Any]:
        body = req.json or {}
        problem = self._check_run_body(body)
        if problem:
            return problem
        run = {**body, "run_id": str(uuid.uuid4()), "namespace": self._namespace_of(body),
               "state": "PENDING", "storage_state": "AVAILABLE",
               "created_at": _now(), "scheduled_at": _now(),
               "state_history": [{"update_time": _now(), "state": "PENDING"}]}
        self.runs[run["run_id"]] = run
        return 200, run

    def _create_recurring_run(self, req: Request) -> tuple[int, Any]:
        body = req.json or {}
        problem = self._check_run_body(body)
        if problem:
            return problem
        trigger = body.get("trigger") or {}
        if not (trigger.get("cron_schedule") or trigger.get("periodic_schedule")):
            return 400, _error("a recurring run needs a trigger", GRPC_INVALID_ARGUMENT)
        cron = (trigger.get("cron_schedule") or {}).get("cron")
        if cron is not None and len(cron.split()) != 6:  # robfig/cron with seconds, as the KFP backend parses it
            return 400, _error(f"invalid cron schedule {cron!r}: expected exactly 6 fields", GRPC_INVALID_ARGUMENT)
        mode = body.get("mode", "MODE_UNSPECIFIED")
        recurring = {**body, "recurring_run_id": str(uuid.uuid4()), "namespace": self._namespace_of(body),
                     "created_at": _now(), "updated_at": _now(),
                     "status": "ENABLED" if mode == "ENABLE" else "DISABLED",
                     "max_concurrency": str(body.get("max_concurrency", 10))}  # int64: a string in proto JSON
        self.recurring_runs[recurring["recurring_run_id"]] = recurring
        return 200, recurring


class _Handler(BaseHTTPRequestHandler):
    server_state: KfpApiServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        req = Request(method=self.command, path=url.path, query=parse_qs(url.query, keep_blank_values=True),
                      headers=dict(self.headers.items()), raw_body=raw)
        content_type = self.headers.get("Content-Type", "")
        status, payload = 400, None
        try:
            if raw and content_type.startswith("application/json"):
                req.json = json.loads(raw)
            elif raw and content_type.startswith("multipart/form-data"):
                req.parts = parse_multipart(raw, content_type)
        except ValueError as exc:
            payload = _error(f"cannot parse the request body: {exc}", GRPC_INVALID_ARGUMENT)
        state = self.server_state
        with state._lock:
            state.requests.append(req)
        if payload is None:
            try:
                status, payload = state.handle(req)
            except Exception as exc:  # a bug here must answer, not drop the connection
                status, payload = 500, _error(f"test server error: {type(exc).__name__}: {exc}", 13)
        req.status = status
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

