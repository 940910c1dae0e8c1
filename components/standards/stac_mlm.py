"""The MLM extension's model fields of the STAC item, derived from the preprocessing and config.

``mlm:input`` and ``mlm:output`` come from the one :class:`Preprocessing` definition, so a consumer
that knows only the item feeds the model and reads its output as the evaluation stage does.
Field choices are documented in ``docs/stac.md``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from components.contracts.errors import RunFolderError
from components.contracts.preprocessing import Preprocessing

MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"

#: Output classes of the class map (value, name, description, colour as RRGGBB).
CLASSES = (
    {"value": 0, "name": "background", "description": "Not part of a camp", "color_hint": "000000"},
    {"value": 1, "name": "camp", "description": "Refugee or IDP camp (buildings/shelters)",
     "color_hint": "FF0000"},
)
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(\+[0-9A-Za-z.-]+)?")


def framework_version(raw: str) -> str:
    """A semantic version for ``mlm:framework_version`` (``2.13.0+cpu`` kept, ``2.5.0a0`` → ``2.5.0``)."""
    match = _SEMVER.match(str(raw))
    if not match:
        raise RunFolderError(f"export_report.json: torch_version {raw!r} is not a version number")
    full = match.group(0)
    return full if _SEMVER.fullmatch(str(raw)) else ".".join(match.groups()[:3])


def mlm_input(prep: Preprocessing) -> dict[str, Any]:
    """``mlm:input[0]``: raw chip pixels in band order, z-scored per band as ``value_scaling`` states."""
    size, n_bands = prep.image_size, len(prep.bands)
    value_scaling = [
        {"type": "z-score", "mean": float(m), "stddev": float(s)}
        for m, s in zip(prep.raw_mean.tolist(), prep.raw_std.tolist())
    ]
    return {
        "name": "input",
        "description": (
            f"Chip pixels as stored (0-{prep.max_value:g}) in band order {list(prep.bands)}, "
            "NCHW float32, each band scaled as (raw - mean) / stddev with the per-band "
            "value_scaling below (training-split statistics on the raw pixel scale)."
        ),
        "bands": list(prep.bands),
        "input": {"shape": [-1, n_bands, size, size],
                  "dim_order": ["batch", "bands", "height", "width"],
                  "data_type": "float32"},
        "value_scaling": value_scaling,
        "resize_type": None,
        "pre_processing_function": None,
    }


def mlm_output(prep: Preprocessing) -> dict[str, Any]:
    """``mlm:output[0]``: the camp probability per pixel and the threshold rule to a class map."""
    size = prep.image_size
    return {
        "name": "probabilities",
        "description": (
            "Camp probability per pixel in [0, 1] (sigmoid inside the model; apply no second "
            f"sigmoid). Class map: probability >= {prep.threshold} -> 1 (camp), else 0 "
            "(background); the threshold is also given as camp:threshold."
        ),
        "tasks": ["semantic-segmentation"],
        "result": {"shape": [-1, 1, size, size],
                   "dim_order": ["batch", "channel", "height", "width"],
                   "data_type": "float32"},
        "classification:classes": [dict(c) for c in CLASSES],
        "post_processing_function": {
            "format": "python",
            "expression": "components.contracts.preprocessing:Preprocessing.classify",
            "description": f"class_map = (probabilities >= {prep.threshold}).astype(uint8)",
        },
    }


def mlm_properties(model_name: str, prep: Preprocessing, config: Mapping[str, Any],
                   report: Mapping[str, Any], *, total_parameters: int, memory_size: int) -> dict[str, Any]:
    """Every ``mlm:*`` property of the item, in the order the item lists them.

    Args:
        model_name: ``mlm:name``.
        prep: the run's preprocessing (bands, size, scaling, threshold).
        config: ``train_config.json`` (``mlm:hyperparameters``, batch size).
        report: ``models/export_report.json`` (torch version).
        total_parameters: parameters of the shipped weights.
        memory_size: bytes of every tensor of the shipped weights.
    """
    return {
        "mlm:name": model_name,
        "mlm:architecture": "U-Net",
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "PyTorch",
        "mlm:framework_version": framework_version(report.get("torch_version", "")),
        "mlm:memory_size": memory_size,
        "mlm:total_parameters": total_parameters,
        "mlm:pretrained": False,
        "mlm:pretrained_source": None,
        "mlm:batch_size_suggestion": int(config.get("batch_size", 8)),
        "mlm:accelerator": "amd64",
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": (
            "The ONNX model (main asset) runs on CPU with ONNX Runtime's CPUExecutionProvider; the "
            "PyTorch artifacts also run on CUDA GPUs."
        ),
        "mlm:input": [mlm_input(prep)],
        "mlm:output": [mlm_output(prep)],
        "mlm:hyperparameters": dict(config),
    }
