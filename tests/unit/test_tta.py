"""Test-time augmentation by flips (issue 12, item 4): real ONNX models in ONNX Runtime, the mean of
the four flips in evaluation and prediction, recorded in what the stages write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
from onnx import TensorProto, helper, numpy_helper

from components.cli import stages
from components.contracts.config import TrainConfig
from components.contracts.errors import ParameterError
from components.contracts.preprocessing import Preprocessing
from components.data.pairs import find_pairs, load_examples
from components.ml.inference import onnx_session, run_model
from components.ml.metrics import METRIC_NAMES
from components.ml.scoring import onnx_predictor
from components.ml.tta import FLIPS, flip_tta, tta_record, with_tta
from components.ml.windows import predict_array
from components.reporting.html_report import evaluation_html
from components.stages.dlpk import package_dlpk
from components.stages.evaluate import evaluate_run
from components.stages.export import export_models
from components.stages.stac import build_stac_item
from components.stages.stats import compute_statistics
from components.stages.train import train
from components.tracking.registry import compute_test_split_id
from tests.support.datasets import make_dataset
from tests.support.scenes import mosaic, write_scene


def _conv_model(path: Path, kernel: np.ndarray) -> Path:
    """An ONNX model: sigmoid of a 3x3 convolution (zero padding) of 3 bands to 1, any N, H, W."""
    weight = numpy_helper.from_array(np.broadcast_to(kernel, (1, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["logits"], ["probabilities"])],
        "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 1, "H", "W"])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


SYMMETRIC = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 8  # unchanged by any flip
SKEWED = np.array([[0, 0, 3], [0, 1, 0], [-2, 0, 0]], np.float32)  # changed by every flip


def _inputs(n: int = 2, size: int = 16) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 3, size, size + 4)).astype(np.float32)


def test_tta_of_a_flip_equivariant_model_is_the_model(tmp_path):
    session = onnx_session(_conv_model(tmp_path / "sym.onnx", SYMMETRIC))
    model = lambda x: run_model(session, x)  # noqa: E731
    x = _inputs()
    assert np.allclose(flip_tta(model)(x), model(x), atol=1e-6)


def test_tta_of_a_skewed_model_is_the_mean_of_the_four_flipped_back_predictions(tmp_path):
    session = onnx_session(_conv_model(tmp_path / "skew.onnx", SKEWED))
    model = lambda x: run_model(session, x)  # noqa: E731
    x = _inputs()
    plain = model(x)
    by_hand = (plain + model(x[..., ::-1])[..., ::-1] + model(x[..., ::-1, :])[..., ::-1, :]
               + model(x[..., ::-1, ::-1])[..., ::-1, ::-1]) / 4
    averaged = flip_tta(model)(x)
    assert averaged.shape == plain.shape == (2, 16, 20) and averaged.dtype == np.float32
    assert np.abs(averaged - plain).max() > 0.05  # the model is not flip-equivariant
    assert np.allclose(averaged, by_hand, atol=1e-6)


def test_tta_in_sliding_windows_is_applied_per_window_before_blending(tmp_path):
    session = onnx_session(_conv_model(tmp_path / "skew.onnx", SKEWED))
    model = lambda x: run_model(session, x)  # noqa: E731
    scene = _inputs(1, 64)[0]  # (3, 64, 68): 2 x 3 windows of 32 with overlap 0 (the last two share 28 columns)
    valid = np.ones(scene.shape[1:], bool)
    valid[:5, :7] = False  # no data stays no data
    out = predict_array(scene, valid, 32, 0, flip_tta(model), lambda r: r, batch_size=4)
    window = np.where(valid[:32, :32], scene[:, :32, :32], 0)[None]  # the top-left window, no data at 0
    expected = flip_tta(model)(window)[0]
    assert np.allclose(out[:32, :32][valid[:32, :32]], expected[valid[:32, :32]], atol=1e-6)
    assert np.isnan(out[:5, :7]).all() and not np.isnan(out[valid]).any()


def test_tta_must_be_a_boolean():
    with pytest.raises(ParameterError, match="--tta 'yes'"):
        with_tta(lambda x: x, "yes")


def test_the_record_names_the_views_averaged():
    assert tta_record(True) == {"tta": True, "tta_flips": list(FLIPS)}
    assert tta_record(False) == {"tta": False, "tta_flips": ["identity"]}


# ------------------------------------------------------------------------------------------
# The stages: evaluate --tta and predict --tta on a tiny exported run
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny trained and exported run on 32-pixel chips (read-only)."""
    root = tmp_path_factory.mktemp("tta")
    data = make_dataset(root / "data", n_groups=6, per_group=3, size=32)
    run = root / "run"
    compute_statistics(data, run, network_depth=2)
    train(run, TrainConfig(base_channels=4, depth=2, epochs=1, batch_size=4), progress_bar=False)
    export_models(run)
    return run


def _stage(*argv: str) -> None:
    assert stages.main(list(argv)) == 0


def test_evaluate_records_tta_in_metrics_and_report(exported, tmp_path):
    data = exported.parent / "data"
    _stage("evaluate", "--run", str(exported), "--data", str(data), "--out", str(tmp_path / "tta"), "--tta")
    tta = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert (tta["tta"], tta["tta_flips"]) == (True, list(FLIPS))
    assert tta["num_pixels"] == 24 * 32 * 32  # every pixel of every chip, once
    assert "test-time augmentation" in (tmp_path / "tta" / "report.html").read_text()
    plain = {"tta": False, "tta_flips": ["identity"], "split": "all", "num_chips": 1, "num_pixels": 1, "threshold": 0.5,
             **{name: 0.0 for name in METRIC_NAMES}}
    assert "test-time augmentation" not in evaluation_html(plain, tmp_path / "tta")


def test_predict_with_tta_blends_the_mean_of_the_flips(exported, tmp_path):
    prep = Preprocessing.from_stats(json.loads((exported / "stats.json").read_text()))
    chips, _ = load_examples(find_pairs(exported.parent / "data")[:4], prep.image_size, prep.nodata)
    scene = write_scene(tmp_path / "scene.tif", mosaic(list(chips), 2))
    _stage("predict", "--run", str(exported), "--input", str(scene), "--out", str(tmp_path / "plain"),
           "--overlap", "0")
    _stage("predict", "--run", str(exported), "--input", str(scene), "--out", str(tmp_path / "tta"),
           "--overlap", "0", "--tta")
    doc = json.loads((tmp_path / "tta" / "predictions.json").read_text())
    assert doc["parameters"]["tta"] is True and doc["parameters"]["tta_flips"] == list(FLIPS)
    assert json.loads((tmp_path / "plain" / "predictions.json").read_text())["parameters"]["tta"] is False
    item = json.loads((tmp_path / "tta" / "scene_item.json").read_text())
    assert item["properties"]["camp:tta"] is True
    with rasterio.open(tmp_path / "tta" / "scene_probability.tif") as src:
        written = src.read(1).astype(int)
    # With no overlap each window is one chip: its probabilities are the chip's mean over the flips.
    expected = np.rint(mosaic(list(flip_tta(onnx_predictor(exported / "models" / "model.onnx", prep))(chips)), 2)
                       * 254).astype(int)
    assert np.abs(written - expected).max() <= 1 and (written == expected).mean() > 0.99
    with rasterio.open(tmp_path / "plain" / "scene_probability.tif") as src:
        assert not np.array_equal(src.read(1).astype(int), written)  # the flips changed something


def test_a_tta_evaluation_of_the_run_reaches_the_stac_item_and_has_a_test_split_id_of_its_own(exported, tmp_path):
    """Promotion compares scores of one test split id: TTA scores never meet plain ones by tag, and
    the ids of evaluations without TTA are those of before."""
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    before = compute_test_split_id(run)
    evaluate_run(run, overlays=False)
    assert compute_test_split_id(run) == before
    evaluate_run(run, overlays=False, tta=True)
    assert compute_test_split_id(run) != before
    package_dlpk(run)
    item = json.loads(build_stac_item(run).read_text())
    assert item["properties"]["camp:test_metrics"]["tta"] is True
