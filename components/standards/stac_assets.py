"""The assets of the STAC item: every artifact of a run, with media type, roles and file fields.

Each asset carries ``href`` (relative to the item's folder, or an asset base such as
``s3://bucket/prefix/model/1/`` + the run-relative path), ``type``, ``title``, ``roles``,
``file:size``, ``file:checksum`` (multihash sha2-256) and ``file:local_path``. Only the artifacts
whose interface is ``mlm:input``/``mlm:output`` (the ONNX and TorchScript models) carry the
``mlm:model`` role; the state dict is ``mlm:weights``, the Lightning checkpoint ``mlm:checkpoint``,
and each says what it takes and returns. Container images are references without file fields.
The table is in ``docs/stac.md``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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
        """Add the asset ``key`` for the file ``path``; ``extra`` fields go before the file fields.

        (MLM allows ``mlm:artifact_type`` only on ``mlm:model`` assets.)
        """
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

    def add_reference(self, key: str, href: str, media_type: str, roles: list[str], title: str,
                      description: str) -> None:
        """Add an asset that is not a file of the run (e.g. a container image)."""
        self.assets[key] = {"href": href, "type": media_type, "title": title, "description": description,
                            "roles": roles}


def _existing_files(paths: Iterable[Path]) -> list[Path]:
    return sorted(p for p in paths if p.is_file())


def add_model_assets(assets: AssetCollector, bands: Sequence[str], class_name: str = "camp") -> None:
    """ONNX (the main asset, key ``model``), TorchScript, state dict and Lightning checkpoint.

    STAC 1.1 allows Item-level ``bands`` only when some asset carries ``bands`` too, and MLM needs
    the Item-level list for the names in ``mlm:input``: the model assets name the bands.
    """
    layout = assets.layout
    model_bands = {"bands": [{"name": band} for band in bands]}
    interface = (f"Takes mlm:input 'input' (float32 N x {len(bands)} x H x W, z-scored per mlm:input "
                 f"value_scaling); returns mlm:output 'probabilities' (float32 N x 1 x H x W, {class_name} "
                 "probability in [0, 1], sigmoid inside).")
    assets.add("model", layout.onnx, ONNX_MEDIA_TYPE, ["mlm:model", "mlm:compiled", "model", "data"],
               "ONNX model (main runtime)",
               f"ONNX export of InferenceModel (network + sigmoid), dynamic batch. {interface} Runs with "
               "ONNX Runtime on CPU (or CUDA).",
               **model_bands, **{"mlm:artifact_type": "onnx"})
    assets.add("torchscript", layout.torchscript, TORCHSCRIPT_MEDIA_TYPE,
               ["mlm:model", "mlm:compiled", "model"], "TorchScript model",
               f"TorchScript of InferenceModel; load with torch.jit.load. {interface}",
               **model_bands, **{"mlm:artifact_type": "torch.jit.script"})
    assets.add("weights", layout.state_dict, TORCH_MEDIA_TYPE, ["mlm:weights", "weights"],
               "State dict (weights only)",
               "torch.save of InferenceModel.state_dict(): tensors, no code. Load it into "
               "components.ml.networks.InferenceModel(build_network(TrainConfig.from_dict(train_config))) "
               "(the architecture and hyperparameters of mlm:hyperparameters); that module then takes "
               "mlm:input and returns mlm:output probabilities.")
    assets.add("checkpoint", layout.checkpoint, CHECKPOINT_MEDIA_TYPE,
               ["mlm:checkpoint", "checkpoint"], "Lightning checkpoint (best validation IoU)",
               "Lightning checkpoint of components.ml.task.SegmentationTask with optimizer state and "
               "hyperparameters, to resume or fine-tune training. The task's network returns LOGITS "
               "(N x 1 x H x W, before the sigmoid), not the probabilities of mlm:output.")


def add_source_code_asset(assets: AssetCollector, path: Path, entrypoint: str) -> None:
    """The standalone pre/post-processing module that ``post_processing_function`` names."""
    assets.add("source-code", path, "text/x-python", ["mlm:source_code", "code", "metadata"],
               "Pre- and post-processing code (numpy only)",
               "normalize(raw, value_scaling) builds mlm:input from raw chips; classify(probabilities, "
               "threshold) turns mlm:output into the class map (post_processing_function).",
               **{"mlm:entrypoint": entrypoint})


def add_container_assets(assets: AssetCollector, images: Mapping[str, str]) -> None:
    """The step images the pipeline ran in (``cpu``: every step but training, ``cuda``: training)."""
    roles = {"cpu": (["mlm:inference-runtime", "runtime"], "CPU step image (statistics, export, "
                     "evaluation with ONNX Runtime, packaging)"),
             "cuda": (["mlm:training-runtime", "runtime"], "GPU step image (training with CUDA)")}
    for kind, ref in sorted(images.items()):
        if not ref:
            continue
        kind_roles, what = roles.get(kind, (["runtime"], f"{kind} step image"))
        assets.add_reference(f"container-{kind}", ref, "application/vnd.oci.image.index.v1+json", kind_roles,
                             f"Container image ({kind})", f"{what}: {ref}")


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


def add_figure_assets(assets: AssetCollector, class_name: str = "camp") -> None:
    """The evaluation figures (``figure-<stem>``), the overlays (``overlay-<role>``) and the report."""
    layout = assets.layout
    titles = {"confusion_matrix": "Confusion matrix of the test pixels",
              "training_curves": "Training curves: loss, IoU and learning rate per epoch"}
    for path in _existing_files(layout.evaluation_dir.glob("*.png")):
        assets.add(f"figure-{path.stem}", path, "image/png", ["overview", "visual"],
                   titles.get(path.stem, path.stem.replace("_", " ").capitalize()))
    for path in _existing_files(layout.overlays_dir.glob("*.png")):
        assets.add(f"overlay-{path.stem}", path, "image/png", ["overview", "visual"],
                   f"Overlay of the {path.stem} test chip by IoU",
                   f"Image, true {class_name}, and prediction against truth (true positives, false "
                   "positives and false negatives in different colours).")
    if layout.report_html.is_file():
        assets.add("report", layout.report_html, "text/html", ["overview", "metadata"],
                   "Evaluation report (self-contained HTML)")


def add_dlpk_assets(assets: AssetCollector, class_name: str = "camp") -> None:
    """The Esri deep learning packages (``dlpk-<stem>``), when the run has any."""
    for path in _existing_files(assets.layout.esri_dir.glob("*.dlpk")):
        assets.add(f"dlpk-{path.stem}", path, "application/zip", ["model", "esri"],
                   f"Esri deep learning package {path.name}",
                   "For ArcGIS Pro's Classify Pixels Using Deep Learning: the Esri model definition (.emd), "
                   "the Python raster function CampSegmenter.py and the TorchScript model model.pt (no ONNX). "
                   f"Takes a raster of the trained bands and pixel type; returns a class raster "
                   f"(0 background, 1 {class_name}).")


def run_assets(layout: RunLayout, asset_base: str | None, bands: Sequence[str], class_name: str = "camp",
               source_code: tuple[Path, str] | None = None,
               images: Mapping[str, str] | None = None) -> AssetCollector:
    """Every asset of the run, in the item's order: models, code, metadata, figures, Esri packages,
    container images."""
    assets = AssetCollector(layout, asset_base)
    add_model_assets(assets, bands, class_name)
    if source_code is not None:
        add_source_code_asset(assets, *source_code)
    add_metadata_assets(assets)
    add_figure_assets(assets, class_name)
    add_dlpk_assets(assets, class_name)
    add_container_assets(assets, images or {})
    return assets
