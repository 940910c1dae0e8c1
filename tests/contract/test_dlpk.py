"""The DLPK stage, tested as ArcGIS would use the package.

The .dlpk is unzipped and its raster function runs in a fresh Python process that sees only the
unzipped folder and site-packages (never this project's ``components``), through Esri's call
sequence: initialize -> getParameterInfo -> getConfiguration -> updateRasterInfo -> updatePixels.
Its class maps must equal the evaluation path's (``components.inference.predict_class_maps`` on
the ONNX model), apart from pixels whose probability is within 1e-5 of the threshold.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.contracts.errors import RunFolderError
from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import RunLayout, read_json
from components.ml.inference import (
    onnx_session,
    predict_class_maps,
    predict_probabilities,
)
from components.stages.dlpk import package_dlpk
from tests.support.paths import SHARED_DATA

CHIPS_DIR = SHARED_DATA / "chips"
NUM_CHIPS = 4
TOLERANCE = 1e-5


def _chip_paths() -> list[Path]:
    if not CHIPS_DIR.is_dir():
        pytest.skip(f"{CHIPS_DIR} not available")
    paths = sorted(CHIPS_DIR.glob("*.png"))[:NUM_CHIPS]
    if len(paths) < NUM_CHIPS:
        pytest.skip(f"{CHIPS_DIR} holds fewer than {NUM_CHIPS} chips")
    return paths


def load_chips(size: int) -> np.ndarray:
    """Real RGB chips as ArcGIS hands them: uint8 (N, bands, rows, cols), resized to ``size``."""
    chips = []
    for path in _chip_paths():
        image = Image.open(path).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        chips.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    return np.stack(chips)


def _build_run(root: Path, with_onnx: bool = True) -> Path:
    """A small real run folder: stats.json from real chips, TorchScript and ONNX of a U-Net."""
    import torch

    from components.contracts.lineage import file_digest
    from components.ml.networks import InferenceModel, UNet

    raw = np.stack(
        [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1) for p in _chip_paths()]
    )
    size = int(raw.shape[-1])
    scaled = raw.astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = scaled.std(axis=(0, 2, 3))

    from components.contracts.ownership import open_output

    torch.manual_seed(0)
    model = InferenceModel(UNet(base_channels=4, depth=2)).eval()
    layout = RunLayout(root)
    with open_output(root, "test"):  # a new run folder: marked as the project's
        pass
    layout.models_dir.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, size, size)
    # UNet.forward uses reversed() on a list, which torch.jit.script rejects: trace instead (the
    # network is fully convolutional, so the trace serves any batch size).
    torch.jit.trace(model, dummy).save(str(layout.torchscript))
    if with_onnx:
        torch.onnx.export(
            model,
            (dummy,),
            str(layout.onnx),
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            dynamo=False,
        )
    # An untrained network's probabilities sit in a narrow band; a threshold at their median
    # makes both classes occur, so the comparison below is not between two all-zero maps.
    prep0 = Preprocessing(size, ("red", "green", "blue"), tuple(mean), tuple(std), 255.0, 0.5)
    with torch.no_grad():
        probs = model(torch.from_numpy(prep0.normalize(raw))).numpy()
    threshold = float(np.median(probs))
    stats = {
        "dataset_uri": str(CHIPS_DIR.parent),
        "fingerprint": "sha256:test",
        "preprocessing": {
            "image_size": size,
            "bands": ["red", "green", "blue"],
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "max_value": 255.0,
            "threshold": threshold,
            "dtype": "uint8",
            "value_scaling": {"type": "max"},
            "nodata": None,
            "alpha": False,
        },
        "dtype": "uint8",
        "source_sizes": [[size, size]],
        "counts": {"train": NUM_CHIPS, "val": 0, "test": 0},
        "footprint": None,
        "footprint_reason": "test fixture",
    }
    layout.stats.write_text(json.dumps(stats, indent=2))
    # The lineage of the models: built from these statistics (no file digests: tests swap model.pt).
    lineage = {"statistics": file_digest(layout.stats), "checkpoint": None, "files": {}}
    layout.export_report.write_text(json.dumps({"parity_max_abs_diff": 0.0, "lineage": lineage}))
    return root


@pytest.fixture(scope="module")
def run_dir(request, tmp_path_factory) -> Path:
    """The shared ``trained_run`` (stats/train/export/evaluate done) when conftest offers one."""
    try:
        trained = Path(request.getfixturevalue("trained_run"))
    except pytest.FixtureLookupError:
        trained = None
    if trained is not None:
        copy = tmp_path_factory.mktemp("trained_run_copy")
        import shutil

        shutil.copytree(trained, copy, dirs_exist_ok=True)
        (copy / "esri").mkdir(exist_ok=True)
        return copy
    return _build_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def dlpk(run_dir: Path) -> Path:
    return package_dlpk(run_dir)


# The driver runs in a fresh interpreter: isolated mode (no PYTHONPATH, no user site, no script
# folder), sys.path = the unzipped package + the standard library and site-packages.
DRIVER = r"""
import json, os, pickle, sys
package_dir, cases_path, out_path = sys.argv[1:4]
# the unzipped package first; keep the standard library and site-packages, drop any folder that
# would make the project's components importable
sys.path[:] = [package_dir] + [
    p for p in sys.path if p and not os.path.exists(os.path.join(p, "components", "__init__.py"))
]
import numpy as np
from CampSegmenter import CampSegmenter

with open(cases_path, "rb") as f:
    job = pickle.load(f)
results = {}
for name, case in job.items():
    fn = CampSegmenter()
    fn.initialize(model=case["model"])
    params = fn.getParameterInfo()
    scalars = {p["name"]: p.get("value") for p in params if p["name"] not in ("raster", "model")}
    scalars.update(case.get("scalars", {}))
    config = fn.getConfiguration(**scalars)
    info = fn.updateRasterInfo(output_info={"bandCount": 3, "pixelType": "u1"})["output_info"]
    outputs = []
    for block in case["blocks"]:
        blocks = {"raster_pixels": block["pixels"].copy(), "raster_mask": block["mask"]}
        out = fn.updatePixels(None, block["shape"], {"pixelType": "u1"}, **blocks)
        outputs.append(out["output_pixels"])
    results[name] = {"params": params, "config": config, "info": info, "outputs": outputs}
results["_modules"] = sorted(m for m in sys.modules if m == "components" or m.startswith("components."))
with open(out_path, "wb") as f:
    pickle.dump(results, f)
"""


def _run_raster_function(package_dir: Path, cases: dict, tmp: Path) -> dict:
    cases_path, out_path, driver = tmp / "cases.pkl", tmp / "results.pkl", tmp / "driver.py"
    cases_path.write_bytes(pickle.dumps(cases))
    driver.write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, "-I", str(driver), str(package_dir), str(cases_path), str(out_path)],
        cwd=package_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return pickle.loads(out_path.read_bytes())


def _block(pixels: np.ndarray, mask: np.ndarray | None = None, shape=None) -> dict:
    if mask is None:
        mask = np.ones(pixels.shape, dtype=np.uint8)
    rows, cols = pixels.shape[-2:]
    return {"pixels": pixels, "mask": mask, "shape": shape or (1, rows, cols)}


def _assert_maps_equal(got: np.ndarray, want: np.ndarray, probs: np.ndarray, threshold: float) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8
    differ = got != want
    near = np.abs(probs - threshold) <= TOLERANCE
    assert not np.any(differ & ~near), f"{int((differ & ~near).sum())} pixels differ away from the threshold"
    assert differ.sum() <= 10


def test_dlpk_contents_and_emd_match_stats(run_dir: Path, dlpk: Path) -> None:
    layout = RunLayout(run_dir)
    assert dlpk == layout.esri_dir / "camp-segmentation.dlpk"
    assert read_json(layout.summary)["dlpk"] == "esri/camp-segmentation.dlpk"
    with zipfile.ZipFile(dlpk) as archive:
        names = set(archive.namelist())
        assert {"camp-segmentation.emd", "model.pt", "CampSegmenter.py"} <= names
        assert archive.read("model.pt") == layout.torchscript.read_bytes()
        emd = json.loads(archive.read("camp-segmentation.emd"))
    prep = read_json(layout.stats)["preprocessing"]
    assert emd["Framework"] == "PyTorch"
    assert emd["InferenceFunction"] == "CampSegmenter.py"
    assert emd["ModelFile"] == "model.pt"
    assert emd["ModelType"] == "ImageClassification"
    assert emd["ImageHeight"] == emd["ImageWidth"] == prep["image_size"]
    assert emd["ExtractBands"] == list(range(len(prep["bands"])))
    assert emd["DataRange"] == [0, prep["max_value"]]  # uint8: the pixel type's range 0-255
    assert emd["Preprocessing"]["dtype"] == "uint8"  # the raster function refuses other pixel types
    assert emd["Threshold"] == prep["threshold"]
    assert emd["Preprocessing"] == prep
    assert emd["ModelPadding"] == 0 and emd["BatchSize"] >= 1
    assert [(c["Value"], c["Name"]) for c in emd["Classes"]] == [(0, "background"), (1, "camp")]
    assert emd["ModelName"] == "camp-segmentation" and emd["Version"] == "unregistered"
    assert emd["ModelOutput"] == "probabilities"
    norm = emd["NormalizationStats"]
    np.testing.assert_allclose(norm["band_mean_values"], np.multiply(prep["mean"], prep["max_value"]))
    np.testing.assert_allclose(norm["band_std_values"], np.multiply(prep["std"], prep["max_value"]))
    assert norm["scaled_mean_values"] == prep["mean"] and norm["scaled_std_values"] == prep["std"]
    assert norm["band_max_values"] == [prep["max_value"]] * len(prep["bands"])


def test_raster_function_matches_evaluation(run_dir: Path, dlpk: Path, tmp_path: Path) -> None:
    layout = RunLayout(run_dir)
    prep = Preprocessing.from_stats(read_json(layout.stats))
    size = prep.image_size
    chips = load_chips(size)
    session = onnx_session(layout.onnx)
    want = predict_class_maps(session, prep, chips)
    probs = predict_probabilities(session, prep, chips)

    package = tmp_path / "package"
    with zipfile.ZipFile(dlpk) as archive:
        archive.extractall(package)
    emd_path = package / "camp-segmentation.emd"

    masked = np.ones_like(chips[0])
    masked[:, 10:60, 20:90] = 0
    mosaic = np.zeros((3, 2 * size, 2 * size), dtype=np.uint8)
    for i, (y, x) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        mosaic[:, y * size : (y + 1) * size, x * size : (x + 1) * size] = chips[i]
    pad = size // 16
    strict_threshold = float(np.quantile(probs, 0.9))
    single = {"batch_size": 1, "padding": 0}
    cases = {
        "uint8": {"model": str(emd_path), "scalars": single, "blocks": [_block(c) for c in chips]},
        "float32": {
            "model": str(emd_path),
            "scalars": single,
            "blocks": [_block(c.astype(np.float32)) for c in chips],
        },
        "json_string": {"model": emd_path.read_text(), "scalars": single, "blocks": [_block(chips[0])]},
        "masked": {"model": str(emd_path), "scalars": single, "blocks": [_block(chips[0], masked)]},
        "mosaic_batch4": {"model": str(emd_path), "scalars": {"batch_size": 4}, "blocks": [_block(mosaic)]},
        "padded": {
            "model": str(emd_path),
            "scalars": {"batch_size": 1, "padding": pad},
            "blocks": [_block(chips[1], shape=(1, size - 2 * pad, size - 2 * pad))],
        },
        "threshold": {
            "model": str(emd_path),
            "scalars": {**single, "threshold": strict_threshold},
            "blocks": [_block(chips[2])],
        },
    }
    results = _run_raster_function(package, cases, tmp_path)
    assert results["_modules"] == [], "the raster function imported the project's components"

    first = results["uint8"]
    names = [p["name"] for p in first["params"]]
    assert names[:2] == ["raster", "model"]
    assert {"padding", "batch_size", "threshold"} <= set(names)
    defaults = {p["name"]: p.get("value") for p in first["params"]}
    assert defaults["threshold"] == pytest.approx(prep.threshold)
    config = first["config"]
    assert config["extractBands"] == tuple(range(len(prep.bands)))
    assert (config["tx"], config["ty"], config["padding"]) == (size, size, 0)
    assert config["inputMask"] is True
    assert config["dataRange"] == (0, prep.max_value)
    info = first["info"]
    assert (info["bandCount"], info["pixelType"]) == (1, "u1")
    assert info["statistics"][0]["minimum"] == 0.0 and info["statistics"][0]["maximum"] == 1.0
    table = json.loads(info["rasterAttributeTable"])["features"]
    assert [(f["attributes"]["Value"], f["attributes"]["Class"]) for f in table] == [(0, "background"), (1, "camp")]

    for case in ("uint8", "float32"):
        for i, out in enumerate(results[case]["outputs"]):
            assert out.shape == (1, size, size)
            _assert_maps_equal(out[0], want[i], probs[i], prep.threshold)
    if not run_dir.joinpath("training_history.json").exists():  # own fixture: both classes occur
        assert 0 < want.mean() < 1

    json_out = results["json_string"]["outputs"][0][0]
    np.testing.assert_array_equal(json_out, results["uint8"]["outputs"][0][0])

    masked_out = results["masked"]["outputs"][0][0]
    assert not masked_out[10:60, 20:90].any()
    keep = np.ones((size, size), dtype=bool)
    keep[10:60, 20:90] = False
    np.testing.assert_array_equal(masked_out[keep], results["uint8"]["outputs"][0][0][keep])

    batch4 = results["mosaic_batch4"]
    assert (batch4["config"]["tx"], batch4["config"]["ty"]) == (2 * size, 2 * size)
    mosaic_out = batch4["outputs"][0][0]
    for i, (y, x) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        tile = mosaic_out[y * size : (y + 1) * size, x * size : (x + 1) * size]
        _assert_maps_equal(tile, want[i], probs[i], prep.threshold)

    padded = results["padded"]
    assert (padded["config"]["tx"], padded["config"]["padding"]) == (size - 2 * pad, pad)
    inner = slice(pad, size - pad)
    _assert_maps_equal(
        padded["outputs"][0][0], want[1][inner, inner], probs[1][inner, inner], prep.threshold
    )

    strict = results["threshold"]["outputs"][0][0]
    _assert_maps_equal(strict, (probs[2] >= strict_threshold).astype(np.uint8), probs[2], strict_threshold)


def test_raster_function_refuses_other_pixel_types(run_dir: Path, dlpk: Path, tmp_path: Path) -> None:
    """A uint8 model given uint16 or 0-1 float pixels refuses instead of marking everything camp."""
    import importlib.util

    package = tmp_path / "package"
    with zipfile.ZipFile(dlpk) as archive:
        archive.extractall(package)
    spec = importlib.util.spec_from_file_location("CampSegmenter_packaged", package / "CampSegmenter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = module.CampSegmenter()
    fn.initialize(model=str(package / "camp-segmentation.emd"))
    fn.getConfiguration(batch_size=1, padding=0)
    size = int(fn.json_info["ImageHeight"])
    chip = np.random.default_rng(0).integers(0, 255, (3, size, size), dtype=np.uint8)
    for bad in (chip.astype(np.uint16) * 250, chip.astype(np.float32) / 255.0):
        with pytest.raises(Exception, match="trained on uint8"):
            fn.updatePixels(None, (1, size, size), {}, raster_pixels=bad)
    with pytest.raises(Exception, match="uint16"):
        fn.updateRasterInfo(output_info={}, raster_info={"pixelType": "u2"})
    out = fn.updatePixels(None, (1, size, size), {}, raster_pixels=chip)["output_pixels"]
    assert out.shape == (1, size, size) and out.dtype == np.uint8


def test_missing_model_is_named_and_nothing_written(tmp_path: Path) -> None:
    run = _build_run(tmp_path / "run", with_onnx=False)
    layout = RunLayout(run)
    layout.torchscript.unlink()
    with pytest.raises(RunFolderError, match="model.pt"):
        package_dlpk(run)
    assert not layout.esri_dir.exists() or not any(layout.esri_dir.iterdir())
    assert not layout.summary.exists()


@pytest.mark.parametrize(
    "network, message",
    [("two_channels", "output shape"), ("logits", r"outside \[0, 1\]")],
)
def test_model_breaking_the_contract_is_refused(tmp_path: Path, network: str, message: str) -> None:
    import torch

    run = _build_run(tmp_path / "run", with_onnx=False)
    layout = RunLayout(run)
    module = torch.nn.Conv2d(3, 2 if network == "two_channels" else 1, 1)
    with torch.no_grad():
        module.bias.fill_(5.0)
    torch.jit.script(module).save(str(layout.torchscript))
    with pytest.raises(RunFolderError, match=message):
        package_dlpk(run)
    assert not (layout.esri_dir / "camp-segmentation.dlpk").exists()
