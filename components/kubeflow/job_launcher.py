"""Submit a training job to the Kubernetes API, wait for it, and tell how it ended.

Uses the official ``kubernetes`` client's CustomObjectsApi (create, get, delete). In a pipeline
pod the client is configured from the pod's service account (:func:`in_cluster`), in the pod's
namespace; the account needs the Role rules of ``manifests/base/rbac.yaml`` on ``trainjobs``
(trainer.kubeflow.org) or ``pytorchjobs`` (kubeflow.org).

Policy: a job is named after the KFP run, so a rerun of the step (in-process retry, KFP pod retry)
finds the job it created and waits for it instead of starting another. A failed job is left in
the cluster for inspection (``kubectl describe``, its pods' logs); delete it to rerun the same
KFP run. A job still running at the step's timeout is deleted, so that it stops holding GPUs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from components.contracts.errors import CampsegError, TransientError
from components.kubeflow.train_jobs import API, JobState, job_state

#: Where a pod finds its namespace and its service account's token.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class TrainJobFailed(CampsegError, RuntimeError):
    """The training job failed, timed out, or the API refused it; the message names the job and namespace."""


def in_cluster() -> tuple[Any, str]:
    """An ``ApiClient`` from the pod's service account and the pod's namespace."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
        namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
    except (config.ConfigException, OSError) as exc:
        raise TrainJobFailed(f"cannot reach the Kubernetes API from this pod ({exc}): multi-node training runs "
                             "only on a cluster, with a service account token mounted") from exc
    return client.ApiClient(), namespace


def _api_error(exc: Exception, what: str) -> Exception:
    """A :class:`TransientError` for an unreachable API or 5xx/429; otherwise :class:`TrainJobFailed`."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or exc
    if status is None or status == 0 or status == 429 or status >= 500:
        return TransientError(f"{what}: the Kubernetes API did not answer ({reason})")
    body = getattr(exc, "body", "") or ""
    hint = " (the service account lacks the Role of manifests/base/rbac.yaml)" if status == 403 else ""
    hint = hint or (" (is the CRD installed? Trainer v2 for trainjob, the Training Operator for pytorchjob)"
                    if status == 404 else "")
    return TrainJobFailed(f"{what}: the Kubernetes API answered {status} {reason}{hint}: {body}")


class JobLauncher:
    """Create, watch and delete one kind of training job in one namespace."""

    def __init__(self, api_client: Any, namespace: str, kind: str):
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace, self.kind = namespace, kind
        self.group, self.version, self.plural, self.kind_name = API[kind]

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(self.group, self.version, self.namespace, self.plural, *args, **kwargs)
        except ApiException as exc:
            raise _api_error(exc, what) from exc
        except Exception as exc:  # urllib3 connection errors
            if type(exc).__module__.startswith("urllib3"):
                raise _api_error(exc, what) from exc
            raise

    def describe(self, name: str) -> str:
        return f"{self.kind_name} {name} in namespace {self.namespace}"

    def create(self, manifest: dict) -> bool:
        """Create the job; ``False`` when a job of that name exists already (a rerun attaches to it)."""
        from kubernetes.client.exceptions import ApiException

        name = manifest["metadata"]["name"]
        try:
            self.api.create_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, manifest)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise _api_error(exc, f"creating {self.describe(name)}") from exc

    def state(self, name: str) -> JobState:
        return job_state(self.kind, self._call(f"reading {self.describe(name)}",
                                               self.api.get_namespaced_custom_object, name))

    def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, name,
                                                     propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc, f"deleting {self.describe(name)}") from exc

    def wait(self, name: str, timeout_s: float, poll_s: float, log: Callable[[str], None] = print) -> JobState:
        """Poll until the job succeeds; raise :class:`TrainJobFailed` when it fails or outlasts ``timeout_s``
        (then it is deleted)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            state = self.state(name)
            if state != last:
                log(f"{self.describe(name)}: {state.phase}" + (f" ({state.reason}: {state.message})"
                                                               if state.reason or state.message else ""))
                last = state
            if state.phase == "succeeded":
                return state
            if state.phase == "failed":
                raise TrainJobFailed(
                    f"{self.describe(name)} failed: {state.reason or 'no reason given'}: "
                    f"{state.message or 'no message'}. The job is left for inspection (kubectl describe "
                    f"{self.plural} {name} -n {self.namespace}; its pods' logs); delete it to rerun this KFP run")
            if time.monotonic() >= deadline:
                self.delete(name)
                raise TrainJobFailed(f"{self.describe(name)} did not finish within {timeout_s:g}s "
                                     f"(--train-job-timeout); last state {state.phase}; the job was deleted")
            time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


def run_job(launcher: JobLauncher, manifest: dict, timeout_s: float, poll_s: float,
            log: Callable[[str], None] = print) -> JobState:
    """Create the job (or attach to the one of that name) and wait for it to succeed."""
    name = manifest["metadata"]["name"]
    created = launcher.create(manifest)
    log(f"{'Created' if created else 'Attached to the existing'} {launcher.describe(name)}")
    return launcher.wait(name, timeout_s, poll_s, log)
