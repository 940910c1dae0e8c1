"""Run an exported model on raw chips: the prediction path evaluation uses and consumers mirror."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from components.contracts.errors import ParameterError
from components.contracts.preprocessing import Preprocessing


def onnx_providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime providers for ``device``: CUDA first when asked for and present, CPU always."""
    import onnxruntime as ort

    if device not in ("cpu", "cuda"):
        raise ParameterError(f"--device {device!r}: must be cpu or cuda")
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(onnx_path: Path, threads: int | None = None, device: str = "cpu"):
    """An ONNX Runtime session for ``onnx_path`` on ``device`` (CPU when CUDA is not available)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=onnx_providers(device))


def predict_probabilities(session, prep: Preprocessing, raw_chips: np.ndarray) -> np.ndarray:
    """Probabilities (N, H, W) for raw chips (N, C, H, W) as stored (uint8 0-255 or float)."""
    return run_model(session, prep.normalize(raw_chips))


def run_model(session, inputs: np.ndarray) -> np.ndarray:
    """Probabilities (N, H, W) for normalised model inputs (N, C, H, W) float32."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(inputs, np.float32)})[0][:, 0]


def predict_class_maps(session, prep: Preprocessing, raw_chips: np.ndarray) -> np.ndarray:
    """uint8 class maps (N, H, W): 1 where the camp probability is >= the threshold."""
    return prep.classify(predict_probabilities(session, prep, raw_chips))


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Yield lists of at most ``size`` items."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
