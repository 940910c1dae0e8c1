"""Build the pipeline's step images (CPU and CUDA) with ``docker/build_images.py``; record their
references in ``build/images.json`` for ``--compile`` and ``--submit``."""

from __future__ import annotations

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


#: Where ``--build-images`` records the references it built, for ``--compile`` and ``--submit``.
IMAGES_FILE = Path("build") / "images.json"


def record_images(refs: dict[str, str], path: Path = IMAGES_FILE) -> Path:
    """Write ``refs`` (``{"cpu": ref, "cuda": ref}``) to ``path`` as JSON."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(refs, indent=2, sort_keys=True) + "\n")
    return path


def recorded_images(path: Path = IMAGES_FILE) -> dict[str, str] | None:
    """The references :func:`record_images` wrote to ``path``; None when there is no such file.

    Raises:
        ParameterError: the file is not a JSON object with a ``cpu`` reference.
    """
    import json

    from components.contracts.errors import ParameterError

    path = Path(path)
    if not path.is_file():
        return None
    try:
        refs = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParameterError(f"{path}: unreadable image references ({exc}); run --build-images again "
                             "or pass --image and --gpu-image") from None
    if not isinstance(refs, dict) or not isinstance(refs.get("cpu"), str) or not refs["cpu"]:
        raise ParameterError(f"{path}: expected {{\"cpu\": REF, \"cuda\": REF}}; run --build-images again "
                             "or pass --image and --gpu-image")
    return {k: v for k, v in refs.items() if isinstance(v, str)}
