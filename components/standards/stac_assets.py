"""The assets of the STAC item: every artifact of a run, with media type, roles and file fields.

Each asset carries ``href`` (relative to the item's folder, or an asset base such as
``s3://bucket/prefix/model/1/`` + the run-relative path), ``type``, ``title``, ``roles``,
``file:size``, ``file:checksum`` (multihash sha2-256) and ``file:local_path``. Model artifacts carry
the ``mlm:model`` role and their ``mlm:artifact_type``; the table is in ``docs/stac.md``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from components.contracts.run_layout import RunLayout

FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"

ONNX_MEDIA_TYPE = "application/octet-stream; framework=onnx; profile=onnx"
TORCHSCRIPT_MEDIA_TYPE = "application/octet-stream; framework=pytorch; profile=torchscript"
TORCH_MEDIA_TYPE = "application/octet-stream; framework=pytorch"
CHECKPOINT_MEDIA_TYPE = "application/octet-stream; framework=pytorch; profile=lightning-checkpoint"


def multihash_sha256(path: Path) -> str:
    """The ``file:checksum`` of ``path``: multihash sha2-256 (``1220`` + hex SHA-256)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "1220" + digest.hexdigest()


class AssetCollector:
    """Collects assets with hrefs, sizes and checksums relative to the item or an asset base."""

    def __init__(self, layout: RunLayout, asset_base: str | None) -> None:
        self.layout = layout
        self.base = asset_base if asset_base is None or asset_base.endswith("/") else asset_base + "/"
        self.assets: dict[str, dict] = {}

    def href(self, relative: str) -> str:
        """The href of the run-relative path ``relative``."""
        if self.base is not None:
            return self.base + relative
        return os.path.relpath(self.layout.root / relative, self.layout.metadata_dir).replace(os.sep, "/")

    def add(self, key: str, path: Path, media_type: str, roles: list[str], title: str,
            description: str | None = None, **extra: Any) -> None:
        """Add the asset ``key`` for the file ``path``; ``extra`` fields go before the file fields."""
        relative = path.relative_to(self.layout.root).as_posix()
        asset = {"href": self.href(relative), "type": media_type, "title": title}
        if description:
            asset["description"] = description
        asset["roles"] = roles
        asset.update(extra)
        asset["file:size"] = path.stat().st_size
        asset["file:checksum"] = multihash_sha256(path)
        asset["file:local_path"] = relative
        self.assets[key] = asset


def _existing_files(paths: Iterable[Path]) -> list[Path]:
    return sorted(p for p in paths if p.is_file())


def add_model_assets(assets: AssetCollector, bands: Sequence[str]) -> None:
    """ONNX (the main asset, key ``model``), TorchScript, state dict and Lightning checkpoint.

    STAC 1.1 allows Item-level ``bands`` only when some asset carries ``bands`` too, and MLM needs
    the Item-level list for the names in ``mlm:input``: the model assets name the bands.
    """
    layout = assets.layout
    model_bands = {"bands": [{"name": band} for band in bands]}
    assets.add("model", layout.onnx, ONNX_MEDIA_TYPE, ["mlm:model", "mlm:compiled", "model", "data"],
               "ONNX model (main runtime)",
               "InferenceModel (U-Net + sigmoid) in ONNX; input 'input', output 'probabilities', "
               "dynamic batch. Runs with ONNX Runtime on CPU.",
               **model_bands, **{"mlm:artifact_type": "onnx"})
    assets.add("torchscript", layout.torchscript, TORCHSCRIPT_MEDIA_TYPE,
               ["mlm:model", "mlm:compiled", "model"], "TorchScript model",
               "TorchScript of InferenceModel (saved with torch.jit.save); load with torch.jit.load.",
               **model_bands, **{"mlm:artifact_type": "torch.jit.save"})
    assets.add("weights", layout.state_dict, TORCH_MEDIA_TYPE, ["mlm:model", "mlm:weights", "weights"],
               "State dict", "torch.save of InferenceModel.state_dict(); needs the network definition "
               "(components.ml.networks) and mlm:hyperparameters to rebuild.",
               **model_bands, **{"mlm:artifact_type": "torch.save"})
    assets.add("checkpoint", layout.checkpoint, CHECKPOINT_MEDIA_TYPE,
               ["mlm:model", "mlm:checkpoint", "checkpoint"], "Lightning checkpoint (best val IoU)",
               "Lightning checkpoint with optimizer state and hyperparameters.",
               **model_bands, **{"mlm:artifact_type": "lightning.pytorch.Trainer.save_checkpoint"})


def add_metadata_assets(assets: AssetCollector) -> None:
    """The run's JSON files that exist (statistics, manifest, config, history, reports)."""
    layout = assets.layout
    json_files = [
        ("stats", layout.stats, "Dataset statistics and preprocessing definition"),
        ("dataset-manifest", layout.splits, "Validated chip/mask pairs and their splits"),
        ("train-config", layout.config, "Training configuration"),
        ("training-history", layout.history, "Per-epoch training and validation metrics"),
        ("export-report", layout.export_report, "Export parity report"),
        ("metrics", layout.metrics, "Evaluation metrics"),
    ]
    for key, path, title in json_files:
        if path.is_file():
            assets.add(key, path, "application/json", ["metadata"], title)


def add_figure_assets(assets: AssetCollector) -> None:
    """The evaluation figures (``figure-<stem>``) and overlays (``overlay-<stem>``)."""
    layout = assets.layout
    for path in _existing_files(layout.evaluation_dir.glob("*.png")):
        assets.add(f"figure-{path.stem}", path, "image/png", ["overview", "visual"],
                   path.stem.replace("_", " ").capitalize())
    for path in _existing_files(layout.overlays_dir.glob("*.png")):
        assets.add(f"overlay-{path.stem}", path, "image/png", ["overview", "visual"],
                   f"Overlay {path.stem}: image, truth, prediction")


def add_dlpk_assets(assets: AssetCollector) -> None:
    """The Esri deep learning packages (``dlpk-<stem>``), when the run has any."""
    for path in _existing_files(assets.layout.esri_dir.glob("*.dlpk")):
        assets.add(f"dlpk-{path.stem}", path, "application/zip", ["mlm:model", "model", "esri"],
                   f"Esri deep learning package {path.name}",
                   "Esri model definition (.emd), Python raster function and the ONNX/PyTorch model.",
                   **{"mlm:artifact_type": "esri.dlpk"})


def run_assets(layout: RunLayout, asset_base: str | None, bands: Sequence[str]) -> AssetCollector:
    """Every asset of the run, in the item's order: models, metadata, figures, Esri packages."""
    assets = AssetCollector(layout, asset_base)
    add_model_assets(assets, bands)
    add_metadata_assets(assets)
    add_figure_assets(assets)
    add_dlpk_assets(assets)
    return assets
