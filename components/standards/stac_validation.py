"""Offline validation of STAC items against the official JSON schemas.

The core STAC 1.1.0 item schema (and the GeoJSON schemas it references) come from the copies that
pystac ships in ``pystac.validation.jsonschemas``; the extension schemas this project uses are
vendored under ``components/standards/schemas/stac-extensions/<name>/<version>/schema.json``
(package data, copied byte for byte from the official ``https://stac-extensions.github.io/...`` releases), so an
installed package validates without a network. Every ``$ref`` is resolved through a
:class:`referencing.Registry` whose ``retrieve`` function refuses any URI it does not hold: a schema
that is not available locally is a validation failure, never a download.

``CAMPSEG_SCHEMAS_DIR`` may point at another folder with the same ``stac-extensions/...`` layout
(for instance the team's ``shared/schemas``); the vendored copies are the default.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from components.contracts.errors import ValidationFailed

#: Environment variable naming an alternative schema folder (``stac-extensions/<name>/<v>/``).
SCHEMAS_DIR_ENV = "CAMPSEG_SCHEMAS_DIR"
#: Where the vendored extension schemas live inside the package.
VENDORED_SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"

STAC_VERSION = "1.1.0"
CORE_ITEM_SCHEMA = f"https://schemas.stacspec.org/v{STAC_VERSION}/item-spec/json-schema/item.json"
_EXTENSION_URL = re.compile(
    r"^https://stac-extensions\.github\.io/(?P<name>[a-z0-9-]+)/(?P<version>v[0-9][^/]*)/schema\.json$"
)


class SchemaNotAvailable(LookupError):
    """A ``$ref`` or ``stac_extensions`` entry names a schema that is not held locally."""


def schemas_dir() -> Path:
    """The folder holding ``stac-extensions/...``: ``$CAMPSEG_SCHEMAS_DIR`` or the vendored copy."""
    override = os.environ.get(SCHEMAS_DIR_ENV)
    return Path(override) if override else VENDORED_SCHEMAS_DIR


def _core_schemas() -> dict[str, dict]:
    """pystac's bundled STAC core and GeoJSON schemas, keyed by their canonical URL."""
    base = importlib.resources.files("pystac.validation.jsonschemas")
    out: dict[str, dict] = {}
    spec = base.joinpath("stac-spec", f"v{STAC_VERSION}")
    for entry in spec.iterdir():
        if entry.name.endswith(".json"):
            kind = {"catalog.json": "catalog-spec", "collection.json": "collection-spec"}.get(
                entry.name, "item-spec"
            )
            url = f"https://schemas.stacspec.org/v{STAC_VERSION}/{kind}/json-schema/{entry.name}"
            out[url] = json.loads(entry.read_text())
    for name in ("Feature", "Geometry"):
        out[f"https://geojson.org/schema/{name}.json"] = json.loads(
            base.joinpath("geojson", f"{name}.json").read_text()
        )
    return out


def _extension_schemas(folder: Path) -> dict[str, dict]:
    """Every ``stac-extensions/<name>/<version>/schema.json`` under ``folder``, keyed by URL."""
    out: dict[str, dict] = {}
    for path in sorted((folder / "stac-extensions").glob("*/*/schema.json")):
        name, version = path.parent.parent.name, path.parent.name
        out[f"https://stac-extensions.github.io/{name}/{version}/schema.json"] = json.loads(
            path.read_text()
        )
    return out


@lru_cache(maxsize=4)
def _registry_for(folder: str):
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    def retrieve(uri: str):
        raise SchemaNotAvailable(
            f"schema {uri} is not available offline (held: the STAC {STAC_VERSION} core schemas "
            f"and the extension schemas under {folder})"
        )

    schemas = {**_core_schemas(), **_extension_schemas(Path(folder))}
    resources = []
    for url, contents in schemas.items():
        resource = Resource.from_contents(contents, default_specification=DRAFT7)
        resources.append((url, resource))
        # Some official schemas carry an $id that differs from where they are published (for
        # example processing v1.1.0 says v1.0.0, STAC's common.json says "commonjson"); register
        # them under their $id too so that relative references inside them resolve locally.
        declared = str(contents.get("$id", "")).rstrip("#")
        if declared and declared != url:
            resources.append((declared, resource))
    return Registry(retrieve=retrieve).with_resources(resources), schemas


def available_extensions() -> list[str]:
    """The extension schema URLs that :func:`validate_item` can check offline."""
    _, schemas = _registry_for(str(schemas_dir()))
    return sorted(url for url in schemas if _EXTENSION_URL.match(url))


def _messages(errors: Iterable, label: str) -> list[str]:
    out = []
    for error in sorted(errors, key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        details = error.message
        if error.context:  # oneOf/anyOf: say which branches failed and why (shortest first)
            best = sorted(error.context, key=lambda e: len(e.message))[:3]
            details += " [" + "; ".join(
                f"{'/'.join(str(p) for p in e.absolute_path) or '.'}: {e.message}" for e in best
            ) + "]"
        out.append(f"{label} at {where}: {details}")
    return out


def validate_item(item: Mapping[str, Any]) -> None:
    """Validate a STAC item dict against the core item schema and every declared extension.

    Args:
        item: the item as a JSON-compatible dict.

    Raises:
        ValidationFailed: with every schema message (schema, JSON path, message), or when an
            extension in ``stac_extensions`` has no local schema (validation never downloads).
    """
    from jsonschema import Draft7Validator
    from referencing.exceptions import Unresolvable

    registry, schemas = _registry_for(str(schemas_dir()))
    if item.get("type") != "Feature":
        raise ValidationFailed(f"STAC item: type must be 'Feature', got {item.get('type')!r}")
    if item.get("stac_version") != STAC_VERSION:
        raise ValidationFailed(
            f"STAC item: stac_version must be {STAC_VERSION!r}, got {item.get('stac_version')!r}"
        )
    targets = [("STAC core item", CORE_ITEM_SCHEMA)]
    problems: list[str] = []
    for url in item.get("stac_extensions", []) or []:
        if url not in schemas:
            problems.append(
                f"stac_extensions: no local schema for {url} (available offline: "
                + ", ".join(available_extensions())
                + ")"
            )
        else:
            targets.append((url, url))
    for label, url in targets:
        validator = Draft7Validator(schemas[url], registry=registry)
        try:
            problems += _messages(validator.iter_errors(dict(item)), label)
        except Unresolvable as exc:  # a $ref to a schema we do not hold
            problems.append(f"{label}: cannot resolve a reference offline ({exc})")
    if problems:
        raise ValidationFailed(
            f"STAC item {item.get('id')!r} is invalid:\n  " + "\n  ".join(problems)
        )
