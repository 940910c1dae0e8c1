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

#: The module of the source-code asset that ``post_processing_function`` names (numpy only).
PROCESSING_MODULE = "campseg_processing"


def classes(class_name: str) -> list[dict[str, Any]]:
    """The class map's classes (value, name, description, colour as RRGGBB): background 0, the class 1."""
    return [
        {"value": 0, "name": "background", "description": f"Not {class_name}", "color_hint": "000000"},
        {"value": 1, "name": class_name, "description": f"{class_name} (the foreground class the model was "
         "trained on)", "color_hint": "FF0000"},
    ]


def architecture(config: Mapping[str, Any]) -> str:
    """``mlm:architecture`` from ``train_config.json``: the network that was actually trained."""
    name = config.get("architecture", "unet")
    if name == "unet":
        return (f"U-Net ({config.get('depth', 4)} levels, {config.get('base_channels', 32)} base channels, "
                "trained from scratch)")
    if name == "smp_unet":
        return f"U-Net (segmentation_models_pytorch, {config.get('encoder_name', 'resnet18')} encoder, random init)"
    if name == "seed_baseline":
        return "Encoder-decoder CNN without skip connections (seed baseline: 4 conv levels, 3 transposed convs)"
    raise RunFolderError(f"train_config.json: unknown architecture {name!r}")


_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(\+[0-9A-Za-z.-]+)?")


def framework_version(raw: str) -> str:
    """A semantic version for ``mlm:framework_version`` (``2.13.0+cpu`` kept, ``2.5.0a0`` → ``2.5.0``)."""
    match = _SEMVER.match(str(raw))
    if not match:
        raise RunFolderError(f"export_report.json: torch_version {raw!r} is not a version number")
    full = match.group(0)
    return full if _SEMVER.fullmatch(str(raw)) else ".".join(match.groups()[:3])


def mlm_input(prep: Preprocessing, resized: bool = False) -> dict[str, Any]:
    """``mlm:input[0]``: raw chip pixels in band order, z-scored per band as ``value_scaling`` states.

    ``resized``: the training chips were not of the input size and were resized (bilinear, as
    :func:`components.data.imagery.resize_chip` does), so ``resize_type`` says so.
    """
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
            + (f" Training chips of another size were resized bilinearly to {size}x{size}." if resized else "")
        ),
        "bands": list(prep.bands),
        "input": {"shape": [-1, n_bands, size, size],
                  "dim_order": ["batch", "bands", "height", "width"],
                  "data_type": "float32"},
        "value_scaling": value_scaling,
        "resize_type": "interpolation-linear" if resized else None,
        "pre_processing_function": None,
    }


def mlm_output(prep: Preprocessing) -> dict[str, Any]:
    """``mlm:output[0]``: the class probability per pixel and the threshold rule to a class map."""
    size, name = prep.image_size, prep.class_name
    return {
        "name": "probabilities",
        "description": (
            f"{name} probability per pixel in [0, 1] (sigmoid inside the model; apply no second "
            f"sigmoid). Class map: probability >= {prep.threshold} -> 1 ({name}), else 0 "
            "(background); the threshold is mlm:hyperparameters.threshold."
        ),
        "tasks": ["semantic-segmentation"],
        "result": {"shape": [-1, 1, size, size],
                   "dim_order": ["batch", "channel", "height", "width"],
                   "data_type": "float32"},
        "classification:classes": classes(name),
        "post_processing_function": {
            "format": "python",
            "expression": f"{PROCESSING_MODULE}:classify",
            "description": (f"{PROCESSING_MODULE}.py (the source-code asset): classify(probabilities, "
                            f"threshold={prep.threshold}) -> uint8 class map (N, H, W)"),
        },
    }


def mlm_properties(model_name: str, prep: Preprocessing, config: Mapping[str, Any],
                   report: Mapping[str, Any], *, total_parameters: int, memory_size: int,
                   resized: bool = False) -> dict[str, Any]:
    """Every ``mlm:*`` property of the item, in the order the item lists them.

    Args:
        model_name: ``mlm:name``.
        prep: the run's preprocessing (bands, size, scaling, threshold, class name).
        config: ``train_config.json`` (``mlm:architecture``, ``mlm:hyperparameters``, batch size).
        report: ``models/export_report.json`` (torch version).
        total_parameters: parameters of the shipped weights.
        memory_size: bytes of every tensor of the shipped weights.
        resized: the training chips were resized to the input size.
    """
    return {
        "mlm:name": model_name,
        "mlm:architecture": architecture(config),
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "PyTorch",
        "mlm:framework_version": framework_version(report.get("torch_version", "")),
        "mlm:memory_size": memory_size,
        "mlm:total_parameters": total_parameters,
        "mlm:pretrained": False,
        "mlm:pretrained_source": None,
        "mlm:batch_size_suggestion": int(config.get("batch_size") or 8),
        # null: "the model does not require any specific accelerator" (MLM): the main asset is
        # ONNX, which ONNX Runtime runs on any CPU.
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": (
            "No accelerator needed: the ONNX model (main asset) runs on CPU with ONNX Runtime's "
            "CPUExecutionProvider, and on NVIDIA GPUs with its CUDAExecutionProvider. The "
            "TorchScript model and the state dict run wherever PyTorch does (CPU or CUDA)."
        ),
        "mlm:input": [mlm_input(prep, resized)],
        "mlm:output": [mlm_output(prep)],
        "mlm:hyperparameters": {**dict(config), "threshold": float(prep.threshold),
                                "class_name": prep.class_name},
    }
