"""Multi-node training jobs: manifests valid against the vendored CRD schemas, status read right,
torchrun given the engine's rendezvous, and the launcher driven through the real ``kubernetes``
client against a stub API that plays the job's lifecycle (tests/support/kube_api_stub.py)."""

from __future__ import annotations

import copy
import re

import pytest

from components.contracts.errors import ParameterError, TransientError
from components.kubeflow.cluster import ClusterSettings, Resources, train_job_settings
from components.kubeflow.job_launcher import JobLauncher, TrainJobFailed, run_job
from components.kubeflow.train_jobs import (
    JobSettings,
    JobState,
    job_manifest,
    job_name,
    job_state,
    node_command,
    torchrun_command,
    train_flags,
)
from tests.support import crd_schemas
from tests.support.kube_api_stub import PYTORCHJOB_SUCCEEDS, TRAINJOB_SUCCEEDS, KubeApiStub, condition, failing

RUN_ID = "0f6c2a7e-3b1d-4c55-9a8e-123456789abc"
CONFIG = dict(architecture="unet", base_channels=16, depth=4, loss="bce_dice", optimizer="adamw",
              learning_rate=0.001, weight_decay=0.0001, lr_schedule="cosine", augment=False, epochs=3,
              batch_size=8, patience=2, seed=7, precision="bf16-mixed")


def settings(kind="trainjob", **changes) -> JobSettings:
    s = ClusterSettings(image="r/cpu:1", gpu_image="r/cuda:1", train_nodes=2, train_gpus_per_node=4,
                        train_job_kind=kind, train_job_prefix="s3://jobs/train/", **changes)
    return train_job_settings(s.check(), Resources("4", "8", "16Gi", "32Gi"))


def manifest(kind="trainjob", **changes) -> dict:
    s = settings(kind, **changes)
    command = node_command("s3://jobs/train/x/statistics", "s3://data/set/", "s3://jobs/train/x/run", s,
                           train_flags(CONFIG, s.nodes, s.gpus_per_node))
    return job_manifest(job_name(RUN_ID), "team-a", RUN_ID, command, s)


# ------------------------------------------------------------------------------------------
# Manifests against the CRD schemas
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
@pytest.mark.parametrize("variant", [{}, {"storage_secret": "", "config_map": "", "mlflow_secret": "",
                                          "scratch_size": "", "gpu_node_selector": None, "gpu_toleration": None}],
                         ids=["defaults", "nothing-optional"])
def test_manifests_validate_against_the_crd_schema(kind, variant):
    m = manifest(kind, **variant)
    assert crd_schemas.errors(kind, m) == []
    # The CEL rules of the TrainJob CRD on the name (checked by the API server, not by jsonschema).
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", m["metadata"]["name"]) and len(m["metadata"]["name"]) <= 63


def test_the_schema_check_catches_broken_manifests():
    good = manifest("trainjob")
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["trainer"]["numNodes"] = "2"
    misspelt = copy.deepcopy(good)
    misspelt["spec"]["trainer"]["resourcesPerNodes"] = misspelt["spec"]["trainer"].pop("resourcesPerNode")
    no_runtime = copy.deepcopy(good)
    del no_runtime["spec"]["runtimeRef"]
    assert any("numNodes" in e and "is not of type 'integer'" in e for e in crd_schemas.errors("trainjob", wrong_type))
    assert any("resourcesPerNodes" in e for e in crd_schemas.errors("trainjob", misspelt))
    assert any("'runtimeRef' is a required property" in e for e in crd_schemas.errors("trainjob", no_runtime))
    pytorch = manifest("pytorchjob")
    pytorch["spec"]["nprocPerNode"] = 4  # a string in the CRD
    assert any("nprocPerNode" in e for e in crd_schemas.errors("pytorchjob", pytorch))


def test_trainjob_runs_the_training_entrypoint_on_n_nodes_of_m_gpus():
    m = manifest("trainjob")
    trainer = m["spec"]["trainer"]
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    assert m["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                       "name": "torch-distributed"}
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4 and trainer["image"] == "r/cuda:1"
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    command = trainer["command"]
    assert command[:3] == ["python", "-m", "components.kubeflow.train_node"]
    flags = command[command.index("--") + 1:]
    assert flags[-4:] == ["--devices", "4", "--num-nodes", "2"] and "--no-augment" in flags
    env = {e["name"]: e for e in trainer["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "campseg-s3-credentials", "key": "AWS_SECRET_ACCESS_KEY", "optional": False}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]["optional"] is True
    assert env["TMPDIR"]["value"] == "/scratch"
    pod = m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod["name"] == "node" and pod_spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod_spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod_spec["volumes"][0]["emptyDir"]["sizeLimit"] == "20Gi"
    assert m["metadata"]["labels"]["campseg.io/kfp-run-id"] == RUN_ID


def test_pytorchjob_has_a_master_and_n_minus_one_workers():
    m = manifest("pytorchjob")
    replicas = m["spec"]["pytorchReplicaSpecs"]
    assert m["apiVersion"] == "kubeflow.org/v1" and m["spec"]["nprocPerNode"] == "4"
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert m["spec"]["runPolicy"]["cleanPodPolicy"] == "None"  # pods stay for their logs


def test_train_flags_parse_with_the_train_command():
    from components.cli.stages import build_parser

    flags = train_flags(CONFIG, 2, 4)
    parser = build_parser()
    known = {a for action in parser._subparsers._group_actions[0].choices["train"]._actions
             for a in action.option_strings}
    if "--devices" not in known:  # added by the multi-GPU work: parse what this checkout knows
        flags = flags[:-4]
    args = parser.parse_args(["train", "--run", "r", "--data", "d", *flags])
    assert (args.epochs, args.batch_size, args.seed, args.augment, args.precision) == (3, 8, 7, False, "bf16-mixed")
    assert args.learning_rate == 0.001 and args.lr_schedule == "cosine"


def test_torchrun_takes_the_rendezvous_of_either_engine():
    trainer_env = {"PET_NODE_RANK": "1", "PET_MASTER_ADDR": "job-node-0-0.job", "PET_MASTER_PORT": "29400"}
    operator_env = {"RANK": "1", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456"}
    for env, addr, port in ((trainer_env, "job-node-0-0.job", "29400"), (operator_env, "job-master-0", "23456")):
        cmd = torchrun_command(env, 2, 4, ["--run", "/r"])
        assert cmd[:6] == ["torchrun", "--nnodes=2", "--nproc-per-node=4", "--node-rank=1",
                           f"--master-addr={addr}", f"--master-port={port}"]
        assert cmd[6:] == ["-m", "--", "components", "train", "--run", "/r"]


def test_job_name_is_a_dns_label_after_the_run():
    assert job_name(RUN_ID).startswith("campseg-train-0f6c2a7e")
    assert len(job_name("X" * 200)) <= 48 and job_name("__") == "campseg-train-run"


# ------------------------------------------------------------------------------------------
# Status and settings
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, status, phase", [
    ("trainjob", {}, "pending"),
    ("trainjob", {"conditions": [condition("Suspended", "Suspended", "queued by Kueue")]}, "pending"),
    ("trainjob", {"jobsStatus": [{"name": "node", "active": 2}]}, "running"),
    ("trainjob", {"conditions": [condition("Complete")]}, "succeeded"),
    ("trainjob", {"conditions": [condition("Complete"), condition("Failed", "DeadlineExceeded")]}, "failed"),
    ("pytorchjob", {"conditions": [condition("Created")]}, "pending"),
    ("pytorchjob", {"conditions": [condition("Created"), condition("Running")]}, "running"),
    ("pytorchjob", {"conditions": [condition("Succeeded")]}, "succeeded"),
    ("pytorchjob", {"conditions": [{**condition("Failed"), "status": "False"}, condition("Running")]}, "running"),
])
def test_job_state_reads_the_conditions(kind, status, phase):
    assert job_state(kind, {"status": status}).phase == phase


def test_failed_state_carries_reason_and_message():
    state = job_state("pytorchjob", {"status": {"conditions": [condition("Failed", "OOMKilled", "node 1: OOM")]}})
    assert state == JobState("failed", "OOMKilled", "node 1: OOM") and state.done


@pytest.mark.parametrize("changes, flag", [
    ({"train_job_prefix": ""}, "--train-job-prefix"),
    ({"train_job_prefix": "/local/path"}, "--train-job-prefix"),
    ({"train_job_kind": "mpijob"}, "--train-job-kind"),
    ({"accelerator_count": 0}, "--accelerator-count 0"),
    ({"train_job_timeout": "soon"}, "--train-job-timeout"),
    ({"train_nodes": 1, "train_gpus_per_node": 2}, "--train-gpus-per-node"),
    ({"train_nodes": 0}, "--train-nodes"),
])
def test_bad_multi_node_settings_are_refused_naming_the_flag(changes, flag):
    base = dict(image="r/cpu:1", gpu_image="r/cuda:1", train_nodes=2, train_job_prefix="s3://jobs/")
    with pytest.raises(ParameterError, match=re.escape(flag)):
        ClusterSettings(**{**base, **changes}).check()


def test_settings_round_trip_as_json_and_default_to_the_accelerator_count():
    s = train_job_settings(ClusterSettings(image="a", gpu_image="b", accelerator_count=8, train_nodes=3,
                                           train_job_prefix="s3://j/"), Resources("1", "2", "1Gi", "2Gi"))
    assert s.gpus_per_node == 8 and s.nodes == 3
    assert JobSettings.from_json(s.to_json()) == s


# ------------------------------------------------------------------------------------------
# The launcher through the real kubernetes client, against the stub API
# ------------------------------------------------------------------------------------------
def _launch(stub: KubeApiStub, m: dict, kind: str, timeout_s: float = 10.0):
    launcher = JobLauncher(stub.api_client(), "team-a", kind)
    lines: list[str] = []
    return launcher, run_job(launcher, m, timeout_s, 0.01, log=lines.append), lines


@pytest.mark.parametrize("kind, script", [("trainjob", TRAINJOB_SUCCEEDS), ("pytorchjob", PYTORCHJOB_SUCCEEDS)])
def test_launcher_creates_the_job_and_waits_until_it_succeeds(kind, script):
    m = manifest(kind)
    with KubeApiStub(script) as stub:
        launcher, state, lines = _launch(stub, m, kind)
        assert state.phase == "succeeded"
        method, path, body = stub.requests[0]
        plural = {"trainjob": "trainer.kubeflow.org/v1alpha1", "pytorchjob": "kubeflow.org/v1"}[kind]
        assert method == "POST" and path == f"/apis/{plural}/namespaces/team-a/{kind}s" and body == m
        assert crd_schemas.errors(kind, body) == []  # what the API server received
        assert [r[0] for r in stub.requests].count("GET") == len(script)
        assert lines[0].startswith("Created")
        assert [line.split(": ")[1].split(" ")[0] for line in lines[1:]] == ["pending", "running", "succeeded"]
        assert stub.objects  # a finished job is left (it holds no resources once finished)


def test_a_rerun_attaches_to_the_job_of_its_kfp_run():
    m = manifest("trainjob")
    with KubeApiStub(TRAINJOB_SUCCEEDS) as stub:
        _launch(stub, m, "trainjob")
        _, state, lines = _launch(stub, m, "trainjob")
        assert state.phase == "succeeded" and lines[0].startswith("Attached to the existing TrainJob")
        assert [r[0] for r in stub.requests].count("POST") == 2 and len(stub.objects) == 1


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_a_failed_job_fails_the_launch_naming_job_namespace_and_reason(kind):
    m = manifest(kind)
    with KubeApiStub(failing(kind, "BackoffLimitExceeded", "node-1 exited with code 137 (OOMKilled)")) as stub:
        with pytest.raises(TrainJobFailed) as caught:
            _launch(stub, m, kind)
        text = str(caught.value)
        assert m["metadata"]["name"] in text and "namespace team-a" in text
        assert "BackoffLimitExceeded" in text and "OOMKilled" in text and "left for inspection" in text
        assert "DELETE" not in [r[0] for r in stub.requests] and stub.objects  # left for inspection


def test_a_job_that_outlasts_the_timeout_is_deleted():
    m = manifest("trainjob")
    with KubeApiStub([{}, {"jobsStatus": [{"name": "node", "active": 2}]}]) as stub:  # runs forever
        with pytest.raises(TrainJobFailed, match=r"did not finish within 0.2s .*running.*deleted"):
            _launch(stub, m, "trainjob", timeout_s=0.2)
        assert stub.requests[-1][0] == "DELETE" and not stub.objects


def test_api_refusals_are_named_and_an_unreachable_api_is_transient():
    m = manifest("trainjob")
    with KubeApiStub(TRAINJOB_SUCCEEDS) as stub:
        launcher = JobLauncher(stub.api_client(), "team-a", "trainjob")
        with pytest.raises(TrainJobFailed, match=r"404 Not Found.*CRD installed"):
            launcher.state("no-such-job")
        host = stub.host
    from kubernetes import client

    gone = JobLauncher(client.ApiClient(client.Configuration(host=host)), "team-a", "trainjob")
    gone.api.api_client.configuration.retries = 0
    with pytest.raises(TransientError, match="did not answer"):
        gone.state(m["metadata"]["name"])


def test_outside_a_pod_the_launcher_says_it_needs_a_cluster(monkeypatch):
    from components.kubeflow.job_launcher import in_cluster

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(TrainJobFailed, match="runs only on a cluster"):
        in_cluster()
