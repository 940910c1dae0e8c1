"""The compiled pipeline parses with the protos of the minimum KFP backend (``cluster.MIN_BACKEND``).

KFP 2.15's Argo compiler parses each step's Kubernetes config with ``protojson.Unmarshal``, which
rejects a field it does not know; earlier backends drop some silently (``optional`` on Secret and
ConfigMap env before 2.15, so a missing optional Secret stopped every pod). Parsing strictly with
the protos of that release (``tests/support/backend_protos.py``, from the pinned wheels) catches
a field the installed, newer kfp-kubernetes emits but the cluster would drop or reject.
"""

from __future__ import annotations

import os

import pytest
import yaml
from google.protobuf import json_format

import pipeline
from components.kubeflow.cluster import MIN_BACKEND
from tests.support.backend_protos import WheelMissing, message_class

IMAGES = ["--image", "registry.example/campseg:1", "--gpu-image", "registry.example/campseg-cuda:1"]
#: Compile flags whose every combination of emitted fields the backend must take.
VARIANTS = {
    "defaults": [],
    "only-gpu-pool, empty-dir scratch": ["--only-gpu-pool", "--scratch-volume", "empty-dir"],
    "storage class, pod retries": ["--scratch-storage-class", "fast-ssd", "--pod-retries", "2"],
    "no secrets, no config map, no scratch": ["--storage-secret", "", "--mlflow-secret", "", "--config-map", "",
                                              "--scratch-size", ""],
    "cpu-only cluster": ["--accelerator-count", "0"],
    "multi-node training job": ["--train-nodes", "2", "--train-gpus-per-node", "4",
                                "--train-job-prefix", "s3://campseg-jobs/train/"],
}


def _messages(version: str):
    try:
        return (message_class(version, "kfp_kubernetes.KubernetesExecutorConfig"),
                message_class(version, "ml_pipelines.PipelineSpec"))
    except WheelMissing as exc:
        if os.environ.get("CAMPSEG_REQUIRE_BACKEND_PROTOS") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def minimum():
    return _messages(MIN_BACKEND)


def compile_with(tmp_path, flags) -> tuple[dict, dict]:
    out = tmp_path / "pipeline.yaml"
    assert pipeline.main(["--compile", "--output", str(out), "--images-file", str(tmp_path / "none.json"),
                          *IMAGES, *flags]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def executor_configs(platform: dict) -> dict:
    return platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})


def test_minimum_backend_is_2_15():
    assert MIN_BACKEND == "2.15.0"


@pytest.mark.parametrize("flags", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_executor_config_parses_strictly_with_the_minimum_backend(tmp_path, minimum, flags):
    executor_config, pipeline_spec = minimum
    spec, platform = compile_with(tmp_path, flags)
    configs = executor_configs(platform)
    assert configs and set(configs) <= set(spec["deploymentSpec"]["executors"])
    for name, config in configs.items():
        try:
            json_format.ParseDict(config, executor_config(), ignore_unknown_fields=False)
        except json_format.ParseError as exc:
            pytest.fail(f"{name}: KFP backend {MIN_BACKEND} would reject or drop: {exc}")
    json_format.ParseDict(spec, pipeline_spec(), ignore_unknown_fields=False)


def test_the_check_fails_on_a_field_the_minimum_backend_lacks(tmp_path, minimum):
    """The installed kfp-kubernetes can emit ``securityContext`` (added after 2.15): the check rejects it."""
    from kfp import compiler, dsl, kubernetes

    if not hasattr(kubernetes, "set_security_context"):
        pytest.skip("the installed kfp-kubernetes has no set_security_context")

    @dsl.component(base_image="registry.example/campseg:1")
    def hello():
        pass

    @dsl.pipeline(name="newer-field")
    def newer():
        kubernetes.set_security_context(hello(), run_as_user=1000)

    out = tmp_path / "newer.yaml"
    compiler.Compiler().compile(newer, str(out))
    (config,) = executor_configs(list(yaml.safe_load_all(out.read_text()))[1]).values()
    with pytest.raises(json_format.ParseError, match="securityContext"):
        json_format.ParseDict(config, minimum[0](), ignore_unknown_fields=False)


def test_the_backend_before_the_minimum_would_drop_optional_secrets(tmp_path):
    """Why 2.15 is the minimum: 2.14's protos have no ``optional`` on Secret or ConfigMap env."""
    older, _ = _messages("2.14.6")
    _, platform = compile_with(tmp_path, [])
    config = executor_configs(platform)["exec-train-model"]
    assert {e["secretName"]: e["optional"] for e in config["secretAsEnv"]} == {
        "campseg-s3-credentials": False, "campseg-mlflow-credentials": True}
    with pytest.raises(json_format.ParseError, match="optional"):
        json_format.ParseDict(config, older(), ignore_unknown_fields=False)
