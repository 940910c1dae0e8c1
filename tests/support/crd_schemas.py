"""Validate a custom object against its CRD's ``openAPIV3Schema`` (vendored in components/kubeflow/schemas/).

Strict like ``kubectl --validate=strict``: an object schema that lists its properties rejects
others (the API server would prune them silently, so a misspelt field would be lost). Kubernetes'
own extensions (``x-kubernetes-*``, ``format: int32``) are not checked; the CEL rules that matter
to the job's name are checked by the caller.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parents[2] / "components" / "kubeflow" / "schemas"
CRD_FILES = {"trainjob": "trainer.kubeflow.org_trainjobs.yaml", "pytorchjob": "kubeflow.org_pytorchjobs.yaml"}


def _strict(schema: dict) -> dict:
    if isinstance(schema, dict):
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            if isinstance(value, dict):
                _strict(value)
            elif isinstance(value, list):
                for item in value:
                    _strict(item)
    return schema


@lru_cache(maxsize=None)
def crd(kind: str) -> dict:
    return yaml.safe_load((SCHEMAS / CRD_FILES[kind]).read_text())


@lru_cache(maxsize=None)
def validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    versions = {v["name"]: v for v in crd(kind)["spec"]["versions"]}
    return jsonschema.Draft7Validator(_strict(copy.deepcopy(versions[version]["schema"]["openAPIV3Schema"])))


def errors(kind: str, manifest: dict) -> list[str]:
    """Every schema violation of ``manifest``, as ``path: message``; empty when it validates."""
    version = manifest["apiVersion"].split("/")[-1]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(kind, version).iter_errors(manifest)]
