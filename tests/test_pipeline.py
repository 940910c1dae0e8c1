"""The KFP pipeline: the compiled YAML's contract, and end-to-end local runs of YAML and code."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import yaml

import pipeline
from components.sample_data import generate_sample_dataset

STAGE_TASKS = {"dataset-statistics", "train-model", "export-model", "evaluate-model", "package-dlpk", "generate-stac-item"}
SMALL_RUN = dict(dataset_image_size=0, train_epochs=2, train_base_channels=8, train_depth=3, train_batch_size=8)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, monkeypatch_module) -> tuple[Path, dict]:
    # a credential in the environment must not leak into the YAML
    monkeypatch_module.setenv("AWS_SECRET_ACCESS_KEY", "leak-" + secrets.token_hex(12))
    monkeypatch_module.setenv("AWS_ACCESS_KEY_ID", "leakid-" + secrets.token_hex(6))
    path = tmp_path_factory.mktemp("yaml") / "pipeline.yaml"
    assert pipeline.main(["--compile", "--output", str(path), "--image", "registry.example/campseg:1.2.3",
                          "--gpu-node-selector", "pool=gpu", "--gpu-toleration", "nvidia.com/gpu:Exists:NoSchedule",
                          "--resources", "train-model=3,6,12Gi,24Gi"]) == 0
    docs = list(yaml.safe_load_all(path.read_text()))
    return path, {"spec": docs[0], "platform": docs[1] if len(docs) > 1 else {}}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def executor_config(platform: dict, task: str) -> dict:
    deployment = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return deployment[f"exec-{task}"]


def dag_tasks(spec: dict) -> dict:
    """Every task of the pipeline, inside the exit handler's group or not."""
    found = {}
    for name, task in tasks(spec).items():
        found[name] = task
    for component in spec["components"].values():
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


def test_six_stage_tasks_plus_fingerprint_and_tracking(compiled):
    _, docs = compiled
    assert set(dag_tasks(docs["spec"])) - {"exit-handler-1", "close-mlflow-run-on-exit"} == STAGE_TASKS | {
        "dataset-fingerprint", "start-tracking", "register-model", "end-tracking"}
    assert tasks(docs["spec"])["end-tracking"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


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


def test_image_is_the_compile_flag(compiled):
    _, docs = compiled
    images = {e["container"]["image"] for e in docs["spec"]["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/campseg:1.2.3"}


def test_credentials_only_by_secret_name(compiled):
    path, docs = compiled
    import os

    text = path.read_text()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text and os.environ["AWS_ACCESS_KEY_ID"] not in text
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


def test_caching_never_serves_stale_data(compiled):
    _, docs = compiled
    dag = dag_tasks(docs["spec"])
    for name in ("dataset-fingerprint", "start-tracking", "register-model", "end-tracking"):
        assert dag[name]["cachingOptions"].get("enableCache", False) is False, name
    # the statistics step is keyed on the content fingerprint computed at run time
    fingerprint_input = dag["dataset-statistics"]["inputs"]["parameters"]["fingerprint"]
    assert fingerprint_input["taskOutputParameter"]["producerTask"] == "dataset-fingerprint"
    for name in STAGE_TASKS:
        assert dag[name]["cachingOptions"]["enableCache"] is True


def test_storage_steps_retry_with_backoff(compiled):
    _, docs = compiled
    dag = dag_tasks(docs["spec"])
    for name in pipeline.STORAGE_STAGES:
        policy = dag[name]["retryPolicy"]
        assert policy["maxRetryCount"] == 3 and policy["backoffFactor"] == 2.0


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return generate_sample_dataset(tmp_path_factory.mktemp("kfp") / "data", n_chips=24, size=64, seed=5)


@pytest.fixture(scope="module")
def yaml_run(compiled, small_dataset, tmp_path_factory) -> Path:
    from kfp import components

    path, _ = compiled
    loaded = components.load_component_from_file(str(path))
    out = tmp_path_factory.mktemp("yaml_run") / "run"
    pipeline.run_local({"dataset_uri": str(small_dataset), **SMALL_RUN}, out, pipeline_func=loaded)
    return out


def test_yaml_pipeline_runs_locally_end_to_end(yaml_run):
    summary = json.loads((yaml_run / "summary.json").read_text())
    for key in ("onnx", "torchscript", "state_dict", "checkpoint", "dlpk", "stac_item", "metrics", "stats"):
        assert (yaml_run / summary[key]).is_file(), key
    metrics = json.loads((yaml_run / "evaluation" / "metrics.json").read_text())
    assert all(0 <= metrics[k] <= 1 for k in ("iou", "f1", "precision", "recall", "accuracy"))
    cm = metrics["confusion_matrix"]
    assert sum(cm.values()) == metrics["num_pixels"] > 0
    item = json.loads((yaml_run / "metadata" / "stac_item.json").read_text())
    for asset in item["assets"].values():  # hrefs resolve inside the gathered run folder
        assert (yaml_run / "metadata" / asset["href"]).resolve().is_file(), asset["href"]


def test_yaml_run_and_code_run_agree(yaml_run, small_dataset, tmp_path):
    out = tmp_path / "run"
    summary = pipeline.run_local({"dataset_uri": str(small_dataset), **SMALL_RUN}, out)
    expected = json.loads((yaml_run / "summary.json").read_text())
    assert summary["test_metrics"] == pytest.approx(expected["test_metrics"], abs=1e-6)
    assert json.loads((out / "stats.json").read_text()) == json.loads((yaml_run / "stats.json").read_text())


def test_kfp_ui_outputs(yaml_run):
    root = next((yaml_run / "kfp-local").iterdir())
    report = (root / "evaluate-model" / "report").read_text()
    assert "data:image/png;base64," in report and "Confusion matrix" in report
    outputs = json.loads((root / "evaluate-model" / "executor_output.json").read_text())
    artifacts = outputs["artifacts"]
    confusion = artifacts["confusion_matrix"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in confusion["annotationSpecs"]] == ["background", "camp"]
    assert sum(map(sum, (r["row"] for r in confusion["rows"]))) > 0
    assert set(artifacts["test_metrics"]["artifacts"][0]["metadata"]) >= {"iou", "f1", "precision", "recall", "accuracy"}
