"""The CPU image, built with a real Docker engine, and pipeline components run in it.

The image comes from the session fixture ``cpu_image`` (tests/integration/conftest.py,
tests/support/docker_image.py): built once, offline where needed, for these tests and the whole
pipeline's DockerRunner run (test_docker_pipeline.py). ``.ci/run`` starts ``dockerd``.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations as types.
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_image_has_the_project_and_runs_as_non_root(docker_client, cpu_image):
    out = docker_client.containers.run(
        cpu_image,
        ["python", "-c", "import os, components, torch, kfp, mlflow, rasterio, onnxruntime; "
                         "print(os.getuid(), components.__version__, torch.__version__, kfp.__version__)"],
        remove=True, network_disabled=True,
    ).decode().split()
    uid, version, torch_version, kfp_version = out[-4:]
    assert uid != "0"
    import kfp

    import components

    assert version == components.__version__
    assert torch_version.startswith("2.")
    # kfp.local's DockerRunner and the cluster run the image's kfp: keep it the host's version.
    assert kfp_version == kfp.__version__
    # The default command is the project's command line.
    usage = docker_client.containers.run(cpu_image, remove=True, network_disabled=True)
    assert b"python -m components" in usage and b"train" in usage


def test_pipeline_components_run_in_the_image_with_docker_runner(cpu_image, tmp_path, monkeypatch):
    """The pipeline's own fingerprint and statistics components, in the image, via DockerRunner."""
    import json

    from kfp import local

    from components.data.sample_data import generate_sample_dataset
    from components.kubeflow.components import make_components
    from components.kubeflow.steps import dataset_fingerprint
    from components.stages.stats import compute_statistics

    # The image runs as uid 1000 and writes into the bind-mounted pipeline root (same path inside).
    pipeline_root = tmp_path / "pipeline_root"
    pipeline_root.mkdir()
    data = generate_sample_dataset(pipeline_root / "data", n_chips=12, size=64, seed=3)
    for path in [pipeline_root, *pipeline_root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.DockerRunner(), pipeline_root=str(pipeline_root), raise_on_error=True)
    c = make_components(cpu_image)
    start = time.monotonic()
    fingerprint = c.dataset_fingerprint(dataset_uri=str(data)).output
    stats_task = c.dataset_statistics(
        dataset_uri=str(data), fingerprint=fingerprint, image_size=0, architecture="unet", depth=3,
        train_ratio=0.7, val_ratio=0.15, test_ratio=0.15, seed=42, threshold=0.5,
    )
    print(f"two components in DockerRunner: {time.monotonic() - start:.1f} s")
    assert fingerprint == dataset_fingerprint(str(data))
    in_image = json.loads((Path(stats_task.outputs["statistics"].path) / "stats.json").read_text())
    on_host = compute_statistics(data, tmp_path / "host", network_depth=3, dataset_uri=str(data), fingerprint=fingerprint)
    assert in_image == on_host
    assert stats_task.outputs["dataset_metrics"].metadata["chips_train"] == on_host["counts"]["train"]
