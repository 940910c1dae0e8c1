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
import importlib
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
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
    wheelhouse = Path(os.environ.get("CAMPSEG_WHEELHOUSE", ROOT / "wheelhouse"))
    if not any(wheelhouse.glob("torch-*.whl")):
        _run_script("make_wheelhouse.sh", str(wheelhouse))
    build_images = _load_build_images()
    start = time.monotonic()
    build_images.build_image(ROOT, "docker/Dockerfile", TEST_TAG, wheelhouse=wheelhouse,
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
    import components
    import kfp

    assert version == components.__version__
    assert torch_version.startswith("2.")
    # kfp.local's DockerRunner and the cluster run the image's kfp: keep it the host's version.
    assert kfp_version == kfp.__version__
    # The default command is the project's command line.
    usage = docker_client.containers.run(image, remove=True, network_disabled=True)
    assert b"python -m components" in usage and b"train" in usage


def _stats_component(image: str):
    """The pipeline's statistics component, or a stand-in while kfp_components is not there."""
    try:
        kfp_components = importlib.import_module("components.kfp_components")
    except ModuleNotFoundError:
        kfp_components = None
    if kfp_components is not None and hasattr(kfp_components, "dataset_stats_op"):
        return "dataset_stats_op", kfp_components.dataset_stats_op
    from kfp import dsl

    @dsl.component(base_image=image, install_kfp_package=False)
    def check_size_op(image_size: int, depth: int, report: dsl.Output[dsl.Markdown]) -> str:
        """Run project code inside the image: the image-size check of components.preprocessing."""
        import components
        from components.errors import ParameterError
        from components.preprocessing import check_image_size

        check_image_size(image_size, depth)
        try:
            check_image_size(image_size + 1, depth)
            verdict = "not rejected"
        except ParameterError as exc:
            verdict = f"rejected: {exc}"
        with open(report.path, "w") as f:
            f.write(f"# campseg {components.__version__}\n\n{image_size} ok for depth {depth}; "
                    f"{image_size + 1} {verdict}\n")
        return f"{components.__version__}:{image_size}:{verdict.split(':')[0]}"

    return "check_size_op", check_size_op


def test_component_runs_in_the_image_with_docker_runner(image, tmp_path, monkeypatch):
    from kfp import local

    name, component = _stats_component(image)
    if name == "dataset_stats_op":
        pytest.skip("TODO: components.kfp_components.dataset_stats_op exists now; wire its inputs here")
    # The image runs as uid 1000 and writes its outputs into the bind-mounted pipeline root,
    # which this process (root on CI) creates: let any user create the run folders in it.
    pipeline_root = tmp_path / "pipeline_root"
    pipeline_root.mkdir()
    pipeline_root.chmod(0o777)
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.DockerRunner(), pipeline_root=str(pipeline_root), raise_on_error=True)
    start = time.monotonic()
    task = component(image_size=256, depth=4)
    print(f"{name} in DockerRunner: {time.monotonic() - start:.1f} s")
    import components

    assert task.outputs["Output"] == f"{components.__version__}:256:rejected"
    report = Path(task.outputs["report"].path).read_text()
    assert "256 ok for depth 4" in report and "257 rejected" in report
    assert "multiple of 16" in report
