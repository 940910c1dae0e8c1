"""Compile the pipeline and hand it to a KFP server: a new version, then a run or a schedule."""

import os
from pathlib import Path
from typing import Any, Callable

from kfp import compiler


def compile_package(pipeline_func: Callable, output: Path) -> Path:
    """Write the pipeline YAML that the KFP UI uploads and :func:`submit` sends."""
    compiler.Compiler().compile(pipeline_func, str(output))
    return Path(output)


def check_cron(expression: str) -> str:
    """Accept KFP's 6-field cron (leading seconds); explain a 5-field one."""
    fields = expression.split()
    if len(fields) == 5:
        raise ValueError(
            f"--schedule {expression!r} has 5 fields; KFP's cron has a leading seconds field: "
            f"use '0 {expression}' (for example '0 0 3 * * *' is daily at 03:00)"
        )
    if len(fields) != 6:
        raise ValueError(f"--schedule {expression!r}: expected 6 fields (seconds minutes hours day month weekday)")
    return expression


def kfp_client(host: str | None):
    """A ``kfp.Client``; credentials come from KFP's own environment variables only."""
    import kfp

    credentials = None
    token_path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
    if token_path:
        from kfp.client.set_volume_credentials import (
            ServiceAccountTokenVolumeCredentials,
        )

        credentials = ServiceAccountTokenVolumeCredentials(token_path)
    return kfp.Client(host=host, credentials=credentials)


def submit(client, package: Path, pipeline_name: str, arguments: dict[str, Any], experiment: str,
           version_name: str, schedule: str | None = None, job_name: str | None = None,
           service_account: str | None = None):
    """Upload ``package`` as a new version of the pipeline ``pipeline_name``; start a run or a schedule.

    Args:
        client: a ``kfp.Client`` (:func:`kfp_client`).
        package: the compiled pipeline YAML.
        pipeline_name: the pipeline's name on the server; created on the first submission.
        arguments: the run's parameters.
        experiment: the KFP experiment of the run (created when missing).
        version_name: the name of the new pipeline version.
        schedule: a 6-field cron: a recurring run (enabled, one at a time, no catch-up) instead of a run.
        job_name: the run's name (default: ``<pipeline_name>-<version_name>``).
        service_account: the Kubernetes service account of the run's pods.
    """
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=pipeline_name,
                                          description="Camp segmentation training (campseg)")
        pipeline_id = pipeline.pipeline_id
    version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id)
    exp = client.create_experiment(experiment)
    name = job_name or f"{pipeline_name}-{version_name}"
    if schedule:
        return client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, cron_expression=check_cron(schedule),
            max_concurrency=1, no_catchup=True, enabled=True, params=arguments,
            pipeline_id=pipeline_id, version_id=version.pipeline_version_id, service_account=service_account,
        )
    return client.run_pipeline(experiment_id=exp.experiment_id, job_name=name, params=arguments,
                               pipeline_id=pipeline_id, version_id=version.pipeline_version_id,
                               service_account=service_account)
