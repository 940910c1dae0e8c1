"""Multi-node training jobs as data: the Kubeflow Trainer ``TrainJob`` and ``PyTorchJob`` manifests,
and what a job's status says. Pure functions, no Kubernetes API calls (:mod:`~components.kubeflow.job_launcher`
makes those).

With ``--train-nodes N`` (N > 1) the pipeline's training step does not train in its own pod: it
submits one of these jobs, which runs :mod:`components.kubeflow.train_node` on every node
(downloads the inputs, runs ``torchrun -m components train ... --devices M --num-nodes N``, node 0
uploads the run folder to S3). The schemas the manifests must satisfy are vendored in
``components/kubeflow/schemas/`` (see its README).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Optional, Sequence

from components.contracts.errors import ParameterError

JobKind = Literal["trainjob", "pytorchjob"]
#: (group, version, plural, kind) of each job kind in the Kubernetes API.
API: dict[str, tuple[str, str, str, str]] = {
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
}
#: The container that runs the training code: the torch-distributed runtime's replicated job and
#: container are both called ``node``; a PyTorchJob's container must be called ``pytorch``.
TRAINJOB_NODE = "node"
PYTORCHJOB_CONTAINER = "pytorch"
#: The ``manager`` of this pipeline's entry in a TrainJob's ``runtimePatches``.
PATCH_MANAGER = "campseg.pipeline"
#: Label on every job this pipeline creates (``kubectl get trainjobs -l campseg.io/kfp-run-id``).
RUN_LABEL = "campseg.io/kfp-run-id"
SCRATCH_MOUNT, SCRATCH_VOLUME = "/scratch", "campseg-scratch"
_NAME_PREFIX, _NAME_MAX = "campseg-train-", 48


@dataclass(frozen=True)
class JobSettings:
    """The compile-time settings of a multi-node training job (``--train-*`` flags and the
    cluster settings it shares with the steps); the launching step gets them as JSON."""

    kind: JobKind = "trainjob"
    nodes: int = 2
    gpus_per_node: int = 1
    image: str = ""
    accelerator_type: str = "nvidia.com/gpu"
    runtime: str = "torch-distributed"  # ClusterTrainingRuntime of a TrainJob
    work_prefix: str = ""  # s3://bucket/prefix/ the job's inputs and run folder go under
    timeout_s: int = 24 * 3600
    poll_s: float = 15.0
    cpu: tuple[str, str] = ("4", "8")  # request, limit per node
    memory: tuple[str, str] = ("16Gi", "32Gi")
    node_selector: Optional[tuple[str, str]] = None
    toleration: Optional[tuple[str, str, str]] = None
    storage_secret: str = ""
    secret_env: tuple[str, ...] = ()
    config_map: str = ""
    config_env: tuple[str, ...] = ()
    mlflow_secret: str = ""
    mlflow_env: tuple[str, ...] = ()
    scratch_size: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobSettings":
        raw = json.loads(text)
        for key in ("cpu", "memory", "node_selector", "toleration", "secret_env", "config_env", "mlflow_env"):
            if raw.get(key) is not None:
                raw[key] = tuple(raw[key])
        return cls(**raw)

    def check(self) -> "JobSettings":
        """Refuse settings no job can run with, naming the flag."""
        if self.kind not in API:
            raise ParameterError(f"--train-job-kind {self.kind!r}: choose {' or '.join(API)}")
        if self.nodes < 2:
            raise ParameterError(f"--train-nodes {self.nodes}: a training job needs at least 2 nodes")
        if self.gpus_per_node < 1:
            raise ParameterError(f"--train-gpus-per-node {self.gpus_per_node}: must be >= 1")
        if not self.work_prefix.startswith("s3://") or len(self.work_prefix) <= len("s3://"):
            raise ParameterError(f"--train-job-prefix {self.work_prefix!r}: the job's nodes hand the run "
                                 "folder back through object storage: pass s3://bucket/prefix/")
        if not self.image:
            raise ParameterError("--train-nodes > 1 needs --gpu-image (the image the job's nodes run)")
        if self.timeout_s <= 0:
            raise ParameterError(f"--train-job-timeout {self.timeout_s}: must be > 0 seconds")
        return self


def job_name(kfp_run_id: str) -> str:
    """The job's name, after the KFP run (an RFC 1035 label: a rerun of the step finds the same job)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", kfp_run_id.lower()).strip("-") or "run"
    return (_NAME_PREFIX + slug)[:_NAME_MAX].rstrip("-")


def train_flags(config: Mapping[str, Any], nodes: int, gpus_per_node: int) -> list[str]:
    """The flags of ``python -m components train`` for a training ``config`` (the train step's
    parameters) on ``nodes`` nodes of ``gpus_per_node`` GPUs; ``--run`` and ``--data`` are the node's own."""
    flags: list[str] = []
    for key in ("architecture", "base_channels", "depth", "loss", "optimizer", "learning_rate", "weight_decay",
                "lr_schedule", "warmup_epochs", "crop_scale", "color_jitter", "dice_weight", "ema_decay", "epochs",
                "batch_size", "patience", "precision", "seed"):
        if key in config:
            flags += ["--" + key.replace("_", "-"), str(config[key])]
    if not config.get("augment", True):
        flags.append("--no-augment")
    return flags + ["--devices", str(gpus_per_node), "--num-nodes", str(nodes)]


def node_command(statistics_uri: str, dataset_uri: str, output_uri: str, settings: JobSettings,
                 flags: Sequence[str]) -> list[str]:
    """The command of every node: :mod:`components.kubeflow.train_node`, then the train flags."""
    return ["python", "-m", "components.kubeflow.train_node", "--statistics-uri", statistics_uri,
            "--dataset-uri", dataset_uri, "--output-uri", output_uri, "--nodes", str(settings.nodes),
            "--procs-per-node", str(settings.gpus_per_node), "--", *flags]


def torchrun_command(env: Mapping[str, str], nodes: int, procs_per_node: int, train_args: Sequence[str]) -> list[str]:
    """``torchrun`` on one node of a job, with the rendezvous its engine put in ``env``.

    A TrainJob sets ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``; a PyTorchJob
    sets ``PET_NODE_RANK`` (older operators only ``RANK``), ``MASTER_ADDR`` and ``MASTER_PORT``.
    The ``--`` keeps torchrun from reading the train flags as its own (``--run`` would be taken
    for an abbreviation of its ``--run-path``).
    """
    rank = env.get("PET_NODE_RANK") or env.get("RANK") or "0"
    addr = env.get("PET_MASTER_ADDR") or env.get("MASTER_ADDR") or "127.0.0.1"
    port = env.get("PET_MASTER_PORT") or env.get("MASTER_PORT") or "29500"
    return ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={procs_per_node}", f"--node-rank={rank}",
            f"--master-addr={addr}", f"--master-port={port}", "-m", "--", "components", "train", *train_args]


def container_env(s: JobSettings) -> list[dict]:
    """The same environment as the pipeline's steps: Secret and ConfigMap references (never values),
    ``TMPDIR`` on the scratch volume, and ``extra_env``."""
    env: list[dict] = []
    for name, keys, optional, ref in ((s.storage_secret, s.secret_env, False, "secretKeyRef"),
                                      (s.config_map, s.config_env, True, "configMapKeyRef"),
                                      (s.mlflow_secret, s.mlflow_env, True, "secretKeyRef")):
        if name:
            env += [{"name": k, "valueFrom": {ref: {"name": name, "key": k, "optional": optional}}} for k in keys]
    if s.scratch_size:
        env.append({"name": "TMPDIR", "value": SCRATCH_MOUNT})
    env += [{"name": k, "value": v} for k, v in sorted(s.extra_env.items())]
    return env


def resources_per_node(s: JobSettings) -> dict:
    """CPU, memory and ``gpus_per_node`` accelerators of each node."""
    return {"requests": {"cpu": s.cpu[0], "memory": s.memory[0], s.accelerator_type: str(s.gpus_per_node)},
            "limits": {"cpu": s.cpu[1], "memory": s.memory[1], s.accelerator_type: str(s.gpus_per_node)}}


def _placement(s: JobSettings) -> dict:
    """Node selector, toleration and scratch volume of a node's pod spec."""
    spec: dict[str, Any] = {}
    if s.node_selector:
        spec["nodeSelector"] = {s.node_selector[0]: s.node_selector[1]}
    if s.toleration:
        key, operator, effect = s.toleration
        spec["tolerations"] = [{"key": key, "operator": operator, "effect": effect}]
    if s.scratch_size:
        spec["volumes"] = [{"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": s.scratch_size}}]
    return spec


def _metadata(name: str, namespace: str, kfp_run_id: str) -> dict:
    return {"name": name, "namespace": namespace,
            "labels": {RUN_LABEL: re.sub(r"[^A-Za-z0-9_.-]", "-", kfp_run_id)[:63].strip("-_.") or "none",
                       "app.kubernetes.io/part-of": "campseg"}}


def trainjob_manifest(name: str, namespace: str, kfp_run_id: str, command: Sequence[str], s: JobSettings) -> dict:
    """A Trainer v2 ``TrainJob`` on the ``s.runtime`` ClusterTrainingRuntime (torch-distributed)."""
    manifest = {
        "apiVersion": "/".join(API["trainjob"][:2]), "kind": API["trainjob"][3],
        "metadata": _metadata(name, namespace, kfp_run_id),
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": s.runtime},
            "activeDeadlineSeconds": int(s.timeout_s),
            "trainer": {"image": s.image, "command": list(command), "env": container_env(s),
                        "numNodes": s.nodes, "numProcPerNode": s.gpus_per_node,
                        "resourcesPerNode": resources_per_node(s)},
        },
    }
    pod = _placement(s)
    if pod:
        if s.scratch_size:
            pod["containers"] = [{"name": TRAINJOB_NODE,
                                  "volumeMounts": [{"name": SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT}]}]
        job = {"name": TRAINJOB_NODE, "template": {"spec": {"template": {"spec": pod}}}}
        manifest["spec"]["runtimePatches"] = [
            {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}}}]
    return manifest


def pytorchjob_manifest(name: str, namespace: str, kfp_run_id: str, command: Sequence[str],
                        s: JobSettings) -> dict:
    """A Training Operator v1 ``PyTorchJob``: one Master and ``nodes - 1`` Workers, same pod."""
    container = {"name": PYTORCHJOB_CONTAINER, "image": s.image, "command": list(command), "env": container_env(s),
                 "resources": resources_per_node(s)}
    if s.scratch_size:
        container["volumeMounts"] = [{"name": SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT}]
    template = {"spec": {"containers": [container], **_placement(s)}}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template},
                "Worker": {"replicas": s.nodes - 1, "restartPolicy": "Never", "template": template}}
    return {
        "apiVersion": "/".join(API["pytorchjob"][:2]), "kind": API["pytorchjob"][3],
        "metadata": _metadata(name, namespace, kfp_run_id),
        "spec": {"nprocPerNode": str(s.gpus_per_node), "pytorchReplicaSpecs": replicas,
                 "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 0,
                               "activeDeadlineSeconds": int(s.timeout_s)}},
    }


def job_manifest(name: str, namespace: str, kfp_run_id: str, command: Sequence[str], s: JobSettings) -> dict:
    """The manifest of ``s.kind``."""
    build = trainjob_manifest if s.kind == "trainjob" else pytorchjob_manifest
    return build(name, namespace, kfp_run_id, command, s)


@dataclass(frozen=True)
class JobState:
    """What a job's status says: ``phase`` is pending, running, succeeded or failed."""

    phase: Literal["pending", "running", "succeeded", "failed"]
    reason: str = ""
    message: str = ""

    @property
    def done(self) -> bool:
        return self.phase in ("succeeded", "failed")


#: Condition types that end a job, per kind: (succeeded, failed).
_FINAL = {"trainjob": ("Complete", "Failed"), "pytorchjob": ("Succeeded", "Failed")}


def job_state(kind: str, job: Mapping[str, Any]) -> JobState:
    """The state of a TrainJob or PyTorchJob from its ``status``: a final condition (true ones
    only) wins; a PyTorchJob's ``Running`` or ``Restarting``, or a TrainJob with an active child
    Job (``jobsStatus``), is running; anything else, e.g. no status yet or a suspended job, pending."""
    conditions = [c for c in ((job.get("status") or {}).get("conditions") or []) if c.get("status") == "True"]
    succeeded, failed = _FINAL[kind]
    for c in conditions:
        if c.get("type") == failed:
            return JobState("failed", c.get("reason", ""), c.get("message", ""))
    for c in conditions:
        if c.get("type") == succeeded:
            return JobState("succeeded", c.get("reason", ""), c.get("message", ""))
    types = {c.get("type") for c in conditions}
    if "Suspended" in types:
        return JobState("pending", "Suspended", next(c.get("message", "") for c in conditions
                                                     if c.get("type") == "Suspended"))
    active = any(j.get("active") for j in (job.get("status") or {}).get("jobsStatus") or [])
    if kind == "pytorchjob" and ({"Running", "Restarting"} & types) or kind == "trainjob" and active:
        return JobState("running")
    return JobState("pending")
