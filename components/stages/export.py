"""Export stage: state dict, TorchScript and ONNX of the inference model, parity-checked.

Every artifact holds :class:`~components.ml.networks.InferenceModel` (network + sigmoid), so each one
outputs probabilities in [0, 1] of shape (N, 1, H, W). The files appear only after ONNX Runtime and
TorchScript agree with eager PyTorch on real chips within the tolerance.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from components.contracts.errors import ParityError
from components.contracts.lineage import dependents, file_digest, verify
from components.contracts.ownership import open_output
from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import (
    RunLayout,
    atomic_folder,
    read_json,
    retract,
    update_summary,
    write_json,
)
from components.data.manifest import read_manifest
from components.data.pairs import load_examples
from components.ml.inference import onnx_session
from components.ml.networks import InferenceModel, count_parameters
from components.ml.task import load_network

ONNX_OPSET = 18
PARITY_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "probabilities"
OUTPUT_DOC = "float32 (N, 1, H, W) camp probabilities in [0, 1]; the sigmoid is inside the model"


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export with the torch.export-based exporter, a dynamic batch dimension and one file."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    for name in ("torch.onnx", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    program = torch.onnx.export(
        model,
        (example,),
        dynamic_shapes=({0: batch},),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=ONNX_OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(path))


def _write_and_compare(model: torch.nn.Module, inputs: torch.Tensor, folder: Path, layout: RunLayout,
                       prep: Preprocessing) -> dict[str, float]:
    """Write the three artifacts into ``folder``; the largest difference of each runtime from eager."""
    with torch.no_grad():
        expected = model(inputs).numpy()
        torch.save(model.state_dict(), folder / layout.state_dict.name)
        torch.jit.trace(model, inputs[:1]).save(str(folder / layout.torchscript.name))
        export_onnx(model, inputs[:1], folder / layout.onnx.name)
        torchscript_out = torch.jit.load(str(folder / layout.torchscript.name)).eval()(inputs).numpy()
    onnx_out = onnx_session(folder / layout.onnx.name).run(None, {INPUT_NAME: inputs.numpy()})[0]
    size = prep.image_size
    if expected.shape != (len(inputs), 1, size, size):
        raise ParityError(f"model output shape {expected.shape} is not (N, 1, {size}, {size})")
    return {
        "max_abs_diff_onnx": float(np.abs(onnx_out - expected).max()),
        "max_abs_diff_torchscript": float(np.abs(torchscript_out - expected).max()),
    }


def _report(model: torch.nn.Module, prep: Preprocessing, layout: RunLayout) -> dict:
    """What the export report says about the artifacts' interface and provenance."""
    size = prep.image_size
    return {
        "opset": ONNX_OPSET,
        "input": {"name": INPUT_NAME, "shape": [-1, len(prep.bands), size, size], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": [-1, 1, size, size], "dtype": "float32", "description": OUTPUT_DOC},
        "total_parameters": count_parameters(model),
        "torch_version": torch.__version__,
        "files": {"state_dict": layout.state_dict.name, "torchscript": layout.torchscript.name,
                  "onnx": layout.onnx.name},
    }


def export_models(run_dir: Path, data_dir: Path | None = None, parity_chips: int = 4, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Export the run's best checkpoint and check parity on real chips of the test split.

    Args:
        run_dir: run folder with ``stats.json``, the manifest and ``checkpoints/best.ckpt``.
        data_dir: where the dataset is now (default: where the statistics stage read it).
        parity_chips: how many real chips the parity check runs on.
        tolerance: largest allowed absolute difference of probabilities.

    Returns:
        The export report (also written to ``models/export_report.json``).
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.stats, layout.splits, layout.checkpoint, layout.history, stage="export")
    with open_output(layout.root, "export", create=False):
        return _export(layout, data_dir, parity_chips, tolerance)


def _export(layout: RunLayout, data_dir: Path | None, parity_chips: int, tolerance: float) -> dict:
    digests = verify(layout, ["statistics", "training"])
    prep = Preprocessing.from_stats(read_json(layout.stats))
    model = InferenceModel(load_network(layout.checkpoint)).eval()

    pairs = read_manifest(layout, data_dir)
    chosen = [p for p in pairs if p.split == "test"][:parity_chips] or pairs[:parity_chips]
    raw, _ = load_examples(chosen, prep.image_size)
    inputs = torch.from_numpy(prep.normalize(raw))

    with atomic_folder(layout.models_dir) as staging:
        diffs = _write_and_compare(model, inputs, staging, layout, prep)
        failed = {k: v for k, v in diffs.items() if not v <= tolerance}
        if failed:
            raise ParityError(f"export parity failed (tolerance {tolerance}): {failed}; no model was published")
        files = {p.name: file_digest(staging / p.name) for p in (layout.state_dict, layout.torchscript, layout.onnx)}
        report = {**diffs, **_report(model, prep, layout), "tolerance": tolerance,
                  "parity_chips": [p.stem for p in chosen],
                  "lineage": {"statistics": digests["statistics"], "checkpoint": digests["checkpoint"],
                              "files": files}}
        write_json(staging / layout.export_report.name, report)
        retract(layout, *dependents("models"))  # what the old models made goes before they do
    update_summary(
        layout,
        state_dict=layout.state_dict,
        torchscript=layout.torchscript,
        onnx=layout.onnx,
        export_report=layout.export_report,
    )
    return report
