"""``--train-nodes N`` at compile time: the training task launches a TrainJob/PyTorchJob instead of training.

With one node (the default) the training step is unchanged; with N > 1 it runs the launcher
component on the CPU image, holds no GPU, and carries the job's settings, from which the step
builds a manifest that validates against the vendored CRD schema.
"""

from __future__ import annotations

import json

import pytest

import pipeline
from components.kubeflow.train_jobs import JobSettings, job_manifest, node_command, train_flags
from tests.contract.test_compiled_pipeline import IMAGES, compile_with, container_of, dag_tasks, executor_config
from tests.support import crd_schemas

MULTI_NODE = ["--train-nodes", "2", "--train-gpus-per-node", "4", "--train-job-prefix", "s3://campseg-jobs/train/"]


def training_task(spec: dict) -> tuple[str, dict]:
    (name, task), = [(n, t) for n, t in dag_tasks(spec).items() if t.get("taskInfo", {}).get("name") == "train-model"]
    return name, task


def job_of(task: dict) -> JobSettings:
    return JobSettings.from_json(task["inputs"]["parameters"]["job"]["runtimeValue"]["constant"])


def test_one_node_trains_in_the_step_itself(tmp_path):
    spec, platform = compile_with(tmp_path)
    name, task = training_task(spec)
    assert name == "train-model" and task["componentRef"]["name"] == "comp-train-model"
    assert "job" not in task["inputs"]["parameters"]
    assert container_of(spec, name)["resources"]["accelerator"]["resourceCount"] == "1"


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_n_nodes_launch_a_job_from_a_step_that_holds_no_gpu(tmp_path, kind):
    spec, platform = compile_with(tmp_path, *MULTI_NODE, "--train-job-kind", kind, "--train-job-timeout", "6h")
    name, task = training_task(spec)
    assert task["componentRef"]["name"] == "comp-train-model-job"
    container = container_of(spec, name)
    assert container["image"] == "registry.example/campseg:1" and "accelerator" not in container["resources"]
    assert container["resources"]["resourceMemoryLimit"] == pipeline.TRAIN_JOB_STEP.resources.memory_limit
    assert "nodeSelector" not in executor_config(platform, name)
    assert task["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert not task.get("cachingOptions", {}).get("enableCache")  # named after the run: never a cache hit
    job = job_of(task)
    assert (job.kind, job.nodes, job.gpus_per_node, job.image, job.timeout_s) == (
        kind, 2, 4, "registry.example/campseg-cuda:1", 6 * 3600)
    assert (job.cpu, job.memory) == (("4", "8"), ("16Gi", "32Gi"))  # the GPU training row sizes the nodes
    # The rest of the pipeline reads the launcher's training artifact.
    consumers = [t for t in dag_tasks(spec).values()
                 if t.get("inputs", {}).get("artifacts", {}).get("training", {}).get("taskOutputArtifact", {})
                 .get("producerTask") == name]
    assert len(consumers) >= 4
    # What the step will submit validates against the engine's CRD.
    command = node_command("s3://campseg-jobs/train/j/statistics", "s3://data/", "s3://campseg-jobs/train/j/run",
                           job, train_flags({"epochs": 50}, job.nodes, job.gpus_per_node))
    assert crd_schemas.errors(kind, job_manifest("campseg-train-x", "team-a", "run-x", command, job)) == []


def test_resources_of_train_model_size_the_job_nodes(tmp_path):
    spec, _ = compile_with(tmp_path, *MULTI_NODE, "--resources", "train-model=16,32,120Gi,200Gi")
    name, task = training_task(spec)
    assert (job_of(task).cpu, job_of(task).memory) == (("16", "32"), ("120Gi", "200Gi"))
    assert container_of(spec, name)["resources"]["resourceCpuLimit"] == pipeline.TRAIN_JOB_STEP.resources.cpu_limit


def test_the_job_settings_carry_no_credential_values(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak-value-123")
    spec, _ = compile_with(tmp_path, *MULTI_NODE)
    job = json.loads(training_task(spec)[1]["inputs"]["parameters"]["job"]["runtimeValue"]["constant"])
    assert "leak-value-123" not in json.dumps(job) and job["storage_secret"] == "campseg-s3-credentials"


@pytest.mark.parametrize("flags, needle", [
    (["--train-nodes", "2"], "--train-job-prefix ''"),
    (["--train-nodes", "2", "--train-job-prefix", "s3://j/", "--accelerator-count", "0"], "--accelerator-count 0"),
    (["--train-job-prefix", "s3://j/"], "go with --train-nodes N"),
    (["--train-nodes", "2", "--train-job-prefix", "s3://j/", "--train-job-timeout", "forever"],
     "--train-job-timeout 'forever'"),
])
def test_compile_refuses_bad_multi_node_flags(tmp_path, capsys, flags, needle):
    out = tmp_path / "p.yaml"
    code = pipeline.main(["--compile", "--output", str(out), *IMAGES, *flags])
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert code == 2 and needle in line, line
    assert not out.exists()
