"""``python pipeline.py --submit`` against a local server that speaks KFP's v2beta1 REST routes.

No KFP backend can run here; :mod:`tests.kfp_api_server` answers the routes ``kfp.Client`` (kfp 2.17)
calls and records every request, so these tests assert what the client sent: the uploaded YAML is
the compiled pipeline, the pipeline is created once and then gets new versions, the run's and the
recurring run's bodies (parameters, cron, mode, max concurrency, catch-up, version reference), that
a new schedule replaces the one of the same name, the profile namespace of multi-user Kubeflow, the
credentials headers of every route (token, cookie, token file) kept out of the output, and that the
server's errors and an unreachable host reach the user as one clear line (no traceback).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline
from tests.support.cli import error_line
from tests.support.kfp_api_server import API, KfpApiServer
from tests.support.paths import REPO

DATASET = "s3://b/data/"
#: The step images every cluster submission names (no image is guessed).
IMAGES = ["--image", "registry.example/campseg:test", "--gpu-image", "registry.example/campseg-cuda:test"]
IMAGE_SETTINGS = pipeline.ClusterSettings(image="registry.example/campseg:test",
                                          gpu_image="registry.example/campseg-cuda:test")
#: Non-default cluster flags: proves that --submit compiles with the cluster flags it is given.
CLUSTER_FLAGS = [*IMAGES, "--accelerator-count", "2"]
CLUSTER_SETTINGS = pipeline.ClusterSettings(image="registry.example/campseg:test",
                                            gpu_image="registry.example/campseg-cuda:test", accelerator_count=2)

pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")


@pytest.fixture
def kfp_server():
    with KfpApiServer() as server:
        yield server
        assert not server.unknown, f"the client used routes the test server does not know: {server.summary()}"


@pytest.fixture
def clean_env(tmp_path, monkeypatch) -> dict[str, str]:
    """The environment of a user with no KFP settings (no endpoint, no token, fresh HOME)."""
    for name in list(os.environ):
        if name.startswith("KF_PIPELINES"):
            monkeypatch.delenv(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KF_PIPELINES")}
    env["HOME"] = str(tmp_path / "home")  # kfp.Client reads ~/.config/kfp/context.json
    return env


def submit_cli(server_url: str, *args: str, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    """``python pipeline.py --submit --host URL ARGS`` in a fresh process, as a user runs it (with
    ``--images-file`` under the test's HOME, so a ``build/images.json`` of the checkout never counts)."""
    images_file = str(Path(env["HOME"]) / "no-images.json")
    return subprocess.run([sys.executable, "pipeline.py", "--submit", "--host", server_url,
                           "--images-file", images_file, *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def compiled_docs(tmp_path: Path, settings: pipeline.ClusterSettings) -> list:
    """The documents of the YAML that ``--compile`` writes with these settings."""
    path = pipeline.compile_pipeline(tmp_path / "expected.yaml", settings)
    return list(yaml.safe_load_all(path.read_text()))


def uploaded_docs(request) -> list:
    part = request.parts["uploadfile"]
    assert part.filename and part.filename.endswith(".yaml"), part.filename
    return list(yaml.safe_load_all(part.text))


def test_submit_uploads_the_compiled_pipeline_then_new_versions_and_starts_runs(kfp_server, clean_env, tmp_path):
    expected = compiled_docs(tmp_path, CLUSTER_SETTINGS)
    args = ["--dataset-uri", DATASET, "--train-epochs", "7", "--experiment", "exp1", *CLUSTER_FLAGS]

    first = submit_cli(kfp_server.url, *args, "--version-name", "v1", env=clean_env)
    assert first.returncode == 0, first.stderr
    routes = [(r.method, r.path) for r in kfp_server.requests]
    assert routes == [
        ("GET", f"{API}/healthz"),                    # check_access: are the credentials accepted?
        ("GET", f"{API}/healthz"),                    # kfp.Client() itself
        ("GET", f"{API}/pipelines"),                  # find_pipeline: not there yet
        ("POST", f"{API}/pipelines/upload"),          # so the first submission creates the pipeline
        ("POST", f"{API}/pipelines/upload_version"),  # and uploads this submission's version
        ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
    ], kfp_server.summary()
    assert all(r.status == 200 for r in kfp_server.requests), kfp_server.summary()

    lookup = kfp_server.call("GET", f"{API}/pipelines")
    assert json.loads(lookup.q("filter"))["predicates"] == [
        {"operation": 1, "key": "display_name", "stringValue": pipeline.PIPELINE_NAME}]
    upload = kfp_server.call("POST", f"{API}/pipelines/upload")
    assert upload.q("name") == pipeline.PIPELINE_NAME
    assert upload.header("Content-Type").startswith("multipart/form-data")
    assert uploaded_docs(upload) == expected
    (pipeline_id,) = kfp_server.pipelines
    version_upload = kfp_server.call("POST", f"{API}/pipelines/upload_version")
    assert version_upload.q("pipelineid") == pipeline_id and version_upload.q("name") == "v1"
    assert uploaded_docs(version_upload) == expected  # the spec the run uses is the compiled YAML
    version_id = next(v["pipeline_version_id"] for v in kfp_server.versions.values() if v["display_name"] == "v1")

    assert kfp_server.call("POST", f"{API}/experiments").json["display_name"] == "exp1"
    (experiment_id,) = kfp_server.experiments
    run = kfp_server.call("POST", f"{API}/runs").json
    assert run["experiment_id"] == experiment_id
    assert run["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": version_id}
    assert "pipeline_spec" not in run  # the run refers to the uploaded version, it does not inline a spec
    assert run["runtime_config"]["parameters"] == {"dataset_uri": DATASET, "train_epochs": 7}
    assert run["display_name"] == f"{pipeline.PIPELINE_NAME}-v1"
    (run_id,) = kfp_server.runs
    assert f"Created run {run_id}" in first.stdout and "version v1" in first.stdout

    # Second submission: the pipeline is found by name, only a version is uploaded; the experiment is reused.
    kfp_server.reset()
    second = submit_cli(kfp_server.url, *args, "--version-name", "v2", env=clean_env)
    assert second.returncode == 0, second.stderr
    assert not kfp_server.calls("POST", f"{API}/pipelines/upload")
    assert not kfp_server.calls("POST", f"{API}/experiments")
    assert list(kfp_server.pipelines) == [pipeline_id]
    version_upload = kfp_server.call("POST", f"{API}/pipelines/upload_version")
    assert version_upload.q("pipelineid") == pipeline_id and version_upload.q("name") == "v2"
    assert uploaded_docs(version_upload) == expected
    v2_id = next(v["pipeline_version_id"] for v in kfp_server.versions.values() if v["display_name"] == "v2")
    run = kfp_server.call("POST", f"{API}/runs").json
    assert run["experiment_id"] == experiment_id
    assert run["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": v2_id}


def test_schedule_creates_an_enabled_recurring_run_without_catchup(kfp_server, clean_env, tmp_path, capsys):
    code = pipeline.main(["--submit", "--host", kfp_server.url, "--dataset-uri", DATASET, "--train-epochs", "7",
                          "--experiment", "nightly", "--version-name", "v3", "--schedule", "0 0 3 * * *",
                          *IMAGES])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert not kfp_server.calls("POST", f"{API}/runs")  # a schedule, not a one-off run
    body = kfp_server.call("POST", f"{API}/recurringruns").json
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert body["mode"] == "ENABLE"
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    (pipeline_id,) = kfp_server.pipelines
    version = next(v for v in kfp_server.versions.values() if v["display_name"] == "v3")
    assert body["pipeline_version_reference"] == {"pipeline_id": pipeline_id,
                                                  "pipeline_version_id": version["pipeline_version_id"]}
    assert body["runtime_config"]["parameters"] == {"dataset_uri": DATASET, "train_epochs": 7}
    assert body["experiment_id"] == next(iter(kfp_server.experiments))
    assert body["display_name"] == pipeline.PIPELINE_NAME  # a stable name: the next --schedule replaces it
    (recurring_id,) = kfp_server.recurring_runs
    assert kfp_server.recurring_runs[recurring_id]["status"] == "ENABLED"
    assert f"Created recurring run {recurring_id}" in out
    # in-process too, the uploaded spec is the compiled YAML with the images and default cluster settings
    upload = kfp_server.call("POST", f"{API}/pipelines/upload_version")
    assert uploaded_docs(upload) == compiled_docs(tmp_path, IMAGE_SETTINGS)


def test_five_field_cron_is_rejected_before_contacting_the_server(kfp_server, clean_env):
    proc = submit_cli(kfp_server.url, "--dataset-uri", DATASET, "--schedule", "0 3 * * *", env=clean_env)
    error_line(proc, "5 fields", "'0 0 3 * * *'")
    assert kfp_server.requests == []


@pytest.mark.parametrize("method, path, status, message", [
    ("POST", f"{API}/runs", 400, "invalid parameter train_epochs"),
    ("POST", f"{API}/pipelines/upload_version", 500, "Failed to create a pipeline version: internal error"),
])
def test_server_errors_reach_the_user(kfp_server, clean_env, capsys, method, path, status, message):
    kfp_server.fail(method, path, status, {"error": message, "code": 3 if status == 400 else 13, "message": message,
                                           "details": []})
    code = pipeline.main(["--submit", "--host", kfp_server.url, "--dataset-uri", DATASET, "--train-epochs", "7",
                          *IMAGES])
    out, err = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert f"({status} " in line and message in line, line
    assert "Created run" not in out
    assert kfp_server.calls(method, path)[-1].status == status


def test_server_error_from_the_cli_on_a_schedule(kfp_server, clean_env):
    kfp_server.fail("POST", f"{API}/recurringruns", 400,
                    {"error": "bad cron", "code": 3, "message": "invalid cron schedule: expected exactly 6 fields"})
    proc = submit_cli(kfp_server.url, "--dataset-uri", DATASET, "--schedule", "0 0 3 * * *",
                      "--version-name", "v1", *IMAGES, env=clean_env)
    error_line(proc, "400", "invalid cron schedule: expected exactly 6 fields")
    assert kfp_server.calls("POST", f"{API}/recurringruns")[-1].status == 400


def test_unreachable_host_is_a_clear_error(clean_env):
    with KfpApiServer() as gone:
        url = gone.url  # a port that was free a moment ago and is closed now
    proc = submit_cli(url, "--dataset-uri", DATASET, *IMAGES, env=clean_env)
    error_line(proc, "cannot reach the KFP server", url)


def test_credentials_come_from_the_environment_and_stay_secret(kfp_server, clean_env, tmp_path):
    token = "kfp-test-" + secrets.token_urlsafe(24)
    aws_secret = "aws-test-" + secrets.token_urlsafe(24)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    env = {**clean_env, "KF_PIPELINES_SA_TOKEN_PATH": str(token_file), "AWS_SECRET_ACCESS_KEY": aws_secret}
    argv = ["--dataset-uri", DATASET, "--version-name", "v1", *IMAGES]
    proc = submit_cli(kfp_server.url, *argv, env=env)
    assert proc.returncode == 0, proc.stderr
    assert kfp_server.requests
    for request in kfp_server.requests:
        assert request.header("Authorization") == f"Bearer {token}", (request.method, request.path)
        assert aws_secret.encode() not in request.raw_body, (request.method, request.path)  # nor in the YAML or params
    assert token not in " ".join(argv) and token not in proc.stdout and token not in proc.stderr
    assert aws_secret not in proc.stdout and aws_secret not in proc.stderr
    run = kfp_server.call("POST", f"{API}/runs").json
    assert set(run["runtime_config"]["parameters"]) == {"dataset_uri"}


def test_without_a_token_no_authorization_header_is_sent(kfp_server, clean_env, capsys):
    assert pipeline.main(["--submit", "--host", kfp_server.url, "--dataset-uri", DATASET, *IMAGES]) == 0
    assert all(r.header("Authorization") is None for r in kfp_server.requests)


def test_service_account_reaches_the_run(kfp_server, clean_env, capsys):
    code = pipeline.main(["--submit", "--host", kfp_server.url, "--dataset-uri", DATASET,
                          "--service-account", "campseg-pipeline-runner", "--version-name", "sa1", *IMAGES])
    assert code == 0, capsys.readouterr().err
    assert kfp_server.call("POST", f"{API}/runs").json["service_account"] == "campseg-pipeline-runner"


def test_package_is_uploaded_unchanged(kfp_server, clean_env, tmp_path):
    """``--submit --package FILE``: the bytes the server receives are the file the user compiled."""
    package = tmp_path / "pipeline.yaml"
    compile_cli = subprocess.run([sys.executable, "pipeline.py", "--compile", "--output", str(package), *CLUSTER_FLAGS,
                                  "--images-file", str(tmp_path / "none.json")],
                                 cwd=REPO, env=clean_env, capture_output=True, text=True, timeout=120)
    assert compile_cli.returncode == 0, compile_cli.stderr
    package.write_bytes(package.read_bytes() + b"# compiled by the user, kept as it is\n")
    proc = submit_cli(kfp_server.url, "--dataset-uri", DATASET, "--package", str(package), "--version-name", "p1",
                      env=clean_env)
    assert proc.returncode == 0, proc.stderr
    for route in ("upload", "upload_version"):
        assert kfp_server.call("POST", f"{API}/pipelines/{route}").parts["uploadfile"].data == package.read_bytes()
    assert kfp_server.call("POST", f"{API}/runs").json["runtime_config"]["parameters"] == {"dataset_uri": DATASET}


@pytest.mark.parametrize("flags, needle", [
    ([], "no step image: pass --image REF and --gpu-image REF"),
    (["--image", "registry.example/campseg:test"], "requests a GPU for training but no --gpu-image"),
    (["--package", "missing.yaml"], "--package missing.yaml: no such file"),
    (["--package", "pipeline.yaml", *IMAGES], "--package uploads the YAML as compiled"),
])
def test_submit_without_images_is_refused_before_contacting_the_server(kfp_server, clean_env, flags, needle):
    proc = submit_cli(kfp_server.url, "--dataset-uri", DATASET, *flags, env=clean_env)
    assert proc.returncode == 2
    error_line(proc, needle)
    assert kfp_server.requests == []


def test_submit_uses_the_images_build_images_recorded(kfp_server, clean_env, tmp_path, capsys):
    from components.kubeflow.images import record_images

    recorded = record_images({"cpu": IMAGE_SETTINGS.image, "cuda": IMAGE_SETTINGS.gpu_image}, tmp_path / "images.json")
    assert pipeline.main(["--submit", "--host", kfp_server.url, "--dataset-uri", DATASET, "--version-name", "r1",
                          "--images-file", str(recorded)]) == 0, capsys.readouterr().err
    upload = kfp_server.call("POST", f"{API}/pipelines/upload_version")
    assert uploaded_docs(upload) == compiled_docs(tmp_path, IMAGE_SETTINGS)


# ------------------------------------------------------------------ issue 14: schedules replace, namespaces, credentials
def schedule(server: KfpApiServer, version: str, *extra: str) -> int:
    return pipeline.main(["--submit", "--host", server.url, "--dataset-uri", DATASET, "--experiment", "nightly",
                          "--version-name", version, "--schedule", "0 0 3 * * *", *IMAGES, *extra])


def test_schedule_again_replaces_the_recurring_run_of_the_same_name(kfp_server, clean_env, capsys):
    assert schedule(kfp_server, "v1") == 0, capsys.readouterr().err
    (first,) = kfp_server.recurring_runs
    assert schedule(kfp_server, "v2", "--run-name", "other-schedule") == 0  # another name: left alone
    other = next(r for r in kfp_server.recurring_runs.values() if r["display_name"] == "other-schedule")
    capsys.readouterr()
    kfp_server.reset()

    assert schedule(kfp_server, "v3") == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    routes = [(r.method, r.path) for r in kfp_server.requests if "recurringruns" in r.path]
    assert routes == [
        ("GET", f"{API}/recurringruns"),                  # the experiment's recurring runs of that name
        ("POST", f"{API}/recurringruns/{first}:disable"),  # off before the new one exists: never two at once
        ("POST", f"{API}/recurringruns"),
        ("DELETE", f"{API}/recurringruns/{first}"),
    ], kfp_server.summary()
    listing = kfp_server.call("GET", f"{API}/recurringruns")
    assert listing.q("experiment_id") == next(iter(kfp_server.experiments))
    assert json.loads(listing.q("filter"))["predicates"] == [
        {"operation": 1, "key": "display_name", "stringValue": pipeline.PIPELINE_NAME}]
    (enabled,) = kfp_server.enabled_recurring_runs(pipeline.PIPELINE_NAME)
    assert first not in kfp_server.recurring_runs
    v3 = next(v for v in kfp_server.versions.values() if v["display_name"] == "v3")
    assert enabled["pipeline_version_reference"]["pipeline_version_id"] == v3["pipeline_version_id"]
    assert kfp_server.recurring_runs[other["recurring_run_id"]]["status"] == "ENABLED"
    assert f"Replaced (disabled, then deleted) the recurring run(s) called {pipeline.PIPELINE_NAME}: {first}" in out


def test_a_failed_new_schedule_keeps_the_old_one_enabled(kfp_server, clean_env, capsys):
    assert schedule(kfp_server, "v1") == 0, capsys.readouterr().err
    (first,) = kfp_server.recurring_runs
    kfp_server.fail("POST", f"{API}/recurringruns", 400, {"error": "bad", "code": 3, "message": "invalid trigger"})
    assert schedule(kfp_server, "v2") == 1
    assert "invalid trigger" in capsys.readouterr().err
    assert [r["recurring_run_id"] for r in kfp_server.enabled_recurring_runs()] == [first]
    assert kfp_server.calls("POST", f"{API}/recurringruns/{first}:enable")  # disabled, then enabled again


def test_namespace_reaches_the_experiment_the_pipeline_and_the_runs(clean_env, capsys):
    with KfpApiServer(multi_user=True) as server:
        assert pipeline.main(["--submit", "--host", server.url, "--dataset-uri", DATASET, "--namespace", "team-a",
                              "--version-name", "n1", *IMAGES]) == 0, capsys.readouterr().err
        assert schedule(server, "n2", "--namespace", "team-a") == 0, capsys.readouterr().err
        assert not server.unknown, server.summary()
        assert {r.q("namespace") for r in server.calls("GET", f"{API}/pipelines")} == {"team-a"}
        assert server.call("POST", f"{API}/pipelines/upload").q("namespace") == "team-a"
        assert {r.q("namespace") for r in server.calls("GET", f"{API}/experiments")} == {"team-a"}
        assert [r.json["namespace"] for r in server.calls("POST", f"{API}/experiments")] == ["team-a", "team-a"]
        assert {p["namespace"] for p in server.pipelines.values()} == {"team-a"}
        (run,) = server.runs.values()
        (recurring,) = server.recurring_runs.values()
        assert run["namespace"] == recurring["namespace"] == "team-a"  # through their experiment

        # without a namespace, multi-user KFP refuses the experiment: the user reads why
        server.reset()
        capsys.readouterr()
        assert pipeline.main(["--submit", "--host", server.url, "--dataset-uri", DATASET, "--experiment", "x",
                              *IMAGES]) == 1
        err = capsys.readouterr().err
        assert "empty namespace in multi-user mode" in err and "Traceback" not in err


def test_namespace_stays_out_of_kfps_context_file(kfp_server, clean_env, capsys, monkeypatch):
    """kfp.Client(namespace=...) would be the KFP install's namespace; the profile's goes to each call only."""
    assert pipeline.main(["--submit", "--host", kfp_server.url, "--dataset-uri", DATASET, "--namespace", "kubeflow",
                          "--version-name", "k1", *IMAGES]) == 0, capsys.readouterr().err
    assert kfp_server.call("POST", f"{API}/experiments").json["namespace"] == "kubeflow"
    assert not (Path(clean_env["HOME"]) / ".config" / "kfp" / "context.json").exists()


@pytest.mark.parametrize("route", ["env", "flag"])
def test_bearer_token_from_env_or_flag_reaches_every_request(clean_env, route):
    token = "kfp-test-" + secrets.token_urlsafe(24)
    with KfpApiServer(accept=[("Authorization", f"Bearer {token}")]) as server:
        env, flags = dict(clean_env), []
        if route == "env":
            env["CAMPSEG_KFP_TOKEN"] = token
        else:
            env["CAMPSEG_KFP_TOKEN"] = "a-stale-token-the-flag-overrides"
            flags = ["--existing-token", token]
        proc = submit_cli(server.url, "--dataset-uri", DATASET, "--version-name", "t1", *IMAGES, *flags, env=env)
        assert proc.returncode == 0, proc.stderr
        assert server.requests and all(r.status == 200 for r in server.requests), server.summary()
        assert all(r.header("Authorization") == f"Bearer {token}" for r in server.requests)
        assert all(r.header("Cookie") is None for r in server.requests)
    assert token not in proc.stdout + proc.stderr
    source = "$CAMPSEG_KFP_TOKEN" if route == "env" else "--existing-token"
    assert f"KFP credentials: bearer token from {source}" in proc.stdout


def test_session_cookie_reaches_every_request_and_stays_secret(clean_env):
    cookie = "oauth2_proxy_kubeflow=" + secrets.token_urlsafe(32)
    with KfpApiServer(accept=[("Cookie", cookie)]) as server:
        proc = submit_cli(server.url, "--dataset-uri", DATASET, "--version-name", "c1", "--schedule", "0 0 3 * * *",
                          *IMAGES, env={**clean_env, "CAMPSEG_KFP_COOKIES": cookie})
        assert proc.returncode == 0, proc.stderr
        assert server.requests and all(r.status == 200 for r in server.requests), server.summary()
        assert all(r.header("Authorization") is None for r in server.requests)
        assert len(server.enabled_recurring_runs()) == 1
    assert cookie.split("=", 1)[1] not in proc.stdout + proc.stderr
    assert "session cookie from $CAMPSEG_KFP_COOKIES" in proc.stdout


def test_endpoint_from_kfps_own_variable(clean_env, capsys):
    with KfpApiServer() as server:
        env = {**clean_env, "KF_PIPELINES_ENDPOINT": server.url}
        proc = subprocess.run([sys.executable, "pipeline.py", "--submit", "--dataset-uri", DATASET, "--version-name",
                               "e1", *IMAGES, "--images-file", str(Path(env["HOME"]) / "none.json")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert server.calls("POST", f"{API}/runs")


@pytest.mark.parametrize("credentials", ["token", "none"])
def test_rejected_credentials_are_one_error_line_without_the_secret(clean_env, credentials):
    wrong = "kfp-wrong-" + secrets.token_urlsafe(24)
    env = {**clean_env, "CAMPSEG_KFP_TOKEN": wrong} if credentials == "token" else clean_env
    with KfpApiServer(accept=[("Authorization", "Bearer the-right-one")]) as server:
        proc = submit_cli(server.url, "--dataset-uri", DATASET, *IMAGES, env=env)
        assert proc.returncode == 2
        error_line(proc, f"the KFP server at {server.url} refused the credentials (401", "$CAMPSEG_KFP_TOKEN")
        assert [(r.method, r.path) for r in server.requests] == [("GET", f"{API}/healthz")]  # once, no retries
    assert wrong not in proc.stdout + proc.stderr


@pytest.mark.parametrize("env, flags, needle", [
    ({"CAMPSEG_KFP_COOKIES": "just-a-value-no-name"}, [], "$CAMPSEG_KFP_COOKIES: expected NAME=VALUE"),
    ({}, ["--cookies", "=nameless"], "--cookies: expected NAME=VALUE"),
    ({"CAMPSEG_KFP_TOKEN": "   "}, [], "$CAMPSEG_KFP_TOKEN: empty"),
    ({"KF_PIPELINES_SA_TOKEN_PATH": "/nonexistent/token"}, [], "KF_PIPELINES_SA_TOKEN_PATH=/nonexistent/token: no such file"),
])
def test_malformed_credentials_are_refused_before_contacting_the_server(kfp_server, clean_env, env, flags, needle):
    proc = submit_cli(kfp_server.url, "--dataset-uri", DATASET, *IMAGES, *flags, env={**clean_env, **env})
    assert proc.returncode == 2
    error_line(proc, needle)
    assert kfp_server.requests == []
    assert "just-a-value-no-name" not in proc.stderr and "nameless" not in proc.stderr


@pytest.mark.parametrize("flag", [["--namespace", "team-a"], ["--schedule", "0 0 3 * * *"], ["--run-name", "x"],
                                  ["--cookies", "a=b"]])
def test_submission_flags_without_submit_are_refused(flag, tmp_path, capsys):
    code = pipeline.main(["--compile", "--output", str(tmp_path / "p.yaml"), *IMAGES, *flag])
    assert code == 2
    assert f"{flag[0]} goes with --submit" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()
