"""Build and push the pipeline images with the Python ``docker`` SDK, printing progress.

Use from Python (``docker/`` is not a package, and its name would clash with the SDK's, so load
this file by path)::

    import importlib.util
    spec = importlib.util.spec_from_file_location("campseg_build_images", "docker/build_images.py")
    build_images = importlib.util.module_from_spec(spec); spec.loader.exec_module(build_images)
    refs = build_images.build_all(registry="registry.example.com/campseg", tag="0.1.0", push=True)
    refs["cpu"], refs["cuda"]   # "registry.example.com/campseg/campseg@sha256:..." once pushed

or from the command line::

    python docker/build_images.py --registry registry.example.com/campseg --tag 0.1.0 [--push]
        [--wheelhouse wheelhouse] [--only cpu] [--build-arg BASE_IMAGE=...]

The build context is assembled here (pyproject.toml, README.md, components/, docker/constraints.txt
and, when given, the wheelhouse), so run folders, data and .git never reach the engine. With a
wheelhouse the build runs with ``--network none`` and ``WHEELHOUSE=1``. The SDK drives the
engine's classic builder; the Dockerfiles work with it and with BuildKit alike.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = Path(__file__).resolve().parent

#: name -> (Dockerfile relative to the context, image repository name)
IMAGES: dict[str, tuple[str, str]] = {
    "cpu": ("docker/Dockerfile", "campseg"),
    "cuda": ("docker/Dockerfile.cuda", "campseg-cuda"),
    "mlflow": ("docker/Dockerfile.mlflow", "campseg-mlflow"),
}
#: What the pipeline steps run in (the MLflow server image is built on request only).
PIPELINE_IMAGES = ("cpu", "cuda")

Log = Callable[[str], None]


class ImageBuildError(RuntimeError):
    """A build or push failed; the message holds the engine's error and the last log lines."""


def _print(line: str) -> None:
    print(line, flush=True)


def _client(client: Any | None):
    if client is not None:
        return client
    import docker  # the SDK (this folder has no __init__.py, so it cannot shadow it)

    return docker.from_env(timeout=600)


def _context_members(context: Path, dockerfile: str) -> Iterable[tuple[Path, str]]:
    for name in ("pyproject.toml", "README.md", "docker/constraints.txt", dockerfile):
        path = context / name
        if path.is_file():
            yield path, name
    for path in sorted((context / "components").rglob("*")):
        rel = path.relative_to(context)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            yield path, rel.as_posix()


def make_context(context: str | Path, dockerfile: str, wheelhouse: str | Path | None = None):
    """A tar stream of exactly what the Dockerfiles read (a temporary file, rewound)."""
    context = Path(context)
    if not (context / "pyproject.toml").is_file():
        raise ImageBuildError(f"build context {context}: no pyproject.toml (expected the repository root)")
    if not (context / dockerfile).is_file():
        raise ImageBuildError(f"build context {context}: no {dockerfile}")
    tmp = tempfile.TemporaryFile()
    with tarfile.open(fileobj=tmp, mode="w") as tar:
        for path, arcname in _context_members(context, dockerfile):
            tar.add(path, arcname=arcname, recursive=False)
        if wheelhouse is not None:
            wheels = sorted(Path(wheelhouse).glob("*.whl"))
            if not wheels:
                raise ImageBuildError(f"wheelhouse {wheelhouse}: no wheels (run docker/make_wheelhouse.sh)")
            for wheel in wheels:
                tar.add(wheel, arcname=f"wheelhouse/{wheel.name}")
    tmp.seek(0)
    return tmp


def build_image(
    context: str | Path,
    dockerfile: str,
    tag: str,
    buildargs: Mapping[str, str] | None = None,
    wheelhouse: str | Path | None = None,
    *,
    client: Any | None = None,
    network_mode: str | None = None,
    nocache: bool = False,
    log: Log = _print,
) -> str:
    """Build ``dockerfile`` (relative to ``context``) as ``tag`` and return the image id.

    Args:
        context: the repository root.
        dockerfile: e.g. ``"docker/Dockerfile"``.
        tag: ``repository:tag`` to give the image.
        buildargs: Dockerfile build arguments (``BASE_IMAGE``, ``TORCH_INDEX_URL``...).
        wheelhouse: a folder of wheels; installs from it only (``WHEELHOUSE=1``, no index) and
            builds without network unless ``network_mode`` says otherwise.
        client: a ``docker.DockerClient`` (default: from the environment, ``DOCKER_HOST``...).
        network_mode: the build containers' network (default ``"none"`` with a wheelhouse).
        nocache: do not use the build cache.
        log: receives each progress line.
    """
    client = _client(client)
    args = dict(buildargs or {})
    if wheelhouse is not None:
        args["WHEELHOUSE"] = "1"
        network_mode = network_mode or "none"
    log(f"building {tag} from {dockerfile}" + (f" (wheelhouse {wheelhouse}, network {network_mode})" if wheelhouse else ""))
    tail: list[str] = []
    image_id = None
    with make_context(context, dockerfile, wheelhouse) as fileobj:
        stream = client.api.build(
            fileobj=fileobj, custom_context=True, dockerfile=dockerfile, tag=tag, buildargs=args,
            network_mode=network_mode, rm=True, forcerm=True, pull=False, nocache=nocache,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message", chunk["error"])
                raise ImageBuildError(f"building {tag} failed: {detail}\n" + "\n".join(tail[-20:]))
            text = chunk.get("stream")
            if text:
                for line in text.rstrip("\n").splitlines():
                    if line.strip():
                        log(line)
                        tail.append(line)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    if image_id is None:  # older engines only print "Successfully built <id>"
        image_id = client.images.get(tag).id
    log(f"built {tag} ({image_id[:19]}, {client.images.get(tag).attrs['Size'] / 1e9:.2f} GB)")
    return image_id


def push_image(
    repository: str,
    tag: str,
    *,
    client: Any | None = None,
    auth_config: Mapping[str, str] | None = None,
    log: Log = _print,
) -> str:
    """Push ``repository:tag`` and return the pushed manifest's digest (``sha256:...``).

    Credentials: ``auth_config`` or, by default, the engine's login (``docker login REGISTRY``).
    Prints one line per layer state change, not every progress tick.
    """
    client = _client(client)
    log(f"pushing {repository}:{tag}")
    digest = None
    seen: dict[str, str] = {}
    for chunk in client.api.push(repository, tag=tag, stream=True, decode=True,
                                 auth_config=dict(auth_config) if auth_config else None):
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message", chunk["error"])
            raise ImageBuildError(f"pushing {repository}:{tag} failed: {detail}")
        status, layer = chunk.get("status"), chunk.get("id")
        if status and seen.get(layer) != status:
            seen[layer] = status
            log(f"  {layer + ': ' if layer else ''}{status}")
        if "aux" in chunk and "Digest" in chunk["aux"]:
            digest = chunk["aux"]["Digest"]
    if digest is None:
        raise ImageBuildError(f"pushing {repository}:{tag}: the registry reported no digest")
    log(f"pushed {repository}@{digest}")
    return digest


def image_reference(repository: str, tag: str, digest: str | None = None) -> str:
    """What the compiled pipeline should reference: the digest once pushed, else the tag."""
    return f"{repository}@{digest}" if digest else f"{repository}:{tag}"


def build_all(
    registry: str,
    tag: str,
    *,
    push: bool = False,
    images: Iterable[str] = PIPELINE_IMAGES,
    wheelhouse: str | Path | None = None,
    buildargs: Mapping[str, str] | None = None,
    context: str | Path = ROOT,
    client: Any | None = None,
    log: Log = _print,
) -> dict[str, str]:
    """Build (and push) the named images as ``REGISTRY/<name>:TAG``.

    Returns ``{"cpu": ref, "cuda": ref, ...}`` where ref is ``repo@sha256:...`` when pushed and
    ``repo:TAG`` otherwise; hand these to the pipeline compiler as the step images.
    """
    client = _client(client)
    refs: dict[str, str] = {}
    for name in images:
        if name not in IMAGES:
            raise ImageBuildError(f"unknown image {name!r}; choose from {sorted(IMAGES)}")
        dockerfile, repo_name = IMAGES[name]
        repository = f"{registry.rstrip('/')}/{repo_name}" if registry else repo_name
        build_image(context, dockerfile, f"{repository}:{tag}", buildargs, wheelhouse,
                    client=client, log=log)
        digest = push_image(repository, tag, client=client, log=log) if push else None
        refs[name] = image_reference(repository, tag, digest)
    return refs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", default="", help="e.g. registry.example.com/campseg (empty: local names)")
    parser.add_argument("--tag", required=True, help="image tag, e.g. the project version or a git sha")
    parser.add_argument("--push", action="store_true", help="push after building (uses the engine's docker login)")
    parser.add_argument("--only", action="append", choices=sorted(IMAGES),
                        help="build only this image (repeatable; default: cpu and cuda)")
    parser.add_argument("--wheelhouse", type=Path, help="install from this wheel folder, offline")
    parser.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    ns = parser.parse_args(argv)
    buildargs = {}
    for item in ns.build_arg:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--build-arg {item!r}: expected KEY=VALUE")
        buildargs[key] = value
    try:
        refs = build_all(ns.registry, ns.tag, push=ns.push, images=ns.only or PIPELINE_IMAGES,
                         wheelhouse=ns.wheelhouse, buildargs=buildargs)
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, ref in refs.items():
        print(f"{name}: {ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
