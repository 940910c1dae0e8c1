"""How a pipeline step runs on the cluster: image, node pool, GPU, caching, retries, scratch, resources, credentials.

``pipeline.py`` states the policy of every step as one table of :class:`Step` rows;
:func:`step_factory` makes each step's task on its image and applies its row together with the
compile-time :class:`ClusterSettings` (the flags of ``--compile``). Everything emitted goes
through ``kfp.kubernetes`` and must parse with the protos of :data:`MIN_BACKEND`
(``tests/contract/test_backend_protos.py``).
"""

import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Optional, Tuple

from kfp import dsl, kubernetes

from components.contracts.errors import ParameterError
from components.kubeflow.components import make_components
from components.kubeflow.retries import BACKOFF_ENV, RETRIES_ENV
from components.kubeflow.train_jobs import API as JOB_KINDS
from components.kubeflow.train_jobs import JobSettings

#: The oldest KFP backend the compiled pipeline runs on: its driver and Argo compiler parse each
#: step's Kubernetes config with the kfp-kubernetes protos of the same release and reject (2.15)
#: or silently drop (before 2.15: ``optional`` of Secret/ConfigMap env) fields they lack.
MIN_BACKEND = "2.15.0"
#: Stands in for the step image where none is compiled in: the flags' parser and ``--run-local``
#: (kfp.local runs the steps in this environment). :meth:`ClusterSettings.check` refuses to
#: compile a pipeline for a cluster with it: no image is guessed.
NO_IMAGE = "campseg-image-not-set"
#: Environment variables a step takes from the storage Secret (its keys have the same names).
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
#: Non-secret settings a step takes from the ConfigMap (optional keys).
CONFIG_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
#: Optional MLflow server credentials (basic auth), from their own optional Secret.
MLFLOW_SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
#: Where the scratch volume is mounted; ``TMPDIR`` points there, so downloads and staged run folders land on it.
SCRATCH_MOUNT = "/scratch"
SCRATCH_VOLUME = "campseg-scratch"
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")


@dataclass(frozen=True)
class Resources:
    """CPU and memory requests and limits of one step (Kubernetes quantities)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


@dataclass(frozen=True)
class Step:
    """The policy of one step: one row of the pipeline's step table.

    Args:
        image: ``cpu`` runs the step on ``--image``, ``gpu`` on ``--gpu-image`` (the CUDA image).
        pool: ``gpu`` places the step on the GPU node pool (its node selector and toleration);
            ``any`` leaves placement to the scheduler (``--only-gpu-pool`` places it on the GPU pool too).
        gpu: the step requests the accelerator (``--accelerator-type``/``--accelerator-count``);
            only a ``gpu``-pool step on the ``gpu`` image may.
        cache: KFP may serve the step from its cache.
        retry: the step talks to storage or MLflow and is idempotent: it retries transient
            failures in-process (``--retries``); with ``--pod-retries`` KFP also reruns its pod.
        scratch: the step downloads data: it gets the scratch volume at :data:`SCRATCH_MOUNT`.
        resources: the default CPU and memory (``--resources`` overrides them).
        component: the component the step runs (default: its name with ``_``); a row with its own
            component keeps its resources (the multi-node job launcher: ``--resources train-model``
            then sizes the job's nodes).
    """

    image: Literal["cpu", "gpu"]
    pool: Literal["any", "gpu"]
    gpu: bool
    cache: bool
    retry: bool
    scratch: bool
    resources: Resources
    component: str = ""

    def __post_init__(self):
        if self.gpu and (self.pool != "gpu" or self.image != "gpu"):
            raise ValueError("a step that requests a GPU runs on the gpu pool and the gpu image")


@dataclass
class ClusterSettings:
    """Everything about the cluster that is fixed at compile time (flags of ``--compile``).

    ``image`` and ``gpu_image`` have no usable default: a pipeline for a cluster names the images
    it was built with (:meth:`check`). ``accelerator_count`` 0 is a CPU-only cluster: no step gets
    an accelerator, a node selector or a toleration, and training runs on ``image``. An empty
    Secret or ConfigMap name means none: the steps reference no such object.
    """

    image: str = ""  # image of the CPU steps; empty: not set (:data:`NO_IMAGE` where only the spec matters)
    gpu_image: str = ""  # image of the GPU steps (the CUDA image); empty: ``image``, only without accelerator
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = 1
    gpu_node_selector: Optional[Tuple[str, str]] = ("nvidia.com/gpu.present", "true")
    gpu_toleration: Optional[Tuple[str, str, str]] = ("nvidia.com/gpu", "Exists", "NoSchedule")
    only_gpu_pool: bool = False  # the cluster's only pool is the GPU pool: every step tolerates it
    storage_secret: str = "campseg-s3-credentials"
    config_map: str = "campseg-endpoints"
    mlflow_secret: str = "campseg-mlflow-credentials"
    retries: int = 3  # in-process retries of transient failures (steps with ``retry``)
    backoff: str = "10s"  # first delay of those retries; doubles each time
    pod_retries: int = 0  # KFP retry policy (reruns the pod on any failure): off by default
    scratch_size: str = "20Gi"  # scratch volume of the ``scratch`` steps; empty: none (the container's /tmp)
    scratch_volume: Literal["ephemeral", "empty-dir"] = "ephemeral"
    scratch_storage_class: str = ""  # ephemeral only; empty: the cluster's default StorageClass
    resources: dict[str, Resources] = field(default_factory=dict)  # per step: overrides the table's
    train_nodes: int = 1  # > 1: the training step submits a multi-node TrainJob/PyTorchJob
    train_gpus_per_node: int = 0  # GPUs of each job node; 0: accelerator_count
    train_job_kind: str = "trainjob"  # trainjob (Kubeflow Trainer v2) or pytorchjob (Training Operator v1)
    train_runtime: str = "torch-distributed"  # ClusterTrainingRuntime of a TrainJob
    train_job_prefix: str = ""  # s3://bucket/prefix/ the job's inputs and run folder go under
    train_job_timeout: str = "24h"  # how long the step waits for the job

    def check(self) -> "ClusterSettings":
        """Refuse settings no cluster can run: no image, a GPU request without the CUDA image, bad values.

        Raises:
            ParameterError: naming the flag to pass.
        """
        if not self.image:
            raise ParameterError(
                "no step image: pass --image REF and --gpu-image REF (the CPU and CUDA images you pushed, "
                "e.g. registry.example.com/campseg/campseg@sha256:...), or run --build-images --push "
                "first, which records them for --compile and --submit")
        for flag, ref in (("--image", self.image), ("--gpu-image", self.gpu_image)):
            if ref and (ref != ref.strip() or " " in ref or ref.startswith("-") or ref == NO_IMAGE):
                raise ParameterError(f"{flag} {ref!r}: not an image reference (REGISTRY/NAME:TAG or NAME@sha256:...)")
        if self.accelerator_count < 0:
            raise ParameterError(f"--accelerator-count {self.accelerator_count}: must be >= 0 (0: a CPU-only cluster)")
        if self.accelerator_count > 0 and not self.gpu_image:
            raise ParameterError(
                f"--accelerator-count {self.accelerator_count} requests a GPU for training but no --gpu-image "
                "is given: training would run in the CPU image on a GPU node, holding the GPU. Pass "
                "--gpu-image REF (the CUDA image), or --accelerator-count 0 on a CPU-only cluster")
        if self.only_gpu_pool and self.accelerator_count == 0:
            raise ParameterError("--only-gpu-pool with --accelerator-count 0: a cluster whose only pool is a GPU "
                                 "pool trains on its GPU; drop --accelerator-count 0")
        if self.only_gpu_pool and not (self.gpu_node_selector or self.gpu_toleration):
            raise ParameterError("--only-gpu-pool needs --gpu-node-selector or --gpu-toleration (both are empty)")
        for flag, n in (("--retries", self.retries), ("--pod-retries", self.pod_retries)):
            if n < 0:
                raise ParameterError(f"{flag} {n}: must be >= 0")
        backoff_seconds(self.backoff)
        if self.scratch_size and not _QUANTITY.match(self.scratch_size):
            raise ParameterError(f"--scratch-size {self.scratch_size!r}: expected a Kubernetes quantity such as "
                                 "20Gi, or '' for no scratch volume")
        if self.scratch_volume not in ("ephemeral", "empty-dir"):
            raise ParameterError(f"--scratch-volume {self.scratch_volume!r}: choose ephemeral or empty-dir")
        if self.train_nodes < 1:
            raise ParameterError(f"--train-nodes {self.train_nodes}: must be >= 1")
        if self.train_job_kind not in JOB_KINDS:
            raise ParameterError(f"--train-job-kind {self.train_job_kind!r}: choose {' or '.join(JOB_KINDS)}")
        if self.train_nodes > 1:
            if self.accelerator_count <= 0:
                raise ParameterError(f"--train-nodes {self.train_nodes} with --accelerator-count 0: multi-node "
                                     "training runs on GPU nodes")
            train_job_settings(self, Resources("1", "1", "1Gi", "1Gi")).check()
        elif self.train_gpus_per_node or self.train_job_prefix:
            raise ParameterError("--train-gpus-per-node and --train-job-prefix go with --train-nodes N (N > 1); "
                                 "a single-node step trains on --accelerator-count GPUs")
        return self


def backoff_seconds(text: str) -> float:
    """``--retry-backoff`` (``30s``, ``2m`` or plain seconds) in seconds."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(s|m)?", text.strip())
    if not match:
        raise ParameterError(f"--retry-backoff {text!r}: expected seconds such as 10s or 2m")
    return float(match.group(1)) * (60 if match.group(2) == "m" else 1)


def duration_seconds(text: str, flag: str) -> float:
    """A duration such as ``90s``, ``30m``, ``24h`` or plain seconds, in seconds."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)?", text.strip())
    if not match:
        raise ParameterError(f"{flag} {text!r}: expected a duration such as 90s, 30m or 24h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]


def train_job_settings(s: ClusterSettings, resources: Resources) -> JobSettings:
    """The multi-node job of ``s``: its nodes run the GPU image with ``resources`` each, the GPU
    pool's placement, and the steps' Secret and ConfigMap references and retry settings."""
    return JobSettings(
        kind=s.train_job_kind, nodes=s.train_nodes, gpus_per_node=s.train_gpus_per_node or s.accelerator_count,
        image=s.gpu_image, accelerator_type=s.accelerator_type, runtime=s.train_runtime,
        work_prefix=s.train_job_prefix, timeout_s=int(duration_seconds(s.train_job_timeout, "--train-job-timeout")),
        cpu=(resources.cpu_request, resources.cpu_limit), memory=(resources.memory_request, resources.memory_limit),
        node_selector=s.gpu_node_selector, toleration=s.gpu_toleration,
        storage_secret=s.storage_secret, secret_env=SECRET_ENV, config_map=s.config_map, config_env=CONFIG_ENV,
        mlflow_secret=s.mlflow_secret, mlflow_env=MLFLOW_SECRET_ENV, scratch_size=s.scratch_size,
        extra_env={RETRIES_ENV: str(s.retries), BACKOFF_ENV: str(backoff_seconds(s.backoff))},
    )


def on_gpu_pool(task: dsl.PipelineTask, s: ClusterSettings) -> None:
    """The GPU node pool's node selector and toleration (KFP adds no toleration)."""
    if s.gpu_node_selector:
        kubernetes.add_node_selector(task, *s.gpu_node_selector)
    if s.gpu_toleration:
        key, operator, effect = s.gpu_toleration
        kubernetes.add_toleration(task, key=key, operator=operator, effect=effect)


def place(task: dsl.PipelineTask, step: Step, s: ClusterSettings) -> None:
    """Node pool and GPU of a step; nothing on a CPU-only cluster (``accelerator_count`` 0).

    A step on the GPU pool that requests no GPU gets ``NVIDIA_VISIBLE_DEVICES=void``, so an image
    that sets it to ``all`` (the CUDA bases do) cannot reach the node's GPUs without holding one.
    """
    if s.accelerator_count <= 0:
        return
    if step.pool == "gpu" or s.only_gpu_pool:
        on_gpu_pool(task, s)
    if step.gpu:
        task.set_accelerator_type(s.accelerator_type).set_accelerator_limit(s.accelerator_count)
    elif step.pool == "gpu" or s.only_gpu_pool:
        task.set_env_variable("NVIDIA_VISIBLE_DEVICES", "void")


def with_credentials(task: dsl.PipelineTask, s: ClusterSettings) -> None:
    """Storage credentials from a named Secret, endpoints from a ConfigMap, the MLflow login from an
    optional Secret: never values, and only the objects that are configured (a name is set)."""
    if s.storage_secret:
        kubernetes.use_secret_as_env(task, s.storage_secret, {k: k for k in SECRET_ENV})
    if s.config_map:
        kubernetes.use_config_map_as_env(task, s.config_map, {k: k for k in CONFIG_ENV}, optional=True)
    if s.mlflow_secret:
        kubernetes.use_secret_as_env(task, s.mlflow_secret, {k: k for k in MLFLOW_SECRET_ENV}, optional=True)


def with_scratch(task: dsl.PipelineTask, s: ClusterSettings) -> None:
    """The scratch volume at :data:`SCRATCH_MOUNT` and ``TMPDIR`` pointing at it: a generic ephemeral
    volume (its own claim of ``scratch_size``, deleted with the pod) or an emptyDir limited to it."""
    if not s.scratch_size:
        return
    if s.scratch_volume == "ephemeral":
        kubernetes.add_ephemeral_volume(task, SCRATCH_VOLUME, SCRATCH_MOUNT, ["ReadWriteOnce"], s.scratch_size,
                                        storage_class_name=s.scratch_storage_class or None)
    else:
        kubernetes.empty_dir_mount(task, SCRATCH_VOLUME, SCRATCH_MOUNT, size_limit=s.scratch_size)
    task.set_env_variable("TMPDIR", SCRATCH_MOUNT)


def configure(task: dsl.PipelineTask, name: str, step: Step, s: ClusterSettings) -> dsl.PipelineTask:
    """Apply the policy ``step`` and the cluster settings to the task of step ``name``."""
    task.set_display_name(name)
    r = step.resources if step.component else s.resources.get(name, step.resources)
    task.set_cpu_request(r.cpu_request).set_cpu_limit(r.cpu_limit)
    task.set_memory_request(r.memory_request).set_memory_limit(r.memory_limit)
    place(task, step, s)
    task.set_env_variable(RETRIES_ENV, str(s.retries if step.retry else 0))
    task.set_env_variable(BACKOFF_ENV, str(backoff_seconds(s.backoff)))
    if step.retry and s.pod_retries > 0:
        task.set_retry(num_retries=s.pod_retries, backoff_duration=f"{backoff_seconds(s.backoff):g}s",
                       backoff_factor=2.0)
    if step.scratch:
        with_scratch(task, s)
    with_credentials(task, s)
    task.set_caching_options(step.cache)
    return task


def step_factory(steps: Mapping[str, Step], s: ClusterSettings) -> Callable[..., dsl.PipelineTask]:
    """``make(name, **inputs)``: the configured task of step ``name`` (component ``name`` with ``_``)."""
    cpu = s.image or NO_IMAGE
    images = {"cpu": make_components(cpu), "gpu": make_components(s.gpu_image or cpu)}

    def make(name: str, **inputs) -> dsl.PipelineTask:
        step = steps[name]
        component = getattr(images[step.image], step.component or name.replace("-", "_"))
        return configure(component(**inputs), name, step, s)

    return make
