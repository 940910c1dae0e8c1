"""The STAC item of one prediction: the scene's mask and probability COGs and camp polygons.

Assets carry ``file:size``/``file:checksum``; the item carries the grid in ``proj:*`` fields
(projection extension v2.0.0: ``proj:code`` or ``proj:wkt2``, ``proj:shape``, ``proj:transform``,
``proj:bbox``), the mask's classes (classification extension), a ``derived_from`` link to the
scene and one to the model's STAC-MLM item. It is validated offline before it is written: against
the core and every declared extension schema held locally; when the projection schema is not
held (it is not vendored yet), its fields are checked here for the types the schema requires.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from components.contracts.errors import ValidationFailed
from components.standards.stac_assets import FILE, multihash_sha256
from components.standards.stac_mlm import CLASSIFICATION
from components.standards.stac_validation import STAC_VERSION, available_extensions, validate_item

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOJSON_MEDIA_TYPE = "application/geo+json"


def _asset(path: Path, item_dir: Path, media_type: str, title: str, roles: list[str], **extra: Any) -> dict:
    asset = {"href": os.path.relpath(path, item_dir).replace(os.sep, "/"), "type": media_type, "title": title,
             "roles": roles, **extra}
    asset["file:size"] = path.stat().st_size
    asset["file:checksum"] = multihash_sha256(path)
    return asset


def _proj_fields(crs: Any, transform: Any, width: int, height: int) -> dict:
    from rasterio.transform import array_bounds

    epsg = crs.to_epsg() if hasattr(crs, "to_epsg") else None
    fields: dict[str, Any] = {"proj:code": f"EPSG:{epsg}" if epsg else None}
    if not epsg:
        fields["proj:wkt2"] = crs.to_wkt()
    west, south, east, north = array_bounds(height, width, transform)
    fields.update({"proj:shape": [height, width], "proj:transform": [float(v) for v in list(transform)[:6]],
                   "proj:bbox": [float(west), float(south), float(east), float(north)]})
    return fields


def check_projection_fields(item: Mapping[str, Any]) -> list[str]:
    """The projection v2.0.0 rules for the fields this project writes (item properties)."""
    props, problems = item.get("properties", {}), []
    code = props.get("proj:code")
    if code is not None and not isinstance(code, str):
        problems.append("proj:code must be a string or null")
    if code is None and not isinstance(props.get("proj:wkt2"), str):
        problems.append("proj:wkt2 is required when proj:code is null")
    shape = props.get("proj:shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
        problems.append("proj:shape must be two positive integers [rows, columns]")
    transform = props.get("proj:transform")
    if not (isinstance(transform, list) and len(transform) in (6, 9)
            and all(isinstance(v, (int, float)) for v in transform)):
        problems.append("proj:transform must be 6 or 9 numbers")
    bbox = props.get("proj:bbox")
    if not (isinstance(bbox, list) and len(bbox) in (4, 6) and all(isinstance(v, (int, float)) for v in bbox)):
        problems.append("proj:bbox must be 4 or 6 numbers")
    return problems


def validate_prediction_item(item: Mapping[str, Any]) -> None:
    """Validate offline (see the module's docstring); raise ValidationFailed with every problem."""
    if PROJECTION in available_extensions():
        validate_item(item)
        return
    validate_item({**item, "stac_extensions": [u for u in item["stac_extensions"] if u != PROJECTION]})
    problems = check_projection_fields(item)
    if problems:
        raise ValidationFailed(f"STAC item {item.get('id')!r} is invalid: " + "; ".join(problems))


def build_prediction_item(scene_id: str, scene_href: str, grid: Any, footprint: tuple[float, float, float, float],
                          outputs: Mapping[str, Path], item_path: Path, model_item_href: str | None,
                          properties: Mapping[str, Any]) -> dict:
    """The item (not validated, not written) for one scene's outputs.

    Args:
        scene_id: the item id's stem (the scene's file stem).
        scene_href: where the scene is (path or URI) for the ``derived_from`` link.
        grid: the outputs' grid (``crs``, ``transform``, ``width``, ``height``).
        footprint: the grid's (west, south, east, north) in EPSG:4326.
        outputs: ``mask``, ``probability`` and ``polygons`` paths.
        item_path: where the item will be written (asset hrefs are relative to its folder).
        model_item_href: the model's STAC-MLM item, when there is one.
        properties: extra ``camp:*`` properties (threshold, areas, counts).
    """
    w, s, e, n = footprint
    item_dir = item_path.parent
    now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    mask_classes = {"classification:classes": [
        {"value": 0, "name": "background", "description": "not a camp"},
        {"value": 1, "name": "camp", "description": "refugee or IDP camp"},
        {"value": 255, "name": "nodata", "description": "no data in the scene", "nodata": True}]}
    assets = {
        "mask": _asset(outputs["mask"], item_dir, COG_MEDIA_TYPE, "Camp mask (1 camp, 0 background, 255 no data)",
                       ["data"], **mask_classes),
        "probability": _asset(outputs["probability"], item_dir, COG_MEDIA_TYPE,
                              "Camp probability x 254 (255 no data)", ["data"]),
        "polygons": _asset(outputs["polygons"], item_dir, GEOJSON_MEDIA_TYPE,
                           "Camp polygons (EPSG:4326) with area_m2 and mean_probability", ["data"]),
    }
    links = [{"rel": "derived_from", "href": scene_href, "type": COG_MEDIA_TYPE, "title": "the scene"}]
    if model_item_href:
        links.append({"rel": "derived_from", "href": model_item_href, "type": GEOJSON_MEDIA_TYPE,
                      "title": "the model (STAC-MLM item)"})
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [FILE, PROJECTION, CLASSIFICATION],
        "id": f"{scene_id}-camps",
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n],
        "properties": {"datetime": now, "created": now, **_proj_fields(grid.crs, grid.transform, grid.width,
                                                                         grid.height), **properties},
        "links": links,
        "assets": assets,
    }
