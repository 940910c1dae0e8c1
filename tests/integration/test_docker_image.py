"""Build the CPU image with a real Docker engine and run a pipeline component in it.

Needs a Docker engine (``.ci/run`` installs Debian's docker.io and starts ``dockerd``). Offline
machines: the base image is made locally with ``docker/make_base_image.sh`` (debootstrap +
``docker import`` under the Dockerfile's default BASE_IMAGE tag) when the engine lacks it, and
the dependencies come from ``./wheelhouse`` (``docker/make_wheelhouse.sh``), so the build runs
with ``--network none``.

Environment:
    CAMPSEG_TEST_IMAGE   use this existing image instead of building one.
    CAMPSEG_WHEELHOUSE   wheel folder (default <repo>/wheelhouse; made when missing).
"""

# No `from __future__ import annotations`: KFP reads the component's annotations as types.
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.integration


DOCKER_DIR = REPO / "docker"
BASE_IMAGE = "python:3.11-slim-bookworm"  # the default of docker/Dockerfile's BASE_IMAGE
TEST_TAG = "campseg-test:local"


def _engine():
    try:
        import docker
    except ImportError:
        pytest.skip("the docker SDK is not installed (pip install docker)")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        if os.environ.get("CAMPSEG_REQUIRE_SERVERS") == "1":
            pytest.fail(f"no Docker engine answers ({exc}) though CAMPSEG_REQUIRE_SERVERS=1")
        pytest.skip(f"no Docker engine answers ({type(exc).__name__}: {exc}); "
                    "start dockerd as .ci/run does to run this test")
    return client


def _load_build_images():
    spec = importlib.util.spec_from_file_location("campseg_build_images", DOCKER_DIR / "build_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(script: str, *args: str, timeout: int = 900) -> None:
    start = time.monotonic()
    out = subprocess.run(["bash", str(DOCKER_DIR / script), *args], capture_output=True, text=True,
                         timeout=timeout)
    print(out.stdout[-3000:])
    assert out.returncode == 0, f"{script} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    print(f"{script}: {time.monotonic() - start:.0f} s")


@pytest.fixture(scope="session")
def docker_client():
    client = _engine()
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(docker_client) -> str:
    """The CPU image: built from docker/Dockerfile through docker/build_images.py, offline."""
    if os.environ.get("CAMPSEG_TEST_IMAGE"):
        return os.environ["CAMPSEG_TEST_IMAGE"]
    import docker

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        if not shutil.which("debootstrap") or os.geteuid() != 0:
            pytest.skip(f"base image {BASE_IMAGE} missing and debootstrap (as root) unavailable to make it")
        _run_script("make_base_image.sh", BASE_IMAGE)
    wheelhouse = Path(os.environ.get("CAMPSEG_WHEELHOUSE", REPO / "wheelhouse"))
    if not any(wheelhouse.glob("torch-*.whl")):
        _run_script("make_wheelhouse.sh", str(wheelhouse))
    build_images = _load_build_images()
    start = time.monotonic()
    build_images.build_image(REPO, "docker/Dockerfile", TEST_TAG, wheelhouse=wheelhouse,
                             client=docker_client, log=lambda line: None)
    size = docker_client.images.get(TEST_TAG).attrs["Size"]
    print(f"built {TEST_TAG} in {time.monotonic() - start:.0f} s, {size / 1e9:.2f} GB")
    return TEST_TAG


def test_image_has_the_project_and_runs_as_non_root(docker_client, image):
    out = docker_client.containers.run(
        image,
        ["python", "-c", "import os, components, torch, kfp, mlflow, rasterio, onnxruntime; "
                         "print(os.getuid(), components.__version__, torch.__version__, kfp.__version__)"],
        remove=True, network_disabled=True,
    ).decode().split()
    uid, version, torch_version, kfp_version = out[-4:]
    assert uid != "0"
    import kfp

    import components

    assert version == components.__version__
    assert torch_version.startswith("2.")
    # kfp.local's DockerRunner and the cluster run the image's kfp: keep it the host's version.
    assert kfp_version == kfp.__version__
    # The default command is the project's command line.
    usage = docker_client.containers.run(image, remove=True, network_disabled=True)
    assert b"python -m components" in usage and b"train" in usage


def test_pipeline_components_run_in_the_image_with_docker_runner(image, tmp_path, monkeypatch):
    """The pipeline's own fingerprint and statistics components, in the image, via DockerRunner."""
    import json

    from kfp import local

    from components.data.sample_data import generate_sample_dataset
    from components.kubeflow.components import make_components
    from components.kubeflow.steps import dataset_fingerprint
    from components.stages.stats import compute_statistics

    # The image runs as uid 1000 and writes into the bind-mounted pipeline root (same path inside).
    pipeline_root = tmp_path / "pipeline_root"
    pipeline_root.mkdir()
    data = generate_sample_dataset(pipeline_root / "data", n_chips=12, size=64, seed=3)
    for path in [pipeline_root, *pipeline_root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.DockerRunner(), pipeline_root=str(pipeline_root), raise_on_error=True)
    c = make_components(image)
    start = time.monotonic()
    fingerprint = c.dataset_fingerprint(dataset_uri=str(data)).output
    stats_task = c.dataset_statistics(
        dataset_uri=str(data), fingerprint=fingerprint, image_size=0, architecture="unet", depth=3,
        train_ratio=0.7, val_ratio=0.15, test_ratio=0.15, seed=42, threshold=0.5,
    )
    print(f"two components in DockerRunner: {time.monotonic() - start:.1f} s")
    assert fingerprint == dataset_fingerprint(str(data))
    in_image = json.loads((Path(stats_task.outputs["statistics"].path) / "stats.json").read_text())
    on_host = compute_statistics(data, tmp_path / "host", network_depth=3, dataset_uri=str(data), fingerprint=fingerprint)
    assert in_image == on_host
    assert stats_task.outputs["dataset_metrics"].metadata["chips_train"] == on_host["counts"]["train"]
