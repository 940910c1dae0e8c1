"""Camp polygons from a mask written strip by strip, as RFC 7946 GeoJSON features in EPSG:4326.

:class:`PolygonCollector` polygonises each strip of the mask (``rasterio.features.shapes``,
4-connected, holes kept) in pixel coordinates and merges the polygons that meet across strip
edges (shapely), so a camp spanning many strips becomes one polygon and no strip needs the whole
mask. :func:`camp_features` simplifies each polygon by about a pixel (topology preserved, holes
kept), maps it to the scene's CRS and then to EPSG:4326 (``rasterio.warp.transform_geom``),
computes its ground area on the WGS 84 ellipsoid (pyproj) and its mean probability from the
probability raster, and drops those below ``min_area_m2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from components.data.scenes import NODATA_OUT, SceneGrid


class PolygonCollector:
    """Polygons (pixel coordinates: x = column, y = row) of the value-1 pixels of a mask, by strips."""

    def __init__(self) -> None:
        self._pending: list = []  # polygons touching the bottom edge of the last strip
        self._done: list = []

    def add(self, row0: int, strip: np.ndarray) -> None:
        """Add rows ``row0 .. row0 + len(strip)`` of the mask (1 = camp, anything else not)."""
        from rasterio.features import shapes
        from rasterio.transform import Affine
        from shapely.geometry import shape
        from shapely.ops import unary_union

        row1 = row0 + strip.shape[0]
        camp = (strip == 1)
        polys = []
        if camp.any():
            polys = [shape(g) for g, _ in shapes(camp.astype(np.uint8), mask=camp, connectivity=4,
                                                 transform=Affine.translation(0, row0))]
        touching = [p for p in polys if p.bounds[1] <= row0]
        inner = [p for p in polys if p.bounds[1] > row0]
        if touching:  # merged with the open polygons of the strip above; the others are closed
            pieces = list(_parts(unary_union(self._pending + touching))) + inner
        else:
            self._done.extend(self._pending)
            pieces = inner
        self._pending = [p for p in pieces if p.bounds[3] >= row1]
        self._done.extend(p for p in pieces if p.bounds[3] < row1)

    def polygons(self) -> list:
        """Every polygon, those still open at the last strip included."""
        return self._done + self._pending


def _parts(geometry) -> Iterator:
    if geometry.is_empty:
        return
    if geometry.geom_type == "Polygon":
        yield geometry
    else:
        for part in getattr(geometry, "geoms", []):
            yield from _parts(part)


def _mean_probability(probability, polygon) -> float | None:
    """Mean camp probability (0-1) of the pixels inside ``polygon`` (pixel coordinates)."""
    from rasterio.features import geometry_mask
    from rasterio.transform import Affine
    from rasterio.windows import Window

    minx, miny, maxx, maxy = polygon.bounds
    x0, y0, x1, y1 = int(np.floor(minx)), int(np.floor(miny)), int(np.ceil(maxx)), int(np.ceil(maxy))
    window = Window(x0, y0, x1 - x0, y1 - y0)
    values = probability.read(1, window=window)
    inside = geometry_mask([polygon], out_shape=values.shape, transform=Affine.translation(x0, y0), invert=True)
    picked = values[inside & (values != NODATA_OUT)]
    return round(float(picked.mean()) / 254.0, 4) if picked.size else None


def camp_features(polygons: list, grid: SceneGrid, probability_path: Path, min_area_m2: float = 0.0,
                  simplify_px: float = 1.0) -> list[dict]:
    """GeoJSON features (EPSG:4326) with ``area_m2`` and ``mean_probability`` for ``polygons``."""
    import rasterio
    from pyproj import Geod
    from rasterio.warp import transform_geom
    from shapely.affinity import affine_transform
    from shapely.geometry import mapping, shape
    from shapely.geometry.polygon import orient

    t = grid.transform
    matrix = [t.a, t.b, t.d, t.e, t.c, t.f]
    geod = Geod(ellps="WGS84")
    features = []
    with rasterio.open(probability_path) as probability:
        for pixel_polygon in sorted(polygons, key=lambda p: (p.bounds[1], p.bounds[0])):
            simple = pixel_polygon.simplify(simplify_px, preserve_topology=True)
            if simple.is_empty:
                continue
            in_crs = affine_transform(simple, matrix)
            lonlat = shape(transform_geom(grid.crs, "EPSG:4326", mapping(in_crs), precision=9))
            area = abs(geod.geometry_area_perimeter(lonlat)[0])
            if area < min_area_m2:
                continue
            geometry = mapping(orient(lonlat, 1.0)) if lonlat.geom_type == "Polygon" else mapping(lonlat)
            features.append({
                "type": "Feature",
                "geometry": geometry,
                "properties": {"area_m2": round(area, 2),
                               "mean_probability": _mean_probability(probability, pixel_polygon)},
            })
    return features


def feature_collection(features: list[dict]) -> dict:
    """An RFC 7946 FeatureCollection (EPSG:4326 longitude/latitude, no ``crs`` member)."""
    from shapely.geometry import shape

    bbox = None
    if features:
        bounds = np.array([shape(f["geometry"]).bounds for f in features])
        bbox = [float(bounds[:, 0].min()), float(bounds[:, 1].min()), float(bounds[:, 2].max()),
                float(bounds[:, 3].max())]
    out: dict = {"type": "FeatureCollection", "features": features}
    if bbox:
        out["bbox"] = bbox
    return out
