"""The batch-prediction pipeline compiles: its step, parameters, champion default and preview."""

from __future__ import annotations

import pytest
import yaml

from components.contracts.errors import TrackingError
from components.tracking.model_ref import parse_model_uri, resolve_model
from tests.support.cli import error_line, run_pipeline


@pytest.fixture(scope="module")
def predict_yaml(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("predict") / "predict.yaml"
    proc = run_pipeline("--pipeline", "predict", "--compile", "--image", "registry.example/campseg:1.2.3",
                        "--accelerator-count", "0", "--output", str(path))
    assert proc.returncode == 0, proc.stderr
    return list(yaml.safe_load_all(path.read_text()))[0]


def test_the_prediction_pipeline_has_its_step_and_parameters(predict_yaml):
    assert predict_yaml["pipelineInfo"]["name"] == "camp-segmentation-prediction"
    inputs = predict_yaml["root"]["inputDefinitions"]["parameters"]
    assert inputs["model_ref"]["defaultValue"] == "models:/camp-segmentation@champion"
    assert "defaultValue" not in inputs["scene_uri"] and "defaultValue" not in inputs["output_uri"]
    tasks = predict_yaml["root"]["dag"]["tasks"]
    assert list(tasks) == ["predict-scenes"]
    component = predict_yaml["components"][tasks["predict-scenes"]["componentRef"]["name"]]
    assert component["outputDefinitions"]["artifacts"]["preview"]["artifactType"]["schemaTitle"] == "system.HTML"
    image = predict_yaml["deploymentSpec"]["executors"][component["executorLabel"]]["container"]["image"]
    assert image == "registry.example/campseg:1.2.3"


def test_prediction_tta_is_a_parameter_the_step_takes(predict_yaml):
    param = predict_yaml["root"]["inputDefinitions"]["parameters"]["predict_tta"]
    assert param["parameterType"] == "BOOLEAN" and param["defaultValue"] is False and param["description"]
    task = predict_yaml["root"]["dag"]["tasks"]["predict-scenes"]
    assert task["inputs"]["parameters"]["tta"]["componentInputParameter"] == "predict_tta"


def test_submit_without_the_scenes_is_refused():
    proc = run_pipeline("--pipeline", "predict", "--submit", "--host", "http://127.0.0.1:9",
                        "--image", "registry.example/campseg:1", "--accelerator-count", "0")
    error_line(proc, "--submit needs", "--scene-uri", "--output-uri")


def test_an_unknown_pipeline_is_refused():
    proc = run_pipeline("--pipeline", "inference", "--compile")
    error_line(proc, "--pipeline 'inference'", "training", "predict")


@pytest.mark.parametrize("ref,parsed", [("models:/camp-segmentation@champion", ("camp-segmentation", "champion", None)),
                                        ("models:/m/3", ("m", None, "3"))])
def test_model_references_parse(ref, parsed):
    assert parse_model_uri(ref) == parsed


@pytest.mark.parametrize("ref", ["models:/", "models:/name", "models:/a@b/c", "models:/a/latest"])
def test_malformed_model_references_are_refused(ref, tmp_path):
    with pytest.raises(TrackingError, match="models:/NAME@ALIAS"):
        resolve_model(ref, tmp_path / "model")


def test_a_run_folder_reference_is_used_as_is(tmp_path):
    assert resolve_model(str(tmp_path), tmp_path / "unused") == tmp_path
