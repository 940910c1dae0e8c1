"""Camp polygons traced strip by strip equal those of the whole mask: merged across strips, holes kept."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.features import shapes
from shapely.geometry import shape

from components.data.polygons import PolygonCollector


def _mask() -> np.ndarray:
    mask = np.zeros((60, 50), np.uint8)
    mask[5:40, 5:30] = 1
    mask[12:30, 12:20] = 0  # a hole through several strips
    mask[45:58, 35:48] = 1  # a second camp
    mask[40:45, 5:7] = 1  # a tail that meets the first camp at a strip edge
    mask[0:3, 45:50] = 255  # no data is no camp
    mask[20, 40] = 1
    mask[21, 41] = 1  # touches the pixel above only at a corner: 4-connected, two polygons
    return mask


@pytest.mark.parametrize("strip", [1, 7, 16, 60])
def test_strips_give_the_polygons_of_the_whole_mask(strip):
    mask = _mask()
    collector = PolygonCollector()
    for row in range(0, mask.shape[0], strip):
        collector.add(row, mask[row:row + strip])
    found = sorted(collector.polygons(), key=lambda p: p.bounds)
    whole = sorted((shape(g) for g, _ in shapes(mask, mask=mask == 1, connectivity=4)), key=lambda p: p.bounds)
    assert len(found) == len(whole) == 4
    for mine, truth in zip(found, whole):
        assert mine.is_valid and mine.symmetric_difference(truth).area == pytest.approx(0)
    assert sum(len(p.interiors) for p in found) == 1
    assert sum(p.area for p in found) == int((mask == 1).sum())
