"""Fixtures of the Docker tests: the engine and the CPU image, built once per session."""

from __future__ import annotations

import pytest

from tests.support.docker_image import build_test_image, engine


@pytest.fixture(scope="session")
def docker_client():
    client = engine()
    yield client
    client.close()


@pytest.fixture(scope="session")
def cpu_image(docker_client) -> str:
    """The CPU image (``CAMPSEG_TEST_IMAGE``, or built from docker/Dockerfile offline)."""
    return build_test_image(docker_client)
