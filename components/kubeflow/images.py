"""Build the pipeline's step images (CPU and CUDA) with ``docker/build_images.py``."""

import importlib.util
from pathlib import Path

#: The image builder of the repository (the docker SDK); not part of the installed package.
BUILDER = Path(__file__).resolve().parents[2] / "docker" / "build_images.py"


def build_images(registry: str, tag: str | None, push: bool, wheelhouse: Path | None) -> dict[str, str]:
    """Build (and with ``push``, push) the step images; their references by kind (``cpu``, ``cuda``)."""
    from components import __version__

    spec = importlib.util.spec_from_file_location("campseg_build_images", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_all(registry, tag or __version__, push=push, wheelhouse=wheelhouse)
