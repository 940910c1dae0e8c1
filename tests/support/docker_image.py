"""The CPU image built once per test session with a real Docker engine (offline when needed).

Used by tests/integration/conftest.py (fixtures ``docker_client`` and ``image``). Offline
machines: the base image is made locally with ``docker/make_base_image.sh`` (debootstrap +
``docker import`` under the Dockerfile's default BASE_IMAGE tag) when the engine lacks it, and
the dependencies come from ``./wheelhouse`` (``docker/make_wheelhouse.sh``), so the build runs
with ``--network none``.

The build holds a file lock, so ``.ci/run`` can start it early in the background
(``python -m tests.support.docker_image``) while other tests run: the fixture then waits for that
build and finds every layer in the engine's cache.

Environment:
    CAMPSEG_TEST_IMAGE   use this existing image instead of building one.
    CAMPSEG_WHEELHOUSE   wheel folder (default <repo>/wheelhouse; made when missing).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.paths import REPO

DOCKER_DIR = REPO / "docker"
BASE_IMAGE = "python:3.11-slim-bookworm"  # the default of docker/Dockerfile's BASE_IMAGE
TEST_TAG = "campseg-test:local"


def engine():
    """A client of the Docker engine; skips (fails under CAMPSEG_REQUIRE_SERVERS=1) without one."""
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


def load_build_images():
    """docker/build_images.py (not a package: its folder name would shadow the SDK)."""
    spec = importlib.util.spec_from_file_location("campseg_build_images", DOCKER_DIR / "build_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(script: str, *args: str, timeout: int = 900) -> None:
    start = time.monotonic()
    out = subprocess.run(["bash", str(DOCKER_DIR / script), *args], capture_output=True, text=True,
                         timeout=timeout)
    print(out.stdout[-3000:])
    assert out.returncode == 0, f"{script} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    print(f"{script}: {time.monotonic() - start:.0f} s")


@contextlib.contextmanager
def build_lock():
    """One image build at a time on this checkout (the background build of .ci/run, the fixture)."""
    path = REPO / ".cache" / "test-image.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_test_image(client) -> str:
    """The CPU image, built from docker/Dockerfile through docker/build_images.py, offline."""
    if os.environ.get("CAMPSEG_TEST_IMAGE"):
        return os.environ["CAMPSEG_TEST_IMAGE"]
    with build_lock():
        return _build_test_image(client)


def _build_test_image(client) -> str:
    import docker

    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        if not shutil.which("debootstrap") or os.geteuid() != 0:
            pytest.skip(f"base image {BASE_IMAGE} missing and debootstrap (as root) unavailable to make it")
        run_script("make_base_image.sh", BASE_IMAGE)
    wheelhouse = Path(os.environ.get("CAMPSEG_WHEELHOUSE", REPO / "wheelhouse"))
    if not any(wheelhouse.glob("torch-*.whl")):
        run_script("make_wheelhouse.sh", str(wheelhouse))
    start = time.monotonic()
    load_build_images().build_image(REPO, "docker/Dockerfile", TEST_TAG, wheelhouse=wheelhouse,
                                    client=client, log=lambda line: None)
    size = client.images.get(TEST_TAG).attrs["Size"]
    print(f"built {TEST_TAG} in {time.monotonic() - start:.0f} s, {size / 1e9:.2f} GB")
    return TEST_TAG


if __name__ == "__main__":  # .ci/run's early background build
    import docker

    print(build_test_image(docker.from_env(timeout=600)))
