"""The command line of ``pipeline.py``: compile, run locally, submit, or build the images and compile.

    python pipeline.py --compile --image REF --gpu-image REF [--output pipeline.yaml] [cluster flags]
    python pipeline.py --run-local [--dataset-uri PATH] [parameters] [--output-dir DIR]
    python pipeline.py --run-local --runner docker [--image REF] --dataset-uri URI [parameters]
    python pipeline.py --submit --host URL [--namespace NS] (--image REF --gpu-image REF | --package pipeline.yaml) [--schedule CRON] [parameters]
    python pipeline.py --build-images --registry REGISTRY [--tag TAG] [--push] [cluster flags]

``--compile`` and ``--submit`` without ``--image`` and ``--gpu-image`` use the references that
``--build-images`` recorded in ``build/images.json`` (``--images-file``), and refuse when there are
none: no image is guessed. ``--accelerator-count 0`` compiles for a CPU-only cluster (no
``--gpu-image`` needed).

``--submit`` authenticates by kfp.Client's routes: ``$CAMPSEG_KFP_TOKEN`` (or ``--existing-token``),
``$CAMPSEG_KFP_COOKIES`` (or ``--cookies``), ``$KF_PIPELINES_SA_TOKEN_PATH`` and the other
``KF_PIPELINES_*`` variables kfp reads itself (``components/kubeflow/submission.py``).
``--schedule`` replaces the experiment's recurring run of the same name (``--run-name``).

Every pipeline parameter is also taken under the name ``python -m components`` gives it
(``--train-epochs``/``--epochs``; ``components/cli/vocabulary.py``). ``--config FILE`` reads the
options from YAML (the mode stays on the command line, whose flags win); ``--print-config`` prints
the effective options of the mode as such a file and exits. A flag the mode ignores is refused
(:data:`APPLIES`).

``pipeline.py`` holds the pipeline and hands its factory to :func:`main`.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from components.cli.common import DEBUG_FLAG, DEBUG_HELP, check_numbers, pop_debug, report
from components.cli.options import (
    HelpFormatter,
    add_config_flags,
    apply_config,
    config_path,
    config_values,
    dump_config,
    effective_config,
    explicit_dests,
    fill_repeated,
    parse_bool,
)
from components.cli.vocabulary import NO_AUGMENT, PREDICTION, SWITCH, TRAINING, flag, option_strings
from components.contracts.config import TrainConfig
from components.contracts.errors import ParameterError, PipelineInputError
from components.kubeflow.cluster import ClusterSettings, Resources, Step
from components.kubeflow.images import IMAGES_FILE, build_images, record_images, recorded_images
from components.kubeflow.local_runner import (
    LOCAL_DEFAULTS,
    LOCAL_SETTINGS,
    LocalRunFailed,
    docker_settings,
    print_summary,
    run_local,
)
from components.kubeflow.submission import (
    COOKIES_ENV,
    TOKEN_ENV,
    check_cron,
    compile_package,
    kfp_auth,
    kfp_client,
    submit,
)

#: ``build_pipeline(settings)``: the pipeline function, its steps configured for ``settings``.
PipelineFactory = Callable[[ClusterSettings], Any]
#: Python type of each KFP parameter type.
_KFP_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": parse_bool}
#: Both pipelines' parameters and their aliases (the names of ``python -m components``).
VOCABULARY = {**TRAINING, **PREDICTION}

#: The modes, by destination.
MODES = {"compile": "--compile", "run_local": "--run-local", "submit": "--submit", "build_images": "--build-images"}
_CLUSTER = ("compile", "submit", "build_images")
_SUBMISSION = (("submit",), "a setting of the KFP submission")
_CLUSTER_SETTING = (_CLUSTER, "a cluster setting, compiled into the pipeline YAML")
_BUILD = (("build_images",), "a setting of the image build")
_LOCAL = (("run_local",), "a setting of the local run")
#: The modes each option applies to, and why (options of every mode: --config, --print-config,
#: --debug). Pipeline parameters apply to --run-local and --submit (:data:`PARAMETERS_APPLY`).
APPLIES: dict[str, tuple[tuple[str, ...], str]] = {
    "registry": _BUILD, "tag": _BUILD, "push": _BUILD, "wheelhouse": _BUILD,
    "output": (("compile", "build_images"), "the path of the compiled pipeline YAML"),
    "output_dir": _LOCAL, "runner": _LOCAL, "verbose": _LOCAL,
    # Read (and removed) by pipeline.py before parsing; listed here so that --help shows it.
    "pipeline": (("compile", "submit", "build_images"), "--run-local runs the training pipeline only"),
    "host": _SUBMISSION, "namespace": _SUBMISSION, "existing_token": _SUBMISSION, "cookies": _SUBMISSION,
    "experiment": _SUBMISSION, "version_name": _SUBMISSION, "service_account": _SUBMISSION,
    "schedule": _SUBMISSION, "run_name": _SUBMISSION,
    "package": (("submit",), "it uploads an already compiled pipeline"),
    # --run-local --runner docker runs every step in the CPU image: --image, or the recorded one.
    "image": (("compile", "submit", "build_images", "run_local"), "the CPU image of the steps"),
    "images_file": (("compile", "submit", "build_images", "run_local"), "where the built images are recorded"),
    **{name: _CLUSTER_SETTING for name in (
        "gpu_image", "accelerator_type", "accelerator_count", "gpu_node_selector", "gpu_toleration",
        "only_gpu_pool", "storage_secret", "mlflow_secret", "config_map", "retries", "retry_backoff",
        "pod_retries", "scratch_size", "scratch_volume", "scratch_storage_class", "resources",
        "train_nodes", "train_gpus_per_node", "train_job_kind", "train_runtime", "train_job_prefix",
        "train_job_timeout")},
}
PARAMETERS_APPLY = (("run_local", "submit"), "a pipeline parameter: a run's value; a compiled pipeline "
                    "takes it when a run starts in the KFP UI")
#: Cluster settings that --submit --package cannot change (the YAML is uploaded as compiled).
_COMPILED = [name for name, (modes, _) in APPLIES.items() if modes == _CLUSTER or name == "image"]


def parse_resources(text: str) -> tuple[str, Resources]:
    """``STEP=CPU_REQ,CPU_LIM,MEM_REQ,MEM_LIM``, e.g. ``train-model=4,8,16Gi,32Gi``."""
    try:
        step, values = text.split("=", 1)
        cpu_req, cpu_lim, mem_req, mem_lim = values.split(",")
    except ValueError:
        raise argparse.ArgumentTypeError(f"--resources {text!r}: expected STEP=CPU_REQ,CPU_LIM,MEM_REQ,MEM_LIM") from None
    return step, Resources(cpu_req, cpu_lim, mem_req, mem_lim)


def _default_text(name: str, spec) -> str:
    """What the help says of a parameter's default: the truth for --run-local too."""
    if spec.default is None:
        return "required by --submit; --run-local uses the sample dataset" if name == "dataset_uri" else "required"
    shown = repr(spec.default) if spec.default == "" else spec.default
    if name in LOCAL_DEFAULTS and LOCAL_DEFAULTS[name] != spec.default:
        return f"default: {shown} on a cluster; --run-local uses {LOCAL_DEFAULTS[name]} unless given"
    return f"default: {shown}"


def add_parameter_flags(parser: argparse.ArgumentParser, pipeline_func) -> None:
    """One option per pipeline parameter, named ``--PARAMETER`` and by its aliases, with the
    docstring's description and the actual default as help."""
    group = parser.add_argument_group(
        "pipeline parameters (--run-local and --submit; each also under the name python -m components gives it)")
    for name, spec in pipeline_func.component_spec.inputs.items():
        shape = SWITCH if spec.type == "Boolean" else {"metavar": name.split("_", 1)[-1].upper()}
        group.add_argument(*option_strings(name, VOCABULARY), dest=name, type=_KFP_TYPES[spec.type], default=None,
                           help=f"{spec.description} ({_default_text(name, spec)})", **shape)
        if name == "train_augment":
            group.add_argument(NO_AUGMENT, dest=name, action="store_false", default=argparse.SUPPRESS,
                               help="same as --train-augment false")


def pipeline_arguments(args: argparse.Namespace, pipeline_func, local: bool) -> dict[str, Any]:
    """The parameters the user set, plus the lighter local defaults for ``--run-local``."""
    names = pipeline_func.component_spec.inputs
    chosen = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if local:
        chosen = {**LOCAL_DEFAULTS, **chosen}
    return chosen


def check_pipeline_arguments(arguments: Mapping[str, Any], pipeline_func) -> None:
    """Refuse bad pipeline parameters here, before any step runs or is submitted.

    The values are ``arguments`` over the pipeline's defaults: every float finite, ``split_seed``
    in ``0 .. 2**32-1``, the training options as :class:`TrainConfig` takes them, the split ratios,
    the threshold, the model name and the promotion settings (the first step checks the last two
    again on the cluster).

    Raises:
        ParameterError: naming the parameter's flag.
    """
    from components.contracts.naming import check_model_name
    from components.contracts.preprocessing import check_class_name
    from components.data.splits import SplitRatios
    from components.tracking.promotion import check_promotion_settings

    inputs = pipeline_func.component_spec.inputs
    values = {name: spec.default for name, spec in inputs.items() if spec.default is not None}
    values.update(arguments)
    check_numbers(values, seeds=("split_seed",))
    train = {name.removeprefix("train_"): v for name, v in values.items() if name.startswith("train_")}
    if train.get("batch_size") == 0:  # auto
        train["batch_size"] = None
    try:
        TrainConfig(**train, seed=values.get("split_seed", TrainConfig.seed))
    except (ParameterError, TypeError) as exc:  # name the pipeline's flag, not the config field
        text = str(exc)
        for field in train:
            if text.startswith(f"{field}="):
                text = flag("train_" + field) + text[len(field):]
        raise ParameterError(text) from None
    if "split_train_ratio" in values:
        SplitRatios(values["split_train_ratio"], values["split_val_ratio"], values["split_test_ratio"])
    if values.get("dataset_image_size", 0) < 0:
        raise ParameterError(f"--dataset-image-size={values['dataset_image_size']}: must be >= 0 "
                             "(0: the chips' own size)")
    if "model_threshold" in values and not 0 < values["model_threshold"] < 1:
        raise ParameterError(f"--model-threshold={values['model_threshold']!r}: must lie strictly between 0 and 1")
    if "model_name" in values:
        check_model_name(values["model_name"])
    if "model_class_name" in values:
        check_class_name(values["model_class_name"], "--model-class-name")
    check_promotion_settings(values.get("tracking_promotion_metric", "iou"),
                             values.get("tracking_promotion_margin", 0.0))


def settings_from_args(args: argparse.Namespace, steps: Mapping[str, Step]) -> ClusterSettings:
    """The cluster settings of the flags; ``--resources`` must name a step of ``steps``."""
    s = ClusterSettings(image=args.image, gpu_image=args.gpu_image, accelerator_type=args.accelerator_type,
                        accelerator_count=args.accelerator_count, only_gpu_pool=args.only_gpu_pool,
                        storage_secret=args.storage_secret.strip(), config_map=args.config_map.strip(),
                        mlflow_secret=args.mlflow_secret.strip(), retries=args.retries, backoff=args.retry_backoff,
                        pod_retries=args.pod_retries, scratch_size=args.scratch_size.strip(),
                        scratch_volume=args.scratch_volume, scratch_storage_class=args.scratch_storage_class.strip(),
                        train_nodes=args.train_nodes, train_gpus_per_node=args.train_gpus_per_node,
                        train_job_kind=args.train_job_kind, train_runtime=args.train_runtime.strip(),
                        train_job_prefix=args.train_job_prefix.strip(), train_job_timeout=args.train_job_timeout)
    s.gpu_node_selector = tuple(args.gpu_node_selector.split("=", 1)) if args.gpu_node_selector else None
    if args.gpu_toleration:
        parts = args.gpu_toleration.split(":")
        if len(parts) != 3:
            raise ParameterError(f"--gpu-toleration {args.gpu_toleration!r}: expected KEY:OPERATOR:EFFECT")
        s.gpu_toleration = tuple(parts)
    else:
        s.gpu_toleration = None
    for step, resources in args.resources or ():
        if step not in steps:
            raise ParameterError(f"--resources: unknown step {step!r}; steps: {', '.join(steps)}")
        s.resources[step] = resources
    return s


def build_parser(pipeline_func) -> argparse.ArgumentParser:
    """The flags: a mode, its options, the cluster settings and one flag per pipeline parameter."""
    parser = argparse.ArgumentParser(prog="pipeline.py", description=__doc__, formatter_class=HelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compile", action="store_true", help="write the pipeline YAML")
    mode.add_argument("--run-local", action="store_true", help="run with kfp.local in this environment")
    mode.add_argument("--submit", action="store_true", help="upload a new pipeline version and start a run")
    mode.add_argument("--build-images", action="store_true",
                      help="build (and --push) the CPU and CUDA images, then compile the pipeline with them")
    parser.add_argument("--pipeline", choices=("training", "predict"), default="training",
                        help="which pipeline: training, or predict (batch prediction over scenes; docs/predict.md); "
                             "--help after it lists that pipeline's parameters")
    parser.add_argument("--registry", default="", help="image registry of --build-images, e.g. registry.example.com/campseg")
    parser.add_argument("--tag", default=None, help="image tag of --build-images (default: the project version)")
    parser.add_argument("--push", action="store_true", help="push the built images (uses the engine's docker login)")
    parser.add_argument("--wheelhouse", type=Path, default=None, help="install from this wheel folder (offline builds)")
    parser.add_argument("--output", type=Path, default=Path("pipeline.yaml"), help="YAML path of --compile")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/local"), help="run folder of --run-local")
    parser.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                        help="--run-local: each step in this Python environment (subprocess), or in the CPU "
                             "image (--image, default the recorded one) with kfp.local's DockerRunner, on the "
                             "host network with the S3/MLflow variables of this environment (docker)")
    parser.add_argument("--verbose", action="store_true",
                        help="--run-local: show kfp.local's own lines and every step's output as they come "
                             "(always kept in the run folder's kfp-local.log; without it, one line per step)")
    parser.add_argument("--host", default=None, help="KFP API URL for --submit (default: $KF_PIPELINES_ENDPOINT)")
    parser.add_argument("--namespace", default=None,
                        help="Kubeflow profile namespace of --submit (multi-user Kubeflow): the experiment, the "
                             "pipeline and the runs live there (default: single-user KFP, or kfp's context)")
    parser.add_argument("--existing-token", default=None, metavar="TOKEN",
                        help=f"bearer token for the KFP API; prefer ${TOKEN_ENV} (a flag's value is visible to "
                             "other users of the machine and lands in shell history)")
    parser.add_argument("--cookies", default=None, metavar="NAME=VALUE",
                        help=f"session cookie for the KFP API (e.g. oauth2_proxy_kubeflow=...); prefer ${COOKIES_ENV}")
    parser.add_argument("--experiment", default="camp-segmentation", help="KFP experiment of --submit")
    parser.add_argument("--version-name", default=None, help="pipeline version name (default: a timestamp)")
    parser.add_argument("--service-account", default=None,
                        help="Kubernetes service account of the run's pods (e.g. campseg-pipeline-runner from manifests/)")
    parser.add_argument("--schedule", default=None,
                        help="with --submit: a recurring run on KFP's 6-field cron, e.g. '0 0 3 * * *' (in the "
                             "time zone of KFP's scheduler, UTC by default); it replaces the experiment's "
                             "recurring runs of the same --run-name")
    parser.add_argument("--run-name", default=None,
                        help="name of the run (default: PIPELINE-VERSION) or of the recurring run (default: the "
                             "pipeline's name)")
    parser.add_argument("--package", type=Path, default=None,
                        help="with --submit: upload this compiled pipeline YAML unchanged instead of compiling "
                             "(the cluster flags are then the ones it was compiled with)")
    cluster = parser.add_argument_group("cluster settings (compile time)")
    d = ClusterSettings()
    cluster.add_argument("--image", default="",
                         help="image of the CPU steps, as pushed (digest form REPO@sha256:... preferred; see docker/); "
                              "default: the cpu reference in --images-file")
    cluster.add_argument("--gpu-image", default="",
                         help="image of the GPU steps, the CUDA image; needed unless --accelerator-count 0; "
                              "default: the cuda reference in --images-file")
    cluster.add_argument("--images-file", type=Path, default=IMAGES_FILE,
                         help="where --build-images records the image references and --compile/--submit read "
                              "them when neither --image nor --gpu-image is given (default: %(default)s)")
    cluster.add_argument("--accelerator-type", default=d.accelerator_type,
                         help="Kubernetes resource name of the training step's GPUs")
    cluster.add_argument("--accelerator-count", type=int, default=d.accelerator_count,
                         help="GPUs of the training step (default: %(default)s); 0 for a CPU-only cluster: no "
                              "accelerator, node selector or toleration on any step")
    cluster.add_argument("--gpu-node-selector", default="=".join(d.gpu_node_selector), help="LABEL=VALUE of the GPU node pool; '' for none")
    cluster.add_argument("--gpu-toleration", default=":".join(d.gpu_toleration), help="KEY:OPERATOR:EFFECT of the GPU taint; '' for none")
    cluster.add_argument("--only-gpu-pool", action="store_true",
                         help="the cluster's only node pool is the GPU pool: every step gets its node selector and "
                              "toleration; still only training requests a GPU")
    cluster.add_argument("--storage-secret", default=d.storage_secret,
                         help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (default: %(default)s); "
                              "'' for none (e.g. credentials from the node's or service account's identity)")
    cluster.add_argument("--mlflow-secret", default=d.mlflow_secret,
                         help="optional Secret with MLFLOW_TRACKING_USERNAME/PASSWORD (default: %(default)s); "
                              "'' for none (an MLflow server without login)")
    cluster.add_argument("--config-map", default=d.config_map,
                         help="ConfigMap with AWS_ENDPOINT_URL, MLFLOW_TRACKING_URI, ... (default: %(default)s); "
                              "'' for none")
    cluster.add_argument("--retries", type=int, default=d.retries,
                         help="in-process retries of transient failures (storage, network, server 5xx) of the steps "
                              "that talk to storage or MLflow (default: %(default)s); other errors fail at once")
    cluster.add_argument("--retry-backoff", default=d.backoff,
                         help="first delay of those retries, doubling each time (default: %(default)s)")
    cluster.add_argument("--pod-retries", type=int, default=d.pod_retries,
                         help="KFP retry policy: rerun a failed pod of those steps this often (default: %(default)s). "
                              "It cannot tell transient from deterministic failures: use it only against evicted "
                              "or preempted pods (spot nodes)")
    cluster.add_argument("--scratch-size", default=d.scratch_size,
                         help="scratch volume of the steps that download data, mounted at /scratch with TMPDIR on it "
                              "(default: %(default)s); '' for none (the container's own /tmp)")
    cluster.add_argument("--scratch-volume", choices=("ephemeral", "empty-dir"), default=d.scratch_volume,
                         help="ephemeral: a generic ephemeral volume (its own claim, default); empty-dir: the node's "
                              "ephemeral storage, limited to --scratch-size")
    cluster.add_argument("--scratch-storage-class", default=d.scratch_storage_class,
                         help="StorageClass of the ephemeral scratch volume (default: the cluster's default)")
    cluster.add_argument("--resources", action="append", type=parse_resources, metavar="STEP=CPU_REQ,CPU_LIM,MEM_REQ,MEM_LIM",
                         help="CPU and memory requests and limits of a step instead of its row in the step table "
                              "(repeatable)")
    cluster.add_argument("--train-nodes", type=int, default=d.train_nodes,
                         help="nodes of the training (default: %(default)s). N > 1: the training step submits a "
                              "Kubeflow Trainer TrainJob (or --train-job-kind pytorchjob) of N nodes, waits for it "
                              "and collects its run folder from --train-job-prefix (see docs/cluster.md)")
    cluster.add_argument("--train-gpus-per-node", type=int, default=d.train_gpus_per_node,
                         help="GPUs of each training node with --train-nodes N > 1 (default: --accelerator-count)")
    cluster.add_argument("--train-job-kind", choices=("trainjob", "pytorchjob"), default=d.train_job_kind,
                         help="trainjob: Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1, default); pytorchjob: "
                              "the Training Operator v1 (kubeflow.org/v1) of older installs")
    cluster.add_argument("--train-runtime", default=d.train_runtime,
                         help="ClusterTrainingRuntime of the TrainJob (default: %(default)s)")
    cluster.add_argument("--train-job-prefix", default=d.train_job_prefix, metavar="s3://BUCKET/PREFIX/",
                         help="with --train-nodes N > 1: where the job's inputs and run folder go, as "
                              "PREFIX/<job name>/ (the storage Secret must reach it)")
    cluster.add_argument("--train-job-timeout", default=d.train_job_timeout,
                         help="how long the training step waits for the job, e.g. 90m or 24h (default: "
                              "%(default)s); the job's activeDeadlineSeconds too")
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    add_config_flags(parser, "the options (not the mode)")
    add_parameter_flags(parser, pipeline_func)
    return parser


def run_local_command(args: argparse.Namespace, build_pipeline: PipelineFactory, arguments: dict[str, Any]) -> None:
    """``--run-local``: the pipeline through kfp.local, on the sample dataset unless ``--dataset-uri``
    (written by :func:`run_local` into the run folder once the folder is checked and locked); with
    ``--runner docker`` every step in the CPU image."""
    docker_image = None
    if args.runner == "docker":
        use_recorded_images(args)
        if not args.image:
            raise ParameterError("--runner docker needs --image REF (the CPU image, e.g. built by --build-images)")
        docker_image = args.image
    settings = LOCAL_SETTINGS if docker_image is None else docker_settings(docker_image)
    summary = run_local(arguments, args.output_dir, build_pipeline(settings), docker_image=docker_image,
                        verbose=args.verbose)
    print_summary(summary, args.output_dir)


def use_recorded_images(args: argparse.Namespace) -> None:
    """Without ``--image`` and ``--gpu-image``, take the references ``--build-images`` recorded.

    Either flag given: the flags alone decide (never half from the file). Nothing to use is refused
    by :meth:`ClusterSettings.check`.
    """
    if args.image or args.gpu_image:
        return
    refs = recorded_images(args.images_file)
    if refs:
        args.image, args.gpu_image = refs["cpu"], refs.get("cuda", "")
        print(f"Images recorded by --build-images in {args.images_file}: {args.image}, "
              f"{args.gpu_image or '(no CUDA image)'}")


def cluster_settings(args: argparse.Namespace, steps: Mapping[str, Step]) -> ClusterSettings:
    """The checked cluster settings of ``--compile`` and ``--submit`` (images from the flags or the
    recorded ones)."""
    use_recorded_images(args)
    return settings_from_args(args, steps).check()


def submit_command(args: argparse.Namespace, build_pipeline: PipelineFactory, steps: Mapping[str, Step],
                   arguments: dict[str, Any], pipeline_name: str) -> None:
    """``--submit``: compile with the cluster flags (or take ``--package`` as it is), upload a new
    version, start a run or a schedule."""
    inputs = build_pipeline(ClusterSettings()).component_spec.inputs
    if "dataset_uri" in inputs and "dataset_uri" not in arguments:
        raise PipelineInputError("--submit needs --dataset-uri (an s3:// prefix the cluster can read)")
    missing = [flag(name) for name, spec in inputs.items() if spec.default is None and name not in arguments]
    if missing:
        raise PipelineInputError(f"--submit needs {', '.join(missing)}")
    if args.schedule:
        check_cron(args.schedule)
    if args.package is not None and not args.package.is_file():
        raise PipelineInputError(f"--package {args.package}: no such file (compile it with --compile)")
    auth = kfp_auth(args.existing_token, args.cookies)
    settings = None if args.package is not None else cluster_settings(args, steps)
    version = args.version_name or time.strftime("v%Y%m%d-%H%M%S")
    print(f"KFP credentials: {auth.describe()}" + (f"; namespace {args.namespace}" if args.namespace else ""))
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or compile_package(build_pipeline(settings), Path(tmp) / "pipeline.yaml")
        result = submit(kfp_client(args.host, auth), package, pipeline_name, arguments, args.experiment, version,
                        args.schedule, job_name=args.run_name, service_account=args.service_account,
                        namespace=args.namespace)
    print(f"Created {result.kind} {result.id} ({result.name}) of {pipeline_name} version {version}.")
    if result.replaced:
        print(f"Replaced (disabled, then deleted) the recurring run(s) called {result.name}: {', '.join(result.replaced)}.")


def _typed(action: argparse.Action, argv: Sequence[str]) -> str:
    """The name the user gave ``action`` on the command line (``--epochs``), else its first."""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in action.option_strings:
            return name
    return action.option_strings[0]


def _applies(dest: str, inputs: Mapping[str, Any]) -> tuple[tuple[str, ...], str] | None:
    """The modes option ``dest`` applies to and why; None for an option of every mode."""
    if dest in inputs:
        return PARAMETERS_APPLY
    return APPLIES.get(dest)


def check_mode(parser: argparse.ArgumentParser, args: argparse.Namespace, mode: str, inputs: Mapping[str, Any],
               argv: Sequence[str], config: Mapping[str, Any], config_file: Path | None) -> None:
    """Refuse an option given (on the command line ``argv`` or in the config file) that ``mode``
    ignores; ``inputs`` are the pipeline's parameters.

    Raises:
        ParameterError: naming the flag (as typed, or the config file and key) and the mode.
    """
    explicit = explicit_dests(parser, argv)
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.option_strings:
            actions.setdefault(action.dest, action)
    for dest in [d for d in actions if d in explicit or d in config]:
        applies = _applies(dest, inputs)
        if applies is None or mode in applies[0]:
            continue
        modes, why = applies
        where = _where(actions[dest], argv if dest in explicit else None, config_file)
        names = [MODES[m] for m in modes]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ParameterError(f"{where} goes with {listed}, not {MODES[mode]} ({why})")
    chosen = explicit | set(config)
    if mode == "run_local" and args.runner != "docker":
        for dest in ("image", "images_file"):
            if dest in chosen:
                where = _where(actions[dest], argv if dest in explicit else None, config_file)
                raise ParameterError(f"{where} goes with --run-local only with --runner docker (the steps' image)")
    if mode == "submit" and args.package is not None:
        for dest in _COMPILED:
            if dest in chosen:
                where = _where(actions[dest], argv if dest in explicit else None, config_file)
                raise ParameterError(f"--package uploads the YAML as compiled, with its images and cluster "
                                     f"settings: drop {where}, or drop --package to compile with it")


def _where(action: argparse.Action, argv: Sequence[str] | None, config_file: Path | None) -> str:
    """The option as the user gave it: its name in ``argv``, else the config file's key."""
    if argv is not None:
        return _typed(action, argv)
    return f"{config_file}: {action.option_strings[0].removeprefix('--')}"


def mode_config(parser: argparse.ArgumentParser, args: argparse.Namespace, mode: str, pipeline_func,
                arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options of ``mode`` as a config file: each option that applies to it, the pipeline's
    parameters with the values the run would get."""
    inputs = pipeline_func.component_spec.inputs
    values = None
    if arguments is not None:
        values = {name: spec.default for name, spec in inputs.items()}
        values.update(arguments)

    def keep(action: argparse.Action) -> bool:
        if action.dest in MODES:
            return False
        applies = _applies(action.dest, inputs)
        if mode == "run_local" and args.runner != "docker" and action.dest in ("image", "images_file"):
            return False
        if mode == "submit" and args.package is not None and action.dest in _COMPILED:
            return False
        return applies is None or mode in applies[0]

    def to_yaml(dest: str, value: Any) -> Any:
        if dest == "resources" and value:
            return [f"{step}={r.cpu_request},{r.cpu_limit},{r.memory_request},{r.memory_limit}" for step, r in value]
        return value

    return effective_config(parser, args, keep=keep, values=values, to_yaml=to_yaml)


def main(argv: Sequence[str] | None, build_pipeline: PipelineFactory, steps: Mapping[str, Step]) -> int:
    """Parse ``argv`` and run its mode; errors reach the user as one ``error:`` line.

    Args:
        argv: the flags (default: ``sys.argv[1:]``).
        build_pipeline: ``pipeline.build_pipeline``, the pipeline for a :class:`ClusterSettings`.
        steps: ``pipeline.STEPS``, the step policy table (the names ``--resources`` accepts).

    Returns:
        The exit status: 0; 2 for invalid input (checked before a local run or a submission) or
        another failure the user can act on; 1 when a local run or the KFP server failed, or on an
        unexpected error. ``--debug`` (or ``CAMPSEG_DEBUG=1``) prints the traceback too.
    """
    argv, debug = pop_debug(argv)
    default = build_pipeline(ClusterSettings())
    parser = build_parser(default)
    config_file = config_path(argv)
    try:
        config = {} if config_file is None else config_values(config_file, parser, refused={
            m: "the mode is given on the command line" for m in MODES.values()})
    except ParameterError as exc:
        return report(exc, debug, status=2)
    apply_config(parser, config)
    args = parser.parse_args(argv)
    fill_repeated(parser, args, config)
    try:
        mode = next(m for m in MODES if getattr(args, m))
        check_mode(parser, args, mode, default.component_spec.inputs, argv, config, config_file)
        if args.print_config:
            arguments = None
            if mode in PARAMETERS_APPLY[0]:
                arguments = pipeline_arguments(args, default, local=mode == "run_local")
                check_pipeline_arguments(arguments, default)
            print(dump_config(mode_config(parser, args, mode, default, arguments)), end="")
            return 0
        if args.compile:
            path = compile_package(build_pipeline(cluster_settings(args, steps)), args.output)
            print(f"Wrote {path}: upload it in the Kubeflow Pipelines UI (Pipelines > Upload pipeline).")
        elif args.build_images:
            settings_from_args(args, steps)  # flag errors before a long build
            refs = build_images(args.registry, args.tag, args.push, args.wheelhouse)
            args.image, args.gpu_image = refs["cpu"], refs.get("cuda", "")
            recorded = record_images(refs, args.images_file)
            path = compile_package(build_pipeline(settings_from_args(args, steps).check()), args.output)
            print(f"Images: {refs} (recorded in {recorded} for --compile and --submit)\n"
                  f"Wrote {path} referencing them.")
        elif args.run_local:
            arguments = pipeline_arguments(args, default, local=True)
            check_pipeline_arguments(arguments, default)
            run_local_command(args, build_pipeline, arguments)
        else:
            arguments = pipeline_arguments(args, default, local=False)
            check_pipeline_arguments(arguments, default)
            submit_command(args, build_pipeline, steps, arguments, default.name)
    except (PipelineInputError, ValueError) as exc:
        return report(exc, debug, status=2)
    except LocalRunFailed as exc:
        return report(exc, debug, message=f"the local pipeline run failed: {exc}", status=1)
    except Exception as exc:  # noqa: BLE001 - errors from the KFP server reach the user in plain words
        return _server_error(exc, args.host, debug)
    return 0


def _server_error(exc: Exception, host: str | None, debug: bool) -> int:
    """One ``error:`` line for a KFP server's refusal or silence (exit 1), a user-facing error
    (exit 2), or anything unexpected (exit 1)."""
    if type(exc).__name__ == "ApiException":
        message = (f"the KFP server refused the request ({getattr(exc, 'status', '?')} "
                   f"{getattr(exc, 'reason', '')}): {getattr(exc, 'body', exc)}")
        return report(exc, debug, message=message, status=1)
    import urllib3

    if isinstance(exc, (urllib3.exceptions.HTTPError, TimeoutError)):  # no answer: unreachable host, dropped connection
        host = host or os.environ.get("KF_PIPELINES_ENDPOINT", "")
        message = f"cannot reach the KFP server at {host}: {getattr(exc, 'reason', None) or exc}"
        return report(exc, debug, message=message, status=1)
    return report(exc, debug)
