"""The camp-segmentation training pipeline for Kubeflow Pipelines v2, and its command line.

    python pipeline.py --compile [--output pipeline.yaml] [cluster flags]
    python pipeline.py --run-local [--dataset-uri PATH] [parameters] [--output-dir DIR]
    python pipeline.py --submit --host URL [--experiment NAME] [--schedule CRON] [parameters]

This module wires components; the stage logic lives in ``components/``.
"""


import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

from kfp import compiler, dsl, kubernetes

from components.kubeflow.components import make_components

PIPELINE_NAME = "camp-segmentation-training"
DEFAULT_IMAGE = "ghcr.io/campseg/campseg-cpu:0.1.0"
GPU_STAGES = ("train-model",)
STORAGE_STAGES = ("start-tracking", "dataset-fingerprint", "dataset-statistics", "train-model", "export-model",
                  "evaluate-model", "register-model")
#: Steps that never cache: they read data behind an unchanged URI, or talk to MLflow for this run.
UNCACHED_STAGES = ("start-tracking", "dataset-fingerprint", "register-model", "end-tracking")
#: Environment variables a step takes from the storage Secret (its keys have the same names).
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
#: Non-secret settings a step takes from the ConfigMap (optional keys).
CONFIG_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
#: Optional MLflow server credentials (basic auth), from their own optional Secret.
MLFLOW_SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass
class Resources:
    """CPU and memory requests and limits of one step (Kubernetes quantities)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str

    @classmethod
    def parse(cls, text: str) -> "tuple[str, Resources]":
        """``STEP=CPU_REQ,CPU_LIM,MEM_REQ,MEM_LIM``, e.g. ``train-model=4,8,16Gi,32Gi``."""
        try:
            step, values = text.split("=", 1)
            cpu_req, cpu_lim, mem_req, mem_lim = values.split(",")
        except ValueError:
            raise argparse.ArgumentTypeError(f"--resources {text!r}: expected STEP=CPU_REQ,CPU_LIM,MEM_REQ,MEM_LIM") from None
        return step, cls(cpu_req, cpu_lim, mem_req, mem_lim)


DEFAULT_RESOURCES = {
    "start-tracking": Resources("250m", "1", "512Mi", "1Gi"),
    "end-tracking": Resources("250m", "1", "512Mi", "1Gi"),
    "register-model": Resources("1", "2", "2Gi", "4Gi"),
    "dataset-fingerprint": Resources("250m", "1", "256Mi", "1Gi"),
    "dataset-statistics": Resources("1", "2", "2Gi", "4Gi"),
    "train-model": Resources("4", "8", "16Gi", "32Gi"),
    "export-model": Resources("2", "4", "4Gi", "8Gi"),
    "evaluate-model": Resources("2", "4", "4Gi", "8Gi"),
    "package-dlpk": Resources("1", "2", "2Gi", "4Gi"),
    "generate-stac-item": Resources("500m", "1", "1Gi", "2Gi"),
}


@dataclass
class ClusterSettings:
    """Everything about the cluster that is fixed at compile time (flags of ``--compile``)."""

    image: str = DEFAULT_IMAGE
    gpu_image: str = ""  # image of the GPU steps (the CUDA image); empty: ``image``
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = 1
    gpu_node_selector: Optional[Tuple[str, str]] = ("nvidia.com/gpu.present", "true")
    gpu_toleration: Optional[Tuple[str, str, str]] = ("nvidia.com/gpu", "Exists", "NoSchedule")
    storage_secret: str = "campseg-s3-credentials"
    config_map: str = "campseg-endpoints"
    mlflow_secret: str = "campseg-mlflow-credentials"
    retries: int = 3
    backoff: str = "30s"
    resources: dict[str, Resources] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))


def _on_gpu(task: dsl.PipelineTask, s: ClusterSettings) -> None:
    """Accelerator, node selector and toleration for the GPU node pool (KFP adds no toleration)."""
    task.set_accelerator_type(s.accelerator_type).set_accelerator_limit(s.accelerator_count)
    if s.gpu_node_selector:
        kubernetes.add_node_selector(task, *s.gpu_node_selector)
    if s.gpu_toleration:
        key, operator, effect = s.gpu_toleration
        kubernetes.add_toleration(task, key=key, operator=operator, effect=effect)


def _with_credentials(task: dsl.PipelineTask, s: ClusterSettings) -> None:
    """Storage credentials from a named Secret, endpoints from a ConfigMap: never values."""
    kubernetes.use_secret_as_env(task, s.storage_secret, {k: k for k in SECRET_ENV})
    kubernetes.use_config_map_as_env(task, s.config_map, {k: k for k in CONFIG_ENV}, optional=True)
    kubernetes.use_secret_as_env(task, s.mlflow_secret, {k: k for k in MLFLOW_SECRET_ENV}, optional=True)


def _configure(task: dsl.PipelineTask, name: str, s: ClusterSettings) -> dsl.PipelineTask:
    task.set_display_name(name)
    r = s.resources.get(name)
    if r:
        task.set_cpu_request(r.cpu_request).set_cpu_limit(r.cpu_limit)
        task.set_memory_request(r.memory_request).set_memory_limit(r.memory_limit)
    if name in GPU_STAGES:
        _on_gpu(task, s)
    if name in STORAGE_STAGES and s.retries > 0:
        task.set_retry(num_retries=s.retries, backoff_duration=s.backoff, backoff_factor=2.0)
    _with_credentials(task, s)
    task.set_caching_options(name not in UNCACHED_STAGES)
    return task


def build_pipeline(settings: ClusterSettings = ClusterSettings()):
    """The pipeline function, its components bound to ``settings.image``."""
    c = make_components(settings.image)
    gpu = make_components(settings.gpu_image or settings.image)

    @dsl.pipeline(name=PIPELINE_NAME)
    def camp_segmentation_training(
        dataset_uri: str,
        dataset_image_size: int = 0,
        split_train_ratio: float = 0.7,
        split_val_ratio: float = 0.15,
        split_test_ratio: float = 0.15,
        split_seed: int = 42,
        train_architecture: str = "unet",
        train_base_channels: int = 16,
        train_depth: int = 4,
        train_loss: str = "bce_dice",
        train_optimizer: str = "adamw",
        train_learning_rate: float = 0.003,
        train_weight_decay: float = 0.0001,
        train_lr_schedule: str = "cosine",
        train_augment: bool = True,
        train_epochs: int = 50,
        train_batch_size: int = 16,
        train_patience: int = 10,
        train_precision: str = "auto",
        model_name: str = "camp-segmentation",
        model_threshold: float = 0.5,
        model_publish_uri: str = "",
        tracking_experiment: str = "camp-segmentation",
        tracking_promotion_metric: str = "iou",
        tracking_promotion_margin: float = 0.0,
    ):
        """Train, export, evaluate and package a camp-segmentation U-Net.

        Args:
            dataset_uri: Dataset folder with chips/ and labels/ paired by file stem: s3://bucket/prefix/ or a local path.
            dataset_image_size: Network input size in pixels (a multiple of 2**depth); 0 uses the chips' own size.
            split_train_ratio: Fraction of ground groups in the train split.
            split_val_ratio: Fraction of ground groups in the validation split (model selection, early stopping).
            split_test_ratio: Fraction of ground groups in the test split (evaluation, promotion).
            split_seed: Seed of the split hash and of training.
            train_architecture: unet (this project's U-Net), smp_unet (needs segmentation_models_pytorch) or seed_baseline.
            train_base_channels: Channels of the first U-Net level; each level doubles them.
            train_depth: Number of 2x poolings of the U-Net encoder.
            train_loss: bce_dice, bce, dice or focal.
            train_optimizer: adamw (with weight decay), adam or sgd (with momentum 0.9).
            train_learning_rate: Initial learning rate.
            train_weight_decay: Weight decay of adamw and sgd.
            train_lr_schedule: cosine, plateau (reduce on validation-loss plateau) or none.
            train_augment: Flips, 90-degree rotations and brightness/contrast jitter on the train split.
            train_epochs: Maximum number of epochs.
            train_batch_size: Chips per batch.
            train_patience: Epochs without validation-IoU improvement before early stopping.
            train_precision: auto (bf16 mixed precision on GPU, fp32 on CPU), 32, bf16-mixed or 16-mixed.
            model_name: Name of the model in packages, the STAC item and the registry.
            model_threshold: Camp probability at or above which a pixel is camp.
            model_publish_uri: s3://bucket/prefix/ to publish the final artifacts to, as <prefix>/<model_name>/<version>/ with a STAC item pointing there; empty to keep them in the pipeline's artifact store only.
            tracking_experiment: MLflow experiment of the pipeline's run (the server is MLFLOW_TRACKING_URI).
            tracking_promotion_metric: Test metric that decides whether the new version becomes the registry's champion.
            tracking_promotion_margin: How much the new version must beat the champion by, on the same test split, to take the alias.
        """
        closing = _configure(c.end_tracking(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "end-tracking", settings)
        with dsl.ExitHandler(closing, name="close-mlflow-run-on-exit"):
            tracking = _configure(c.start_tracking(
                dataset_uri=dataset_uri, publish_uri=model_publish_uri, experiment=tracking_experiment,
                model_name=model_name, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ), "start-tracking", settings)
            fingerprint = _configure(c.dataset_fingerprint(dataset_uri=dataset_uri), "dataset-fingerprint", settings)
            fingerprint.after(tracking)
            stats = _configure(c.dataset_statistics(
                dataset_uri=dataset_uri, fingerprint=fingerprint.output, image_size=dataset_image_size,
                architecture=train_architecture, depth=train_depth, train_ratio=split_train_ratio,
                val_ratio=split_val_ratio, test_ratio=split_test_ratio, seed=split_seed, threshold=model_threshold,
            ), "dataset-statistics", settings)
            prepared = stats.outputs["prepared"]
            trained = _configure(gpu.train_model(
                dataset_uri=dataset_uri, prepared=prepared, architecture=train_architecture,
                base_channels=train_base_channels, depth=train_depth, loss=train_loss, optimizer=train_optimizer,
                learning_rate=train_learning_rate, weight_decay=train_weight_decay, lr_schedule=train_lr_schedule,
                augment=train_augment, epochs=train_epochs, batch_size=train_batch_size, patience=train_patience,
                seed=split_seed, precision=train_precision, mlflow_run_id=tracking.output,
            ), "train-model", settings)
            exported = _configure(c.export_model(
                dataset_uri=dataset_uri, prepared=prepared, trained=trained.outputs["trained"],
            ), "export-model", settings)
            evaluated = _configure(c.evaluate_model(
                dataset_uri=dataset_uri, prepared=prepared, exported=exported.outputs["exported"],
            ), "evaluate-model", settings)
            dlpk = _configure(c.package_dlpk(
                prepared=prepared, exported=exported.outputs["exported"], model_name=model_name,
            ), "package-dlpk", settings)
            stac = _configure(c.generate_stac_item(
                prepared=prepared, trained=trained.outputs["trained"], exported=exported.outputs["exported"],
                evaluation=evaluated.outputs["evaluation"], dlpk=dlpk.outputs["dlpk"], model_name=model_name,
            ), "generate-stac-item", settings)
            _configure(c.register_model(
                dataset_uri=dataset_uri, prepared=prepared, trained=trained.outputs["trained"],
                exported=exported.outputs["exported"], evaluation=evaluated.outputs["evaluation"],
                dlpk=dlpk.outputs["dlpk"], stac_item=stac.outputs["stac_item"], mlflow_run_id=tracking.output,
                model_name=model_name, promotion_metric=tracking_promotion_metric,
                promotion_margin=tracking_promotion_margin, publish_uri=model_publish_uri,
            ), "register-model", settings)
    return camp_segmentation_training


def compile_pipeline(output: Path, settings: ClusterSettings = ClusterSettings()) -> Path:
    """Write the pipeline YAML that the KFP UI uploads."""
    compiler.Compiler().compile(build_pipeline(settings), str(output))
    return Path(output)


#: Lighter defaults of ``--run-local`` on a laptop (the compiled pipeline keeps the cluster ones).
LOCAL_DEFAULTS = {"train_epochs": 15, "train_batch_size": 8, "train_patience": 6}
#: Which task output holds which artifact kind of the run folder (components.kfp_steps).
OUTPUT_KINDS = {("dataset-statistics", "prepared"): "statistics", ("train-model", "trained"): "training",
                ("export-model", "exported"): "models", ("evaluate-model", "evaluation"): "evaluation",
                ("package-dlpk", "dlpk"): "dlpk", ("generate-stac-item", "stac_item"): "stac"}
_KFP_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": None}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_parameter_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per pipeline parameter, with the docstring's description as help."""
    group = parser.add_argument_group("pipeline parameters (default: the pipeline's own)")
    for name, spec in build_pipeline().component_spec.inputs.items():
        kind = _KFP_TYPES[spec.type] or _bool
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                           help=f"{spec.description} (default: {spec.default!r})")


def pipeline_arguments(args: argparse.Namespace, local: bool) -> dict[str, Any]:
    """The parameters the user set, plus the lighter local defaults for ``--run-local``."""
    names = build_pipeline().component_spec.inputs
    chosen = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if local:
        chosen = {**LOCAL_DEFAULTS, **chosen}
    return chosen


def run_local(arguments: dict[str, Any], output_dir: Path, pipeline_func=None) -> dict:
    """Run the pipeline with ``kfp.local`` in this environment; gather a run folder in ``output_dir``."""
    from kfp import local

    from components.kubeflow.steps import gather_run

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    arguments = dict(arguments)
    if not arguments.get("dataset_uri"):
        from components.cli.stages import SAMPLE_CHIPS, SAMPLE_SIZE
        from components.data.sample_data import generate_sample_dataset

        arguments["dataset_uri"] = str(generate_sample_dataset(output_dir / "sample-data", SAMPLE_CHIPS, SAMPLE_SIZE))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output_dir / "kfp-local"),
               raise_on_error=True)
    from components.tracking.mlflow_tracking import tracking_uri_from_env

    # MLFLOW_TRACKING_URI, or the embedded default: a SQLite store in the run folder.
    tracking_uri = tracking_uri_from_env(output_dir)
    # No task-level retries locally: kfp.local honours them (30 s, 60 s, 120 s), which turns a
    # fail-fast error of the first step into minutes of waiting; transfers retry on their own.
    func = pipeline_func or build_pipeline(ClusterSettings(retries=0))
    runs_before = set((output_dir / "kfp-local").glob("*"))
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the steps' subprocesses inherit it
    recorder = sys.stdout = _TailRecorder(sys.stdout)  # kfp.local prints the steps' logs there
    try:
        func(**arguments)
    except RuntimeError as exc:  # kfp.local names the failed task only; add the step's own error
        if "Inner task failed" not in str(exc):
            raise
        raise LocalRunFailed(_describe_failure(str(exc), recorder.lines)) from exc
    finally:
        sys.stdout = recorder.stream
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    (run_root,) = set((output_dir / "kfp-local").glob("*")) - runs_before
    outputs = local_task_outputs(run_root)
    artifacts = {kind: outputs[task]["artifacts"][name] for (task, name), kind in OUTPUT_KINDS.items()}
    summary = gather_run(artifacts, output_dir)
    summary["dataset_uri"] = arguments["dataset_uri"]
    summary["parameters"] = arguments
    summary["kfp_local_run"] = str(run_root)
    summary["mlflow"] = {"tracking_uri": _redacted(tracking_uri),
                         "run_id": outputs["start-tracking"]["parameters"]["Output"],
                         "model_version": outputs["register-model"]["parameters"]["Output"],
                         "registration": Path(outputs["register-model"]["artifacts"]["decision"]).read_text()}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


class LocalRunFailed(RuntimeError):
    """A step of a ``kfp.local`` run failed; the message names the step and its error."""


class _TailRecorder:
    """Writes through to ``stream`` and keeps its last lines (the steps' streamed logs)."""

    def __init__(self, stream, max_lines: int = 20000) -> None:
        import collections

        self.stream = stream
        self.lines: "collections.deque[str]" = collections.deque(maxlen=max_lines)
        self._partial = ""

    def write(self, text: str) -> int:
        *done, self._partial = (self._partial + text).split("\n")
        self.lines.extend(done)
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _describe_failure(message: str, lines) -> str:
    """``step X failed: ErrorType: message`` from kfp.local's error and the steps' logs."""
    import re

    ansi = re.compile(r"\x1b\[[0-9;]*m")
    found = re.search(r"Inner task failed: '?([\w.-]+)'?", ansi.sub("", message))
    if not found:
        return ansi.sub("", message)
    task = found.group(1)
    clean = [ansi.sub("", line) for line in lines]
    end = max((i for i, line in enumerate(clean) if f"Task '{task}' finished with status FAILURE" in line), default=None)
    if end is None:
        return f"step {task} failed (its log is above)"
    error = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Failed))):\s*(.*)$")
    for line in reversed(clean[:end]):
        if f"Executing task '{task}'" in line:
            break
        m = error.match(line)
        if m:
            return f"step {task} failed: {m.group(2)}: {m.group(3).strip()}"
    return f"step {task} failed (its log is above)"


def local_task_outputs(run_root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Outputs of each task of a ``kfp.local`` run, read from its executor output files.

    A pipeline cannot return outputs from inside its exit handler, so the local run reads what
    each task reported instead: ``{task: {"artifacts": {name: path}, "parameters": {name: value}}}``.
    """
    found = {}
    for executor_output in Path(run_root).glob("*/executor_output.json"):
        payload = json.loads(executor_output.read_text())
        found[executor_output.parent.name] = {
            "artifacts": {name: group["artifacts"][0]["uri"] for name, group in payload.get("artifacts", {}).items()},
            "parameters": payload.get("parameterValues", {}),
        }
    return found


def _redacted(uri: str) -> str:
    from components.tracking.mlflow_tracking import _redact

    return _redact(uri)


def print_summary(summary: dict, output_dir: Path) -> None:
    print(f"\nRun folder: {output_dir}")
    for key in ("onnx", "torchscript", "state_dict", "checkpoint", "dlpk", "stac_item", "metrics", "stats"):
        if key in summary:
            print(f"  {key:<12} {Path(output_dir) / summary[key]}")
    metrics = summary.get("test_metrics", {})
    print("Test metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    if "mlflow" in summary:
        print(summary["mlflow"]["registration"].strip())
        print(f"MLflow: {summary['mlflow']['tracking_uri']} (mlflow ui --backend-store-uri {summary['mlflow']['tracking_uri']})")
    print(f"Summary: {Path(output_dir) / 'summary.json'}")


def check_cron(expression: str) -> str:
    """Accept KFP's 6-field cron (leading seconds); explain a 5-field one."""
    fields = expression.split()
    if len(fields) == 5:
        raise ValueError(
            f"--schedule {expression!r} has 5 fields; KFP's cron has a leading seconds field: "
            f"use '0 {expression}' (for example '0 0 3 * * *' is daily at 03:00)"
        )
    if len(fields) != 6:
        raise ValueError(f"--schedule {expression!r}: expected 6 fields (seconds minutes hours day month weekday)")
    return expression


def kfp_client(host: str | None):
    """A ``kfp.Client``; credentials come from KFP's own environment variables only."""
    import kfp

    credentials = None
    token_path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
    if token_path:
        from kfp.client.set_volume_credentials import (
            ServiceAccountTokenVolumeCredentials,
        )

        credentials = ServiceAccountTokenVolumeCredentials(token_path)
    return kfp.Client(host=host, credentials=credentials)


def submit(client, package: Path, arguments: dict[str, Any], experiment: str, version_name: str,
           schedule: str | None = None, job_name: str | None = None, service_account: str | None = None):
    """Upload ``package`` as a new version of the named pipeline and start a run or a schedule."""
    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=PIPELINE_NAME,
                                          description="Camp segmentation training (campseg)")
        pipeline_id = pipeline.pipeline_id
    version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id)
    exp = client.create_experiment(experiment)
    name = job_name or f"{PIPELINE_NAME}-{version_name}"
    if schedule:
        return client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, cron_expression=check_cron(schedule),
            max_concurrency=1, no_catchup=True, enabled=True, params=arguments,
            pipeline_id=pipeline_id, version_id=version.pipeline_version_id, service_account=service_account,
        )
    return client.run_pipeline(experiment_id=exp.experiment_id, job_name=name, params=arguments,
                               pipeline_id=pipeline_id, version_id=version.pipeline_version_id,
                               service_account=service_account)


def build_images(registry: str, tag: str | None, push: bool, wheelhouse: Path | None) -> dict[str, str]:
    """Build the step images with docker/build_images.py (the docker SDK); their references."""
    import importlib.util

    from components import __version__

    spec = importlib.util.spec_from_file_location("campseg_build_images", Path(__file__).parent / "docker" / "build_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_all(registry, tag or __version__, push=push, wheelhouse=wheelhouse)


def settings_from_args(args: argparse.Namespace) -> ClusterSettings:
    s = ClusterSettings(image=args.image, gpu_image=args.gpu_image, accelerator_type=args.accelerator_type, accelerator_count=args.accelerator_count,
                        storage_secret=args.storage_secret, config_map=args.config_map, mlflow_secret=args.mlflow_secret, retries=args.retries,
                        backoff=args.retry_backoff)
    s.gpu_node_selector = tuple(args.gpu_node_selector.split("=", 1)) if args.gpu_node_selector else None
    if args.gpu_toleration:
        parts = args.gpu_toleration.split(":")
        if len(parts) != 3:
            raise SystemExit(f"--gpu-toleration {args.gpu_toleration!r}: expected KEY:OPERATOR:EFFECT")
        s.gpu_toleration = tuple(parts)
    else:
        s.gpu_toleration = None
    for step, resources in args.resources or ():
        if step not in DEFAULT_RESOURCES:
            raise SystemExit(f"--resources: unknown step {step!r}; steps: {', '.join(DEFAULT_RESOURCES)}")
        s.resources[step] = resources
    return s


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compile", action="store_true", help="write the pipeline YAML")
    mode.add_argument("--run-local", action="store_true", help="run with kfp.local in this environment")
    mode.add_argument("--submit", action="store_true", help="upload a new pipeline version and start a run")
    mode.add_argument("--build-images", action="store_true",
                      help="build (and --push) the CPU and CUDA images, then compile the pipeline with them")
    parser.add_argument("--registry", default="", help="image registry of --build-images, e.g. registry.example.com/campseg")
    parser.add_argument("--tag", default=None, help="image tag of --build-images (default: the project version)")
    parser.add_argument("--push", action="store_true", help="push the built images (uses the engine's docker login)")
    parser.add_argument("--wheelhouse", type=Path, default=None, help="install from this wheel folder (offline builds)")
    parser.add_argument("--output", type=Path, default=Path("pipeline.yaml"), help="YAML path of --compile")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/local"), help="run folder of --run-local")
    parser.add_argument("--host", default=None, help="KFP API URL for --submit (default: $KF_PIPELINES_ENDPOINT)")
    parser.add_argument("--experiment", default="camp-segmentation", help="KFP experiment of --submit")
    parser.add_argument("--version-name", default=None, help="pipeline version name (default: a timestamp)")
    parser.add_argument("--service-account", default=None,
                        help="Kubernetes service account of the run's pods (e.g. campseg-pipeline-runner from manifests/)")
    parser.add_argument("--schedule", default=None, help="with --submit: a recurring run on KFP's 6-field cron, e.g. '0 0 3 * * *'")
    cluster = parser.add_argument_group("cluster settings (compile time)")
    d = ClusterSettings()
    cluster.add_argument("--image", default=d.image, help="image of the CPU steps (see docker/)")
    cluster.add_argument("--gpu-image", default="", help="image of the GPU steps, the CUDA image (default: --image)")
    cluster.add_argument("--accelerator-type", default=d.accelerator_type)
    cluster.add_argument("--accelerator-count", type=int, default=d.accelerator_count)
    cluster.add_argument("--gpu-node-selector", default="=".join(d.gpu_node_selector), help="LABEL=VALUE of the GPU node pool; '' for none")
    cluster.add_argument("--gpu-toleration", default=":".join(d.gpu_toleration), help="KEY:OPERATOR:EFFECT of the GPU taint; '' for none")
    cluster.add_argument("--storage-secret", default=d.storage_secret, help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    cluster.add_argument("--mlflow-secret", default=d.mlflow_secret, help="optional Secret with MLFLOW_TRACKING_USERNAME/PASSWORD")
    cluster.add_argument("--config-map", default=d.config_map, help="ConfigMap with AWS_ENDPOINT_URL, MLFLOW_TRACKING_URI, ...")
    cluster.add_argument("--retries", type=int, default=d.retries, help="retries of the steps that talk to storage")
    cluster.add_argument("--retry-backoff", default=d.backoff, help="first retry delay (doubles each retry)")
    cluster.add_argument("--resources", action="append", type=Resources.parse, metavar="STEP=CPU_REQ,CPU_LIM,MEM_REQ,MEM_LIM")
    add_parameter_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.contracts.errors import PipelineInputError

    try:
        if args.compile:
            path = compile_pipeline(args.output, settings_from_args(args))
            print(f"Wrote {path}: upload it in the Kubeflow Pipelines UI (Pipelines > Upload pipeline).")
        elif args.build_images:
            refs = build_images(args.registry, args.tag, args.push, args.wheelhouse)
            args.image, args.gpu_image = refs["cpu"], refs["cuda"]
            path = compile_pipeline(args.output, settings_from_args(args))
            print(f"Images: {refs}\nWrote {path} referencing them.")
        elif args.run_local:
            summary = run_local(pipeline_arguments(args, local=True), args.output_dir)
            print_summary(summary, args.output_dir)
        else:
            arguments = pipeline_arguments(args, local=False)
            if "dataset_uri" not in arguments:
                raise PipelineInputError("--submit needs --dataset-uri (an s3:// prefix the cluster can read)")
            if args.schedule:
                check_cron(args.schedule)
            import time

            version = args.version_name or time.strftime("v%Y%m%d-%H%M%S")
            with tempfile.TemporaryDirectory() as tmp:
                package = compile_pipeline(Path(tmp) / "pipeline.yaml", settings_from_args(args))
                result = submit(kfp_client(args.host), package, arguments, args.experiment, version, args.schedule,
                                service_account=args.service_account)
            kind = "recurring run" if args.schedule else "run"
            ident = getattr(result, "recurring_run_id", None) or getattr(result, "run_id", None)
            print(f"Created {kind} {ident} of {PIPELINE_NAME} version {version}.")
    except (PipelineInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LocalRunFailed as exc:
        print(f"error: the local pipeline run failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # errors from the KFP server reach the user in plain words
        if type(exc).__name__ == "ApiException":
            print(f"error: the KFP server refused the request ({getattr(exc, 'status', '?')} {getattr(exc, 'reason', '')}): "
                  f"{getattr(exc, 'body', exc)}", file=sys.stderr)
            return 1
        import urllib3

        if isinstance(exc, (urllib3.exceptions.HTTPError, TimeoutError)):  # no answer: unreachable host, dropped connection
            host = args.host or os.environ.get("KF_PIPELINES_ENDPOINT", "")
            print(f"error: cannot reach the KFP server at {host}: {getattr(exc, 'reason', None) or exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
