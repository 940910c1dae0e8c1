"""The compiled pipeline YAML: tasks, parameters, caching, retries, placement, credentials, scratch volume."""

from __future__ import annotations

import pytest
import yaml

import pipeline
from components.contracts.config import TrainConfig
from components.contracts.preprocessing import Preprocessing
from components.data.splits import SplitRatios
from components.kubeflow.cluster import BACKOFF_ENV, RETRIES_ENV

IMAGES = ["--image", "registry.example/campseg:1", "--gpu-image", "registry.example/campseg-cuda:1"]
STAGE_TASKS = {"dataset-statistics", "train-model", "export-model", "evaluate-model", "package-dlpk", "generate-stac-item"}


def tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def executor_config(platform: dict, task: str) -> dict:
    deployment = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return deployment[f"exec-{task}"]


def container_of(spec: dict, task: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]


def env_of(spec: dict, task: str) -> dict:
    return {e["name"]: e["value"] for e in container_of(spec, task).get("env", [])}


def compile_with(tmp_path, *flags: str) -> tuple[dict, dict]:
    """The pipeline spec and platform config ``--compile`` writes with ``flags`` (and the images)."""
    out = tmp_path / "p.yaml"
    assert pipeline.main(["--compile", "--output", str(out), "--images-file", str(tmp_path / "none.json"),
                          *IMAGES, *flags]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def dag_tasks(spec: dict) -> dict:
    """Every task of the pipeline, inside the exit handler's group or not."""
    found = {}
    for name, task in tasks(spec).items():
        found[name] = task
    for component in spec["components"].values():
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


#: The DAG's groups: the exit handler and the condition around training (not steps).
GROUPS = {"exit-handler-1", "condition-2"}


def test_six_stage_tasks_plus_fingerprint_decision_and_tracking(compiled):
    _, docs = compiled
    assert set(dag_tasks(docs["spec"])) - GROUPS == STAGE_TASKS | {
        "dataset-fingerprint", "decide-training", "start-tracking", "register-model", "end-tracking"}
    assert tasks(docs["spec"])["end-tracking"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_training_and_registration_run_only_when_the_decision_says_train(compiled):
    """Statistics to registration sit in one dsl.If on the uncached decision step's output."""
    _, docs = compiled
    spec = docs["spec"]
    condition = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["condition-2"]
    assert condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--decide-training-Output'] == 'train'")
    assert set(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == STAGE_TASKS | {"register-model"}
    decision = dag_tasks(spec)["decide-training"]
    assert decision["cachingOptions"].get("enableCache", False) is False
    assert decision["inputs"]["parameters"]["fingerprint"]["taskOutputParameter"]["producerTask"] == (
        "dataset-fingerprint")
    assert decision["inputs"]["parameters"]["force_retrain"]["componentInputParameter"] == "pipelinechannel--force_retrain"
    assert spec["root"]["inputDefinitions"]["parameters"]["force_retrain"]["defaultValue"] is False


def test_gpu_task_has_accelerator_node_selector_and_toleration(compiled):
    _, docs = compiled
    container = docs["spec"]["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert str(container["resources"]["accelerator"]["resourceCount"]) == "1"
    assert container["resources"]["cpuLimit"] == 6.0
    assert container["resources"]["memoryRequest"] == pytest.approx(12 * 2**30 / 1e9)  # KFP writes GB
    config = executor_config(docs["platform"], "train-model")
    assert config["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert config["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cpu_only = docs["spec"]["deploymentSpec"]["executors"]["exec-package-dlpk"]["container"]
    assert "accelerator" not in cpu_only.get("resources", {})


def test_images_are_the_compile_flags(compiled):
    _, docs = compiled
    images = {name: e["container"]["image"] for name, e in docs["spec"]["deploymentSpec"]["executors"].items()}
    assert images.pop("exec-train-model") == "registry.example/campseg-cuda:1.2.3"
    assert set(images.values()) == {"registry.example/campseg:1.2.3"}


@pytest.mark.parametrize("flags, needle", [
    ([], "no step image: pass --image REF and --gpu-image REF"),
    (["--image", "registry.example/campseg:1"], "--accelerator-count 1 requests a GPU for training but no --gpu-image"),
    (["--image", "registry.example/campseg:1", "--accelerator-count", "-1"], "must be >= 0"),
    (["--image", "registry.example/campseg:1", "--gpu-image", "two words"], "not an image reference"),
])
def test_compile_refuses_a_missing_image_or_a_gpu_without_its_image(tmp_path, capsys, flags, needle):
    out = tmp_path / "p.yaml"
    code = pipeline.main(["--compile", "--output", str(out), "--images-file", str(tmp_path / "none.json"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert needle in line, line
    assert not out.exists()


def test_cpu_only_cluster_has_no_accelerator_selector_or_toleration(tmp_path):
    out = tmp_path / "cpu.yaml"
    assert pipeline.main(["--compile", "--output", str(out), "--images-file", str(tmp_path / "none.json"),
                          "--image", "registry.example/campseg:1", "--accelerator-count", "0"]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    executors = docs[0]["deploymentSpec"]["executors"]
    assert all("accelerator" not in e["container"].get("resources", {}) for e in executors.values())
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/campseg:1"}
    platform = docs[1] if len(docs) > 1 else {}
    for name in executors:
        config = executor_config(platform, name.removeprefix("exec-")) if platform else {}
        assert "nodeSelector" not in config and "tolerations" not in config, name


def test_compile_uses_the_images_build_images_recorded(tmp_path, capsys):
    from components.kubeflow.images import record_images

    refs = {"cpu": "registry.example/campseg@sha256:" + "a" * 64, "cuda": "registry.example/campseg-cuda@sha256:" + "b" * 64}
    recorded = record_images(refs, tmp_path / "build" / "images.json")
    out = tmp_path / "p.yaml"
    assert pipeline.main(["--compile", "--output", str(out), "--images-file", str(recorded)]) == 0
    executors = list(yaml.safe_load_all(out.read_text()))[0]["deploymentSpec"]["executors"]
    assert executors.pop("exec-train-model")["container"]["image"] == refs["cuda"]
    assert {e["container"]["image"] for e in executors.values()} == {refs["cpu"]}
    assert str(recorded) in capsys.readouterr().out


def test_credentials_only_by_secret_name(compiled):
    path, docs = compiled

    text = path.read_text()
    assert not [value for value in docs["planted"].values() if value in text]
    for name in ("dataset-fingerprint", "train-model", "generate-stac-item"):
        secret = executor_config(docs["platform"], name)["secretAsEnv"][0]
        assert secret["secretName"] == "campseg-s3-credentials"
        assert {k["envVar"] for k in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for executor in docs["spec"]["deploymentSpec"]["executors"].values():
        assert not [e for e in executor["container"].get("env", []) if "SECRET" in e.get("name", "")]


def test_parameters_have_descriptions_and_required_dataset(compiled):
    _, docs = compiled
    params = docs["spec"]["root"]["inputDefinitions"]["parameters"]
    assert {"dataset_uri", "train_epochs", "train_batch_size", "train_learning_rate", "train_loss", "train_optimizer",
            "train_lr_schedule", "train_augment", "split_train_ratio", "split_seed", "model_threshold", "model_name"} <= set(params)
    assert all(p.get("description") for p in params.values())
    assert "defaultValue" not in params["dataset_uri"]


def test_parameter_defaults_are_the_library_defaults(compiled):
    """Split and training defaults come from SplitRatios and TrainConfig; the cluster's budget is its own."""
    _, docs = compiled
    defaults = {name: p.get("defaultValue") for name, p in docs["spec"]["root"]["inputDefinitions"]["parameters"].items()}
    ratios, config = SplitRatios(), TrainConfig()
    assert (defaults["split_train_ratio"], defaults["split_val_ratio"], defaults["split_test_ratio"]) == (
        ratios.train, ratios.val, ratios.test) == (0.7, 0.15, 0.15)
    assert defaults["split_seed"] == config.seed == 42
    for name in ("architecture", "base_channels", "depth", "loss", "optimizer", "learning_rate", "weight_decay",
                 "lr_schedule", "augment", "warmup_epochs", "crop_scale", "color_jitter", "dice_weight", "ema_decay",
                 "precision"):
        assert defaults[f"train_{name}"] == getattr(config, name), name
    assert defaults["model_threshold"] == Preprocessing.threshold == 0.5
    assert (defaults["train_epochs"], defaults["train_batch_size"], defaults["train_patience"]) == (50, 0, 10)


def test_evaluation_tta_is_a_parameter_the_evaluate_step_takes(compiled):
    """``evaluate_tta`` (default off) reaches the evaluate-model task, so a run's choice is honoured
    and a cached evaluation of the other choice is never reused."""
    _, docs = compiled
    spec = docs["spec"]
    param = spec["root"]["inputDefinitions"]["parameters"]["evaluate_tta"]
    assert param["parameterType"] == "BOOLEAN" and param["defaultValue"] is False and param["description"]
    task = dag_tasks(spec)["evaluate-model"]
    assert task["inputs"]["parameters"]["tta"]["componentInputParameter"] == "pipelinechannel--evaluate_tta"
    component = spec["components"][task["componentRef"]["name"]]
    assert component["inputDefinitions"]["parameters"]["tta"]["parameterType"] == "BOOLEAN"


def test_caching_never_serves_stale_data(compiled):
    _, docs = compiled
    dag = dag_tasks(docs["spec"])
    for name in ("dataset-fingerprint", "decide-training", "start-tracking", "register-model", "end-tracking"):
        assert dag[name]["cachingOptions"].get("enableCache", False) is False, name
    # the statistics step is keyed on the content fingerprint computed at run time
    # (inside the training condition, through the group's input of the fingerprint step's output)
    fingerprint_input = dag["dataset-statistics"]["inputs"]["parameters"]["fingerprint"]
    assert fingerprint_input["componentInputParameter"] == "pipelinechannel--dataset-fingerprint-Output"
    # training takes the run's MLflow run id (new every run), so it and everything after it never
    # hit the cache: only the statistics do (README "Caching")
    run_id_input = dag["train-model"]["inputs"]["parameters"]["mlflow_run_id"]
    assert run_id_input["componentInputParameter"] == "pipelinechannel--start-tracking-Output"
    for name in STAGE_TASKS:
        assert dag[name]["cachingOptions"]["enableCache"] is True


def test_no_kfp_retries_by_default_transient_retries_in_process(compiled):
    """KFP's retry policy reruns a pod on any failure, deterministic ones included: off unless
    --pod-retries; the steps that talk to storage or MLflow retry transient failures themselves."""
    _, docs = compiled
    dag = dag_tasks(docs["spec"])
    retrying = {name for name, step in pipeline.STEPS.items() if step.retry}
    assert retrying == {"start-tracking", "dataset-fingerprint", "decide-training", "dataset-statistics",
                        "train-model", "export-model", "evaluate-model", "register-model"}
    assert not [name for name, task in dag.items() if "retryPolicy" in task]
    for name in pipeline.STEPS:
        assert env_of(docs["spec"], name)[RETRIES_ENV] == ("3" if name in retrying else "0"), name
        assert float(env_of(docs["spec"], name)[BACKOFF_ENV]) == 10.0


def test_pod_retries_only_when_asked(tmp_path):
    spec, _ = compile_with(tmp_path, "--pod-retries", "2", "--retry-backoff", "1m", "--retries", "5")
    dag = dag_tasks(spec)
    for name, step in pipeline.STEPS.items():
        if step.retry:
            assert dag[name]["retryPolicy"]["maxRetryCount"] == 2, name
            assert dag[name]["retryPolicy"]["backoffDuration"] == "60s"
            assert env_of(spec, name)[RETRIES_ENV] == "5"
            assert env_of(spec, name)[BACKOFF_ENV] == "60.0"
        else:
            assert "retryPolicy" not in dag[name], name


# --------------------------------------------------------------------------------------------
# Placement: the GPU node pool and the GPU
# --------------------------------------------------------------------------------------------
def test_only_training_is_on_the_gpu_pool_and_holds_a_gpu(compiled):
    _, docs = compiled
    on_pool = {n for n, step in pipeline.STEPS.items() if step.pool == "gpu"}
    with_gpu = {n for n, step in pipeline.STEPS.items() if step.gpu}
    assert on_pool == with_gpu == {"train-model"}
    for name in pipeline.STEPS:
        config = executor_config(docs["platform"], name)
        resources = container_of(docs["spec"], name).get("resources", {})
        assert ("accelerator" in resources) == (name in with_gpu), name
        assert ("nodeSelector" in config) == ("tolerations" in config) == (name in on_pool), name


def test_only_gpu_pool_places_every_step_there_but_only_training_requests_a_gpu(tmp_path):
    """A cluster whose only node pool is a (tainted) GPU pool: every step tolerates the taint; the
    CPU-bound steps hold no GPU and cannot see the node's GPUs."""
    spec, platform = compile_with(tmp_path, "--only-gpu-pool", "--gpu-node-selector", "pool=gpu",
                                  "--gpu-toleration", "nvidia.com/gpu:Exists:NoSchedule")
    for name in pipeline.STEPS:
        config = executor_config(platform, name)
        assert config["nodeSelector"]["labels"] == {"pool": "gpu"}, name
        assert config["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        accelerator = container_of(spec, name).get("resources", {}).get("accelerator")
        if name == "train-model":
            assert accelerator["resourceType"] == "nvidia.com/gpu" and str(accelerator["resourceCount"]) == "1"
            assert "NVIDIA_VISIBLE_DEVICES" not in env_of(spec, name)
        else:
            assert accelerator is None, name
            assert env_of(spec, name)["NVIDIA_VISIBLE_DEVICES"] == "void", name


@pytest.mark.parametrize("flags, needle", [
    (["--only-gpu-pool", "--accelerator-count", "0"], "--only-gpu-pool with --accelerator-count 0"),
    (["--only-gpu-pool", "--gpu-node-selector", "", "--gpu-toleration", ""], "--only-gpu-pool needs"),
    (["--scratch-size", "lots"], "--scratch-size 'lots': expected a Kubernetes quantity"),
    (["--retry-backoff", "soon"], "--retry-backoff 'soon'"),
    (["--retries", "-1"], "--retries -1: must be >= 0"),
])
def test_compile_refuses_bad_cluster_flags(tmp_path, capsys, flags, needle):
    out = tmp_path / "p.yaml"
    code = pipeline.main(["--compile", "--output", str(out), *IMAGES, *flags])
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert code == 2 and needle in line, line
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Secrets and ConfigMaps: referenced only when configured
# --------------------------------------------------------------------------------------------
def test_secrets_and_config_map_by_default(compiled):
    _, docs = compiled
    for name in pipeline.STEPS:
        config = executor_config(docs["platform"], name)
        assert {(e["secretName"], e["optional"]) for e in config["secretAsEnv"]} == {
            ("campseg-s3-credentials", False), ("campseg-mlflow-credentials", True)}, name
        assert [(e["configMapName"], e["optional"]) for e in config["configMapAsEnv"]] == [
            ("campseg-endpoints", True)], name


@pytest.mark.parametrize("flag, field, kept", [
    ("--storage-secret", "secretAsEnv", {"campseg-mlflow-credentials"}),
    ("--mlflow-secret", "secretAsEnv", {"campseg-s3-credentials"}),
    ("--config-map", "configMapAsEnv", set()),
])
def test_an_empty_name_references_nothing(tmp_path, flag, field, kept):
    spec, platform = compile_with(tmp_path, flag, "")
    for name in pipeline.STEPS:
        config = executor_config(platform, name)
        names = {e.get("secretName") or e.get("configMapName") for e in config.get(field, [])}
        assert names == kept, (name, names)


def test_other_names_are_referenced_as_given(tmp_path):
    _, platform = compile_with(tmp_path, "--storage-secret", "team-s3", "--mlflow-secret", "team-mlflow",
                               "--config-map", "team-endpoints")
    config = executor_config(platform, "register-model")
    assert {e["secretName"] for e in config["secretAsEnv"]} == {"team-s3", "team-mlflow"}
    assert [e["configMapName"] for e in config["configMapAsEnv"]] == ["team-endpoints"]


# --------------------------------------------------------------------------------------------
# The scratch volume of the data steps
# --------------------------------------------------------------------------------------------
SCRATCH_STEPS = {"dataset-statistics", "train-model", "export-model", "evaluate-model", "register-model"}


def test_data_steps_get_a_generic_ephemeral_scratch_volume_with_tmpdir_on_it(compiled):
    _, docs = compiled
    assert {n for n, step in pipeline.STEPS.items() if step.scratch} == SCRATCH_STEPS
    for name in pipeline.STEPS:
        config = executor_config(docs["platform"], name)
        env = env_of(docs["spec"], name)
        if name in SCRATCH_STEPS:
            assert config["genericEphemeralVolume"] == [{
                "volumeName": "campseg-scratch", "mountPath": "/scratch", "accessModes": ["ReadWriteOnce"],
                "size": "20Gi", "defaultStorageClass": True}], name
            assert env["TMPDIR"] == "/scratch"
        else:
            assert "genericEphemeralVolume" not in config and "TMPDIR" not in env, name


def test_scratch_size_storage_class_and_empty_dir(tmp_path):
    _, platform = compile_with(tmp_path, "--scratch-size", "100Gi", "--scratch-storage-class", "fast-ssd")
    (volume,) = executor_config(platform, "evaluate-model")["genericEphemeralVolume"]
    assert (volume["size"], volume["storageClassName"], volume.get("defaultStorageClass", False)) == (
        "100Gi", "fast-ssd", False)
    _, platform = compile_with(tmp_path, "--scratch-volume", "empty-dir", "--scratch-size", "8Gi")
    config = executor_config(platform, "evaluate-model")
    assert "genericEphemeralVolume" not in config
    assert config["emptyDirMounts"] == [{"volumeName": "campseg-scratch", "mountPath": "/scratch", "sizeLimit": "8Gi"}]


def test_no_scratch_volume_when_its_size_is_empty(tmp_path):
    spec, platform = compile_with(tmp_path, "--scratch-size", "")
    for name in SCRATCH_STEPS:
        config = executor_config(platform, name)
        assert "genericEphemeralVolume" not in config and "emptyDirMounts" not in config
        assert "TMPDIR" not in env_of(spec, name)
