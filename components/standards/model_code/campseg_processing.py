"""Pre- and post-processing of a campseg segmentation model, standalone (numpy only).

Shipped beside every STAC item (``metadata/campseg_processing.py``, the ``source-code`` asset) and
named by its ``mlm:output`` ``post_processing_function``. The numbers come from the item:
``mlm:input[0].value_scaling`` (per-band ``mean``/``stddev`` on the raw pixel scale) and
``mlm:hyperparameters.threshold``.

    import json, numpy as np, onnxruntime as ort
    from campseg_processing import classify, normalize
    item = json.load(open("stac_item.json"))
    x = normalize(raw_chips, item["properties"]["mlm:input"][0]["value_scaling"])  # (N, C, H, W)
    session = ort.InferenceSession("model.onnx")
    probabilities = session.run(None, {"input": x})[0]
    class_map = classify(probabilities, item["properties"]["mlm:hyperparameters"]["threshold"])
"""

import numpy as np


def normalize(raw, value_scaling):
    """Raw chips (N, C, H, W) or (C, H, W) as stored -> float32 model input, z-scored per band."""
    raw = np.asarray(raw, dtype=np.float32)
    mean = np.array([float(s["mean"]) for s in value_scaling], dtype=np.float32).reshape(-1, 1, 1)
    std = np.array([float(s["stddev"]) for s in value_scaling], dtype=np.float32).reshape(-1, 1, 1)
    return ((raw - mean) / std).astype(np.float32)


def classify(probabilities, threshold):
    """Model output ``probabilities`` (N, 1, H, W) in [0, 1] -> uint8 class map (N, H, W): 1 where
    the probability is >= ``threshold`` (the foreground class), else 0 (background)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 4 and probabilities.shape[1] == 1:
        probabilities = probabilities[:, 0]
    return (probabilities >= float(threshold)).astype(np.uint8)
