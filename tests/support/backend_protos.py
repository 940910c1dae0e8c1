"""The protos a given KFP backend release parses pipelines with, loaded in isolation from their wheels.

The backend's driver and Argo compiler parse each step's Kubernetes config with the
``kubernetes_executor_config.proto`` of their own release (the kfp-kubernetes wheel of the same
version carries the same file) and ``pipeline_spec.proto`` (kfp-pipeline-spec). The SDK that
compiles the pipeline may be newer, so the installed modules are not the ones to check against:
:func:`message_class` builds a separate descriptor pool from the wheels' serialized descriptors,
never importing their modules, so nothing clashes with the installed ``kfp``.

The wheels are fetched by ``.ci/run`` (``pip download --no-deps``) into :data:`CACHE`, or by
:func:`wheel` when missing; each is checked against its pinned SHA-256.
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.support.paths import REPO

#: Where the wheels are kept (``CAMPSEG_BACKEND_PROTOS`` overrides it).
CACHE = Path(os.environ.get("CAMPSEG_BACKEND_PROTOS", REPO / ".cache" / "backend-protos"))
#: SHA-256 of each wheel used, as PyPI serves it.
WHEELS = {
    ("kfp-kubernetes", "2.14.6"): "3ab5e67e05ec6ff1962643ef01d9fdad98ec74b4694d2420f16e8d3a7ddb72a2",
    ("kfp-pipeline-spec", "2.14.6"): "82cbad2976f248f7049be37d241f1e47ecb3d99e720dfd0cab3e0881be458516",
    ("kfp-kubernetes", "2.15.0"): "a50f89ea9f66ee9ce81daa51efde266e0d21e9766bb1f7a41eede47109d2cc0f",
    ("kfp-pipeline-spec", "2.15.0"): "fd0caebd1023bf0c27118588e03bbeb97d4e691df9b1db61284661edb4aa8e91",
}
_MODULES = {"kfp-kubernetes": "kfp/kubernetes/kubernetes_executor_config_pb2.py",
            "kfp-pipeline-spec": "kfp/pipeline_spec/pipeline_spec_pb2.py"}


class WheelMissing(RuntimeError):
    """The wheel is not in the cache and could not be downloaded."""


def wheel(project: str, version: str) -> Path:
    """The verified wheel of ``project==version`` in :data:`CACHE`, downloaded when missing."""
    name = f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
    path = CACHE / name
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                               "-d", str(CACHE), f"{project}=={version}"], capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            raise WheelMissing(f"{name} not in {CACHE} and pip download failed: {done.stderr.strip()[-300:]}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WHEELS[(project, version)]:
        raise RuntimeError(f"{path}: SHA-256 {digest} is not the pinned one of {project}=={version}")
    return path


def _serialized_descriptor(whl: Path, member: str) -> bytes:
    """The ``AddSerializedFile(b'...')`` argument of a generated ``*_pb2.py`` (read, not executed)."""
    tree = ast.parse(zipfile.ZipFile(whl).read(member))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return node.args[0].value
    raise RuntimeError(f"{whl.name}:{member}: no serialized descriptor")


def _add_with_dependencies(pool: descriptor_pool.DescriptorPool, serialized: bytes) -> None:
    """Add one file to ``pool``, first its dependencies that are not ours (google/protobuf, google/rpc)
    from the installed well-known types, which do not change between KFP releases."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    for dependency in proto.dependency:
        try:
            pool.FindFileByName(dependency)
        except KeyError:
            installed = descriptor_pool.Default().FindFileByName(dependency)
            dep = descriptor_pb2.FileDescriptorProto()
            installed.CopyToProto(dep)
            _add_with_dependencies(pool, dep.SerializeToString())
    pool.Add(proto)


def pool_of(version: str) -> descriptor_pool.DescriptorPool:
    """A descriptor pool with ``pipeline_spec.proto`` and ``kubernetes_executor_config.proto`` of KFP ``version``."""
    # Register the well-known files the two depend on in the default pool.
    import google.protobuf.duration_pb2  # noqa: F401
    import google.protobuf.struct_pb2  # noqa: F401
    import google.rpc.status_pb2  # noqa: F401

    pool = descriptor_pool.DescriptorPool()
    for project in ("kfp-pipeline-spec", "kfp-kubernetes"):
        _add_with_dependencies(pool, _serialized_descriptor(wheel(project, version), _MODULES[project]))
    return pool


def message_class(version: str, full_name: str):
    """The message class ``full_name`` (e.g. ``kfp_kubernetes.KubernetesExecutorConfig``) of KFP ``version``."""
    return message_factory.GetMessageClass(pool_of(version).FindMessageTypeByName(full_name))
