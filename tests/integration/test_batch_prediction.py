"""The batch-prediction step against real servers: the registry's champion over scenes in S3, maps back to S3."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import pytest
import rasterio

from components import tracking
from components.contracts.errors import TrackingError
from components.data.sample_data import generate_sample_scene
from components.kubeflow.prediction_steps import run_batch_prediction
from components.stages.predict import predict_scenes
from components.storage import download_prefix, list_objects, upload_file
from tests.support.runs import read_json

pytestmark = pytest.mark.integration


@pytest.fixture
def champion(mlflow_server, trained_run, s3_env, monkeypatch) -> str:
    """A registered model whose champion is the trained run's; its name."""
    from mlflow import MlflowClient

    uri = mlflow_server.tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    name = "campseg-pred-" + secrets.token_hex(4)
    run_id = tracking.start_pipeline_run(uri, "campseg-prediction-tests", f"run-{secrets.token_hex(3)}",
                                         f"kfp-{secrets.token_hex(6)}", read_json(trained_run / "train_config.json"),
                                         None)
    tracking.log_dataset(uri, run_id, read_json(trained_run / "stats.json"))
    tracking.log_run_artifacts(uri, run_id, trained_run)
    version = tracking.register_model(uri, run_id, name, trained_run)
    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(name, "champion", version)
    return name


def test_the_champion_maps_new_scenes_from_s3_to_s3(champion, trained_run, s3_bucket, tmp_path):
    scene = generate_sample_scene(tmp_path / "scenes" / "scene.tif", tiles=3)
    upload_file(scene, f"s3://{s3_bucket}/incoming/scene.tif")
    preview = tmp_path / "preview.html"
    doc = run_batch_prediction(f"s3://{s3_bucket}/incoming/", f"models:/{champion}@champion",
                               f"s3://{s3_bucket}/maps/run-1", preview)
    keys = sorted(o.key for o in list_objects(f"s3://{s3_bucket}/maps/run-1"))
    assert keys == sorted(f"maps/run-1/{n}" for n in ("predictions.json", "scene_item.json", "scene_mask.tif",
                                                       "scene_polygons.geojson", "scene_probability.tif"))
    assert doc["model"]["reference"] == f"models:/{champion}@champion"
    assert doc["scenes"][0]["scene"] == f"s3://{s3_bucket}/incoming/scene.tif"
    assert "data:image/png;base64," in preview.read_text()
    # the registry's model predicts what the run's own model predicts
    local = predict_scenes(trained_run, scene, tmp_path / "local", progress=False)
    assert local["scenes"][0]["pixels"] == doc["scenes"][0]["pixels"]
    fetched = download_prefix(f"s3://{s3_bucket}/maps/run-1", tmp_path / "fetched")
    with rasterio.open(fetched / "scene_mask.tif") as remote, rasterio.open(tmp_path / "local" / "scene_mask.tif") as mine:
        assert np.array_equal(remote.read(1), mine.read(1))
    item = json.loads((fetched / "scene_item.json").read_text())
    assert {"rel": "derived_from", "href": f"s3://{s3_bucket}/incoming/scene.tif"}.items() <= item["links"][0].items()


def test_an_alias_the_registry_lacks_is_refused_by_name(champion, s3_bucket, tmp_path):
    with pytest.raises(TrackingError, match=f"models:/{champion}@nosuch"):
        run_batch_prediction(f"s3://{s3_bucket}/none/", f"models:/{champion}@nosuch", "", tmp_path / "p.html")


def test_output_must_be_an_s3_prefix(tmp_path):
    from components.contracts.errors import ParameterError

    with pytest.raises(ParameterError, match="output_uri"):
        run_batch_prediction(str(tmp_path), str(tmp_path), str(Path("/tmp/out")), tmp_path / "p.html")
