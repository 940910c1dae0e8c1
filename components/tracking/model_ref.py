"""Model references for prediction: a run folder, or a registered model ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``.

A registered version holds the ONNX model with ``stats.json`` and the run's STAC item as extra
files (:mod:`components.tracking.registry`). :func:`resolve_model` downloads them and lays them out
like a run folder (``stats.json``, ``models/model.onnx``, ``metadata/stac_item.json``), which is
what :func:`components.stages.predict.predict_scenes` reads. The export report is left out: the
registry re-serialises the ONNX file, so its recorded digest would not match; the registered
version itself is what ties the model to its statistics.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from components.contracts.errors import TrackingError
from components.contracts.run_layout import RunLayout
from components.tracking.promotion import CHAMPION_ALIAS
from components.tracking.server import first_line

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


def champion_uri(model_name: str) -> str:
    """``models:/NAME@champion``."""
    return f"models:/{model_name}@{CHAMPION_ALIAS}"


def is_model_uri(ref: str) -> bool:
    return str(ref).startswith("models:/")


def parse_model_uri(ref: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Raises:
        TrackingError: ``ref`` is not of either form.
    """
    match = _MODEL_URI.match(str(ref))
    if not match:
        raise TrackingError(f"model reference {ref!r}: expected models:/NAME@ALIAS (e.g. "
                            f"{champion_uri('camp-segmentation')}), models:/NAME/VERSION or a run folder")
    return match["name"], match["alias"], match["version"]


def resolve_model(ref: str, dest: Path, tracking_uri: str | None = None) -> Path:
    """A run-like folder at ``dest`` with the model ``ref`` names (a run folder is returned as is).

    Raises:
        TrackingError: a malformed reference, a model or alias the registry does not have, or a
            registered version without ``stats.json`` or an ONNX file.
    """
    if not is_model_uri(ref):
        return Path(ref)
    parse_model_uri(ref)
    import mlflow

    with tempfile.TemporaryDirectory(prefix="campseg-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(ref, dst_path=tmp, tracking_uri=tracking_uri))
        except Exception as exc:  # noqa: BLE001 - the registry's errors, in one line
            where = tracking_uri or "MLFLOW_TRACKING_URI"
            raise TrackingError(f"model {ref} at {where}: cannot be downloaded ({type(exc).__name__}: "
                                f"{first_line(exc)})") from None
        stats = next(local.rglob("stats.json"), None)
        onnx = next(local.rglob("*.onnx"), None)
        if stats is None or onnx is None:
            raise TrackingError(f"model {ref}: its logged model has no {'stats.json' if stats is None else 'ONNX file'}")
        layout = RunLayout(Path(dest))
        layout.models_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stats, layout.stats)
        shutil.copyfile(onnx, layout.onnx)
        item = next(local.rglob("stac_item.json"), None)
        if item is not None:
            layout.metadata_dir.mkdir(exist_ok=True)
            shutil.copyfile(item, layout.stac_item)
    return layout.root
