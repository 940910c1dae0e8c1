"""How a pipeline step runs on the cluster: its image, accelerator, caching, retries, resources, credentials.

``pipeline.py`` states the policy of every step as one table of :class:`Step` rows;
:func:`step_factory` makes each step's task on its image and applies its row together with the
compile-time :class:`ClusterSettings` (the flags of ``--compile``).
"""

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Optional, Tuple

from kfp import dsl, kubernetes

from components.contracts.errors import ParameterError
from components.kubeflow.components import make_components

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
        accelerator: the step gets the accelerator, the GPU node selector and the toleration.
        cache: KFP may serve the step from its cache.
        retry: the step talks to storage and retries with exponential backoff (``--retries``).
        resources: the default CPU and memory (``--resources`` overrides them).
    """

    image: Literal["cpu", "gpu"]
    accelerator: bool
    cache: bool
    retry: bool
    resources: Resources


@dataclass
class ClusterSettings:
    """Everything about the cluster that is fixed at compile time (flags of ``--compile``).

    ``image`` and ``gpu_image`` have no usable default: a pipeline for a cluster names the images
    it was built with (:meth:`check`). ``accelerator_count`` 0 is a CPU-only cluster: no step gets
    an accelerator, a node selector or a toleration, and training runs on ``image``.
    """

    image: str = ""  # image of the CPU steps; empty: not set (:data:`NO_IMAGE` where only the spec matters)
    gpu_image: str = ""  # image of the GPU steps (the CUDA image); empty: ``image``, only without accelerator
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = 1
    gpu_node_selector: Optional[Tuple[str, str]] = ("nvidia.com/gpu.present", "true")
    gpu_toleration: Optional[Tuple[str, str, str]] = ("nvidia.com/gpu", "Exists", "NoSchedule")
    storage_secret: str = "campseg-s3-credentials"
    config_map: str = "campseg-endpoints"
    mlflow_secret: str = "campseg-mlflow-credentials"
    retries: int = 3
    backoff: str = "30s"
    resources: dict[str, Resources] = field(default_factory=dict)  # per step: overrides the table's

    def check(self) -> "ClusterSettings":
        """Refuse settings no cluster can run: no image, or a GPU request without the CUDA image.

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
        return self


def on_gpu(task: dsl.PipelineTask, s: ClusterSettings) -> None:
    """Accelerator, node selector and toleration for the GPU node pool (KFP adds no toleration);
    nothing on a CPU-only cluster (``accelerator_count`` 0)."""
    if s.accelerator_count <= 0:
        return
    task.set_accelerator_type(s.accelerator_type).set_accelerator_limit(s.accelerator_count)
    if s.gpu_node_selector:
        kubernetes.add_node_selector(task, *s.gpu_node_selector)
    if s.gpu_toleration:
        key, operator, effect = s.gpu_toleration
        kubernetes.add_toleration(task, key=key, operator=operator, effect=effect)


def with_credentials(task: dsl.PipelineTask, s: ClusterSettings) -> None:
    """Storage credentials from a named Secret, endpoints from a ConfigMap: never values."""
    kubernetes.use_secret_as_env(task, s.storage_secret, {k: k for k in SECRET_ENV})
    kubernetes.use_config_map_as_env(task, s.config_map, {k: k for k in CONFIG_ENV}, optional=True)
    kubernetes.use_secret_as_env(task, s.mlflow_secret, {k: k for k in MLFLOW_SECRET_ENV}, optional=True)


def configure(task: dsl.PipelineTask, name: str, step: Step, s: ClusterSettings) -> dsl.PipelineTask:
    """Apply the policy ``step`` and the cluster settings to the task of step ``name``."""
    task.set_display_name(name)
    r = s.resources.get(name, step.resources)
    task.set_cpu_request(r.cpu_request).set_cpu_limit(r.cpu_limit)
    task.set_memory_request(r.memory_request).set_memory_limit(r.memory_limit)
    if step.accelerator:
        on_gpu(task, s)
    if step.retry and s.retries > 0:
        task.set_retry(num_retries=s.retries, backoff_duration=s.backoff, backoff_factor=2.0)
    with_credentials(task, s)
    task.set_caching_options(step.cache)
    return task


def step_factory(steps: Mapping[str, Step], s: ClusterSettings) -> Callable[..., dsl.PipelineTask]:
    """``make(name, **inputs)``: the configured task of step ``name`` (component ``name`` with ``_``)."""
    cpu = s.image or NO_IMAGE
    images = {"cpu": make_components(cpu), "gpu": make_components(s.gpu_image or cpu)}

    def make(name: str, **inputs) -> dsl.PipelineTask:
        step = steps[name]
        component = getattr(images[step.image], name.replace("-", "_"))
        return configure(component(**inputs), name, step, s)

    return make
