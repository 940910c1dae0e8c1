"""DLPK packaging: the trained model as an Esri deep learning package for ArcGIS Pro.

The package (``esri/<model_name>.dlpk``, a zip) holds:

- ``<model_name>.emd``: the Esri model definition (JSON). Esri's keys (``Framework``,
  ``InferenceFunction``, ``ModelFile``, ``ModelType``, ``ModelFormat``, ``ImageHeight``/``ImageWidth``,
  ``ExtractBands``, ``DataRange``, ``BatchSize``, ``ModelPadding``, ``Classes``, ``ModelName``,
  ``Version``; see Esri/raster-deep-learning docs/writing_model_definition.md). As in Esri's
  custom-function samples there is no ``ModelConfiguration`` (``InferenceFunction`` replaces the
  built-in configurations). ``Classes`` lists background (0) and the class the model was trained on
  (1, named by the preprocessing's ``class_name``). ``Version`` is the registered model version
  when known (publishing re-packages with it), else ``unregistered``. Plus this
  project's ``Preprocessing`` (the ``stats.json`` block verbatim), ``Threshold``, ``ModelOutput`` and
  ``NormalizationStats`` in arcgis.learn's form (the same scaling, restated as band statistics).
  ``Preprocessing.dtype`` is the pixel type the model was trained on: the raster function refuses
  rasters of another type, and ``DataRange`` is that type's range.
- ``model.pt``: the TorchScript inference model (probabilities, sigmoid inside).
- ``CampSegmenter.py``: the Python raster function ArcGIS runs (``components/esri``).
- ``README.md`` and the export stage's ``export_report.json``.

The ``.emd`` also records ``CampsegLineage``: the digests of the statistics and the models it was
packaged from (:mod:`components.contracts.lineage`); packaging refuses a run folder whose
artifacts do not belong together.

Every number of the preprocessing comes from ``stats.json``; nothing is restated by hand.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Mapping

from components.contracts.errors import RunFolderError
from components.contracts.lineage import dependents, verify
from components.contracts.ownership import open_output
from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import (
    RunLayout,
    atomic_folder,
    read_json,
    retract,
    update_summary,
)
from components.standards import ESRI_RASTER_FUNCTION

#: The raster function shipped in every package (standalone: numpy, json, os, torch only).
RASTER_FUNCTION = ESRI_RASTER_FUNCTION
#: What the exported models emit (docs/artifacts.md): probabilities in [0, 1], sigmoid inside.
MODEL_OUTPUT = "probabilities"
DEFAULT_BATCH_SIZE = 4
#: The ``.emd`` ``Version`` of a package made before the model was registered.
UNREGISTERED = "unregistered"


def emd_classes(class_name: str) -> list[dict[str, Any]]:
    """The ``.emd`` ``Classes``: background 0 and the trained class 1."""
    return [{"Value": 0, "Name": "background", "Color": [0, 0, 0]},
            {"Value": 1, "Name": class_name, "Color": [230, 0, 0]}]


def normalization_stats(prep: Preprocessing) -> dict[str, list[float]]:
    """The scaling in arcgis.learn's ``NormalizationStats`` form.

    arcgis.learn scales ``(raw - band_min) / (band_max - band_min)`` and then standardises with
    ``scaled_mean_values``/``scaled_std_values``. With ``band_min = 0`` and
    ``band_max = max_value`` that is exactly ``(raw - mean*max_value) / (std*max_value)``.
    """
    n = len(prep.bands)
    return {
        "band_min_values": [0.0] * n,
        "band_max_values": [prep.max_value] * n,
        "band_mean_values": [float(v) for v in prep.raw_mean],
        "band_std_values": [float(v) for v in prep.raw_std],
        "scaled_min_values": [0.0] * n,
        "scaled_max_values": [1.0] * n,
        "scaled_mean_values": list(prep.mean),
        "scaled_std_values": list(prep.std),
    }


def build_emd(
    stats: Mapping[str, Any],
    model_name: str = "camp-segmentation",
    version: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """The Esri model definition for a run, from its ``stats.json`` document."""
    prep = Preprocessing.from_stats(stats)
    return {
        "Framework": "PyTorch",
        "InferenceFunction": RASTER_FUNCTION.name,
        "ModelFile": "model.pt",
        "ModelType": "ImageClassification",
        "ModelFormat": "NCHW",
        "ModelName": model_name,
        "Version": str(version) if version else UNREGISTERED,
        "ImageHeight": prep.image_size,
        "ImageWidth": prep.image_size,
        "ExtractBands": list(range(len(prep.bands))),
        # The raw values the model takes: the trained pixel type's range (0-255 for uint8).
        "DataRange": [int(v) if float(v).is_integer() else v for v in prep.raw_range],
        "BatchSize": int(batch_size),
        "ModelPadding": 0,
        "Classes": emd_classes(prep.class_name),
        "Threshold": prep.threshold,
        "ModelOutput": MODEL_OUTPUT,
        "Preprocessing": dict(stats["preprocessing"]),
        "NormalizationStats": normalization_stats(prep),
    }


def check_torchscript(model_path: Path, prep: Preprocessing) -> tuple[int, ...]:
    """Run the TorchScript model on a dummy batch; raise RunFolderError unless it fits the contract.

    The contract (docs/artifacts.md): input float32 (N, bands, H, W) with H = W = image_size,
    output float32 (N, 1, H, W) probabilities in [0, 1].
    """
    import torch

    try:
        model = torch.jit.load(str(model_path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - any load failure means an unusable artifact
        raise RunFolderError(f"{model_path}: not a loadable TorchScript model ({exc})") from None
    size = prep.image_size
    dummy = torch.zeros(2, len(prep.bands), size, size)
    dummy[1].normal_(generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model(dummy)
    except Exception as exc:  # noqa: BLE001
        raise RunFolderError(
            f"{model_path}: fails on a float32 input of shape {tuple(dummy.shape)} ({exc})"
        ) from None
    expected = (2, 1, size, size)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RunFolderError(
            f"{model_path}: output shape {got} for input {tuple(dummy.shape)}; the DLPK needs "
            f"(N, 1, H, W) = {expected}"
        )
    if float(out.min()) < 0.0 or float(out.max()) > 1.0:
        raise RunFolderError(
            f"{model_path}: output outside [0, 1] (min {float(out.min()):.4g}, max "
            f"{float(out.max()):.4g}); the DLPK expects probabilities (sigmoid inside the model)"
        )
    return tuple(out.shape)


def _readme(emd: Mapping[str, Any], stats: Mapping[str, Any]) -> str:
    prep = emd["Preprocessing"]
    return (
        f"# {emd['ModelName']} (version {emd['Version']})\n\n"
        f"Segmentation of {prep.get('class_name', 'camp')}. Use with ArcGIS Pro's *Classify Pixels Using Deep Learning* "
        "(Image Analyst) in an environment with ArcGIS's deep learning frameworks (PyTorch).\n\n"
        f"- input: {len(prep['bands'])} bands {prep['bands']}, tiles of "
        f"{emd['ImageHeight']}x{emd['ImageWidth']}, scaled as "
        "(raw - mean*max_value)/(std*max_value)\n"
        f"- pixel type: {prep.get('dtype', 'uint8')} (rasters of another pixel type are refused)\n"
        f"- output: 1 = {prep.get('class_name', 'camp')} (probability >= {emd['Threshold']}), 0 = background\n"
        f"- dataset: {stats.get('dataset_uri', 'unknown')} ({stats.get('fingerprint', '')})\n"
    )


def package_dlpk(
    run_dir: Path,
    model_name: str = "camp-segmentation",
    version: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Path:
    """Write ``esri/<model_name>.dlpk`` for the run in ``run_dir`` and record it in the summary.

    Args:
        run_dir: run folder holding ``stats.json`` and ``models/model.pt`` (the export stage's
            ``models/export_report.json`` is shipped too when present).
        model_name: name of the package, its ``.emd`` and the ``ModelName`` key.
        version: the ``Version`` key of the ``.emd``: the registered model version when known
            (default ``unregistered``).
        batch_size: the ``BatchSize`` default (tiles per model call; ArcGIS users can change it).

    Returns:
        Path of the written ``.dlpk``.

    Raises:
        RunFolderError: an artifact is missing or the TorchScript model breaks the contract.
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.stats, layout.torchscript, layout.export_report, stage="dlpk")
    if not model_name or any(c in model_name for c in '/\\:*?"<>|'):
        raise RunFolderError(f"model_name={model_name!r}: not usable as a file name")
    if int(batch_size) < 1:
        raise RunFolderError(f"batch_size={batch_size!r}: must be a positive integer")
    with open_output(layout.root, "dlpk", create=False):
        return _package(layout, model_name, version, batch_size)


def _package(layout: RunLayout, model_name: str, version: str | None, batch_size: int) -> Path:
    digests = verify(layout, ["statistics", "training", "models"])
    stats = read_json(layout.stats)
    if "preprocessing" not in stats:
        raise RunFolderError(f"{layout.stats}: no 'preprocessing' block")
    try:
        prep = Preprocessing.from_stats(stats)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunFolderError(f"{layout.stats}: invalid 'preprocessing' block ({exc})") from None
    check_torchscript(layout.torchscript, prep)

    emd = build_emd(stats, model_name, version, batch_size)
    emd["CampsegLineage"] = {"statistics": digests["statistics"], "models": digests["models"]}
    report = read_json(layout.export_report)

    target = layout.esri_dir / f"{model_name}.dlpk"
    with atomic_folder(layout.esri_dir) as staging:  # one package per run: esri/ is replaced whole
        with zipfile.ZipFile(staging / target.name, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{model_name}.emd", json.dumps(emd, indent=2) + "\n")
            archive.write(layout.torchscript, emd["ModelFile"])
            archive.write(RASTER_FUNCTION, emd["InferenceFunction"])
            archive.writestr("README.md", _readme(emd, stats))
            archive.writestr("export_report.json", json.dumps(report, indent=2) + "\n")
        retract(layout, *dependents("dlpk"))
    update_summary(layout, dlpk=target)
    return target
