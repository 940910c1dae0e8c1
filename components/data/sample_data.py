"""Seeded synthetic aerial chips with camp masks, for tests, demos and smoke runs.

Each scene has textured ground (multi-scale noise mixing a soil and a grass hue drawn per scene),
crop fields, straight or curving roads (dark asphalt or light dirt), tree canopies with shadows,
and ordinary buildings as *distractors*: larger, irregularly placed and oriented, some aligned
along roads, with roof colours that include every colour camp shelters use, plus a few small
isolated sheds of shelter colours. Camps are the *foreground*: dense, regular, grid-like blocks of
small bright shelters (white, grey, blue tarpaulin) in rows with narrow lanes and wider main lanes,
on trampled ground.

Mask convention: the camp footprint is the shelters dilated by one pixel (8-neighbourhood), so a
narrow lane between two shelters is inside the footprint and a wide main lane is not. Everything
else, distractor buildings included, is background. A colour threshold cannot separate the
classes; the arrangement (small, dense, regular) is what tells camps apart.

Chip ``i`` of a dataset depends only on ``(seed, i)``, so it does not change when ``n_chips`` grows.
Chips with ``i % 4 == 0`` hold no camp, ``i % 4 == 3`` two camps, the rest one camp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Tarpaulin and shelter roof colours (RGB); distractor roofs draw from these too.
SHELTER_COLOURS = np.array(
    [[236, 236, 230], [214, 216, 214], [190, 192, 190], [72, 112, 170], [118, 160, 204]],
    dtype=np.float32,
)
#: Roof colours only ordinary buildings use.
BUILDING_ONLY_COLOURS = np.array(
    [[158, 82, 60], [120, 96, 72], [92, 92, 96], [182, 150, 112]], dtype=np.float32
)
_SOIL = np.array([[168, 140, 104], [190, 162, 124], [150, 118, 86], [200, 180, 150]], np.float32)
_GRASS = np.array([[98, 118, 64], [122, 132, 78], [80, 104, 60], [140, 140, 90]], np.float32)
_FIELD = np.array([[110, 140, 70], [170, 160, 90], [140, 112, 80], [90, 120, 62]], np.float32)
_ROAD = np.array([[84, 84, 86], [200, 186, 160], [176, 170, 160]], np.float32)
_CAMP_GROUND = np.array([[196, 176, 146], [180, 162, 134], [170, 160, 148]], np.float32)


@dataclass(frozen=True)
class Scene:
    """One rendered scene and the layers it was built from.

    Attributes:
        chip: RGB image, ``(H, W, 3)`` uint8.
        mask: Camp footprint, ``(H, W)`` uint8 in {0, 1}.
        shelters: Camp shelter roof pixels, ``(H, W)`` bool.
        buildings: Distractor roof pixels (buildings and sheds), ``(H, W)`` bool.
    """

    chip: np.ndarray
    mask: np.ndarray
    shelters: np.ndarray
    buildings: np.ndarray


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] from a random ``cells x cells`` lattice, smoothstep-interpolated."""
    lattice = rng.random((cells + 1, cells + 1), dtype=np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i0
    f = f * f * (3.0 - 2.0 * f)
    across = lattice[:, i0] * (1 - f) + lattice[:, i0 + 1] * f  # separable: columns, then rows
    return across[i0] * (1 - f)[:, None] + across[i0 + 1] * f[:, None]


def _fractal_noise(
    rng: np.random.Generator, size: int, base_cells: int, octaves: int
) -> np.ndarray:
    """Sum of value-noise octaves (each doubling the frequency, halving the weight), in [0, 1]."""
    total = np.zeros((size, size), np.float32)
    weight_sum = 0.0
    for octave in range(octaves):
        weight = 0.5**octave
        total += weight * _value_noise(rng, size, min(base_cells * 2**octave, size))
        weight_sum += weight
    return total / weight_sum


def _dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary dilation with a square ``(2r+1)^2`` structuring element."""
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        out = grown
    return out


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Mask moved by ``(dy, dx)`` pixels (non-negative), filled with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[dy:, dx:] = mask[: h - dy, : w - dx]
    return out


def _rotated_frame(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates ``(u, v)`` of pixels in a frame centred at ``(cy, cx)`` rotated by ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xx - cx, yy - cy
    return dx * c + dy * s, -dx * s + dy * c


def _box(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, half: tuple[float, float], angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotated rectangle mask and each pixel's side of the ridge (``v > 0``)."""
    u, v = _rotated_frame(yy, xx, cy, cx, angle)
    return (np.abs(u) <= half[1]) & (np.abs(v) <= half[0]), v > 0


def _paint(img: np.ndarray, where: np.ndarray, colour: np.ndarray, alpha: float = 1.0) -> None:
    """Blend ``colour`` (RGB or per-pixel ``(H, W, 3)``) into ``img`` where ``where`` holds."""
    if colour.ndim == 3:
        colour = colour[where]
    img[where] = img[where] * (1 - alpha) + colour * alpha


def _darken(img: np.ndarray, where: np.ndarray, factor: float) -> None:
    """Multiply ``img`` by ``factor`` where ``where`` holds (shadows, verges)."""
    img[where] *= factor


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soil/grass ground with multi-scale texture, hues drawn per scene."""
    soil = _SOIL[rng.integers(len(_SOIL))] + rng.normal(0, 8, 3)
    grass = _GRASS[rng.integers(len(_GRASS))] + rng.normal(0, 8, 3)
    greenness = rng.uniform(0.1, 0.9)
    mix = _fractal_noise(rng, size, 3, 4)
    mix = np.clip((mix - (1 - greenness)) * 4 + 0.5, 0, 1)[..., None]
    texture = _fractal_noise(rng, size, 8, 4)[..., None] - 0.5
    return (soil * (1 - mix) + grass * mix + texture * rng.uniform(30, 60)).astype(np.float32)


def _fields(rng: np.random.Generator, img: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> None:
    """Paint a few rotated crop fields with row stripes."""
    size = img.shape[0]
    for _ in range(rng.integers(0, 4)):
        cy, cx = rng.uniform(0, size, 2)
        half = rng.uniform(0.1, 0.3, 2) * size
        angle = rng.uniform(0, np.pi)
        inside, _ = _box(yy, xx, cy, cx, (half[0], half[1]), angle)
        u, _ = _rotated_frame(yy, xx, cy, cx, angle)
        stripes = np.sin(u * (2 * np.pi / rng.uniform(2.5, 5)))[..., None] * rng.uniform(4, 14)
        colour = _FIELD[rng.integers(len(_FIELD))] + rng.normal(0, 10, 3)
        _paint(img, inside, colour + stripes + (img - img.mean((0, 1))) * 0.5, 0.85)


def _roads(
    rng: np.random.Generator, img: np.ndarray, yy: np.ndarray, xx: np.ndarray
) -> list[tuple[float, float, float, float, float, float, float]]:
    """Paint 0-2 straight or curving roads; return their parameters for roadside buildings."""
    size = img.shape[0]
    roads = []
    for _ in range(rng.choice(3, p=[0.2, 0.5, 0.3])):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        angle = rng.uniform(0, np.pi)
        amp = rng.choice([0.0, rng.uniform(3, 0.12 * size)])
        freq = rng.uniform(0.5, 2.0) * 2 * np.pi / size
        phase = rng.uniform(0, 2 * np.pi)
        width = rng.uniform(2.0, 5.0)
        u, v = _rotated_frame(yy, xx, cy, cx, angle)
        dist = np.abs(v - np.float32(amp) * np.sin(np.float32(freq) * u + np.float32(phase)))
        colour = _ROAD[rng.integers(len(_ROAD))] + rng.normal(0, 6, 3)
        _darken(img, dist <= width / 2 + 1, 0.91)  # worn verge
        _paint(img, dist <= width / 2, colour + (img - img.mean((0, 1))) * 0.2, 0.95)
        roads.append((cy, cx, angle, amp, freq, phase, width))
    return roads


def _trees(rng: np.random.Generator, img: np.ndarray) -> None:
    """Paint clumps and scattered canopies of trees with soft shadows."""
    size = img.shape[0]
    clumps = _fractal_noise(rng, size, 3, 2)
    crowns = _value_noise(rng, size, max(size // 5, 2))
    density = rng.uniform(0.0, 0.5)
    canopy = crowns > 1 - density * (0.3 + clumps)
    canopy &= crowns + clumps * 0.3 > 0.8
    shadow = _shift(canopy, 2, 2) & ~canopy
    _darken(img, shadow, 0.55)
    green = np.array([44, 72, 38], np.float32) + rng.normal(0, 6, 3)
    shade = (crowns[..., None] - 0.8) * 120
    _paint(img, canopy, green + shade)


def _camp(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, exclusion: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Lay out one camp away from ``exclusion``.

    Returns:
        ``(block, shelters, colours)``: the camp's ground block, shelter pixels and a per-pixel
        shelter colour, or None when no placement free of ``exclusion`` was found.
    """
    size = yy.shape[0]
    scale = size / 128
    for _ in range(8):
        shelter_w, shelter_h = rng.integers(3, 6), rng.integers(2, 4)
        lane_u, lane_v = rng.integers(1, 3), rng.integers(1, 3)
        pitch_u, pitch_v = shelter_w + lane_u, shelter_h + lane_v
        n_u = int(rng.integers(5, 15) * scale)
        n_v = int(rng.integers(5, 15) * scale)
        half_u, half_v = n_u * pitch_u / 2, n_v * pitch_v / 2
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        angle = rng.choice([0.0, np.pi / 2]) + rng.uniform(-0.5, 0.5)
        u, v = _rotated_frame(yy, xx, cy, cx, angle)
        u, v = u + half_u, v + half_v
        block = (u >= -1) & (u < 2 * half_u + 1) & (v >= -1) & (v < 2 * half_v + 1)
        if (block & exclusion).any():
            continue
        iu = np.clip(np.floor(u / pitch_u).astype(np.int64), 0, n_u - 1)
        iv = np.clip(np.floor(v / pitch_v).astype(np.int64), 0, n_v - 1)
        keep = rng.random((n_v, n_u)) > rng.uniform(0.02, 0.2)
        main_u, main_v = rng.integers(4, 8), rng.integers(4, 8)
        keep[:, np.arange(n_u) % main_u == main_u - 1] = False  # wider main lanes
        keep[np.arange(n_v) % main_v == main_v - 1, :] = False
        shelters = (
            block
            & (u - iu * pitch_u >= 0) & (u - iu * pitch_u < shelter_w)
            & (v - iv * pitch_v >= 0) & (v - iv * pitch_v < shelter_h)
            & keep[iv, iu]
        )
        palette = SHELTER_COLOURS[rng.permutation(len(SHELTER_COLOURS))[: rng.integers(2, 5)]]
        choice = rng.integers(0, len(palette), (n_v, n_u))
        jitter = rng.normal(0, 8, (n_v, n_u, 3)).astype(np.float32)
        colours = palette[choice][iv, iu] + jitter[iv, iu]
        return block, shelters, colours
    return None


def _buildings(
    rng: np.random.Generator,
    img: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    roads: list[tuple[float, float, float, float, float, float, float]],
    exclusion: np.ndarray,
) -> np.ndarray:
    """Paint distractor buildings (some along roads) and small sheds; return their roof pixels."""
    size = img.shape[0]
    area_scale = (size / 128) ** 2
    roofs = np.zeros((size, size), bool)
    all_colours = np.concatenate([SHELTER_COLOURS, BUILDING_ONLY_COLOURS])
    n_buildings = int(rng.integers(3, 14) * area_scale)
    n_sheds = int(rng.integers(1, 6) * area_scale)
    for k in range(n_buildings + n_sheds):
        shed = k >= n_buildings
        if shed:
            half = (rng.uniform(1.0, 2.0), rng.uniform(1.5, 2.5))
        else:
            half = (rng.uniform(2.5, 6.0), rng.uniform(3.5, 9.0))
        if roads and not shed and rng.random() < 0.5:
            ry, rx, ra, amp, freq, phase, width = roads[rng.integers(len(roads))]
            along = rng.uniform(-0.6, 0.6) * size
            side = rng.choice([-1.0, 1.0])
            across = amp * np.sin(freq * along + phase) + side * (width / 2 + half[0] + 2)
            cx = rx + along * np.cos(ra) - across * np.sin(ra)
            cy = ry + along * np.sin(ra) + across * np.cos(ra)
            angle = ra + rng.normal(0, 0.1)
        else:
            cy, cx = rng.uniform(0, size, 2)
            angle = rng.uniform(0, np.pi)
        reach = int(np.ceil(np.hypot(*half))) + 3  # window around the roof, shadow and margin
        y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, size)
        x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, size)
        if y0 >= y1 or x0 >= x1:
            continue
        win = (slice(y0, y1), slice(x0, x1))
        roof, ridge = _box(yy[win], xx[win], cy, cx, half, angle)
        if not roof.any() or (_dilate(roof, 2) & exclusion[win]).any():
            continue
        colour = (
            SHELTER_COLOURS[rng.integers(len(SHELTER_COLOURS))]
            if rng.random() < 0.6
            else all_colours[rng.integers(len(all_colours))]
        ) + rng.normal(0, 8, 3)
        patch = img[win]  # a view: painting it paints the image
        _darken(patch, _shift(roof, 1, 2) & ~roof, 0.5)
        _paint(patch, roof & ridge, colour * rng.uniform(0.8, 0.95))
        _paint(patch, roof & ~ridge, colour)
        roofs[win] |= roof
    return roofs


def compose_scene(rng: np.random.Generator, size: int, n_camps: int | None = None) -> Scene:
    """Render one scene and keep its layers (shelters, distractor roofs) for inspection.

    Args:
        rng: Source of randomness; the scene is a pure function of its state.
        size: Height and width in pixels (at least 32).
        n_camps: Number of camps to place (0, 1 or 2); drawn from ``rng`` when None. A camp that
            finds no free place is left out.

    Returns:
        The rendered :class:`Scene`.
    """
    if size < 32:
        raise ValueError(f"size={size}: synthetic scenes need at least 32 pixels")
    if n_camps is None:
        n_camps = int(rng.choice(3, p=[0.25, 0.5, 0.25]))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    img = _ground(rng, size)
    _fields(rng, img, yy, xx)
    roads = _roads(rng, img, yy, xx)
    _trees(rng, img)

    occupied = np.zeros((size, size), bool)
    camps = []
    for _ in range(n_camps):
        camp = _camp(rng, yy, xx, _dilate(occupied, 3) if occupied.any() else occupied)
        if camp is not None:
            camps.append(camp)
            occupied |= camp[0]
    buildings = _buildings(rng, img, yy, xx, roads, _dilate(occupied, 2))

    shelters = np.zeros((size, size), bool)
    camp_ground = _CAMP_GROUND[rng.integers(len(_CAMP_GROUND))] + rng.normal(0, 8, 3)
    for block, camp_shelters, colours in camps:
        _paint(img, block, camp_ground + (img - img.mean((0, 1))) * 0.3, 0.85)
        _darken(img, _shift(camp_shelters, 1, 1) & ~camp_shelters, 0.6)
        _paint(img, camp_shelters, colours)
        shelters |= camp_shelters

    light = 1 + (_value_noise(rng, size, 2)[..., None] - 0.5) * 0.15
    img = img * light
    img[1:-1, 1:-1] = img[1:-1, 1:-1] * 0.6 + (
        img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:]
    ) * 0.1
    img += rng.normal(0, 3.0, img.shape)
    chip = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    mask = _dilate(shelters, 1).astype(np.uint8)
    return Scene(chip=chip, mask=mask, shelters=shelters, buildings=buildings & ~shelters)


def render_scene(
    rng: np.random.Generator, size: int, n_camps: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic aerial chip and its camp mask.

    Args:
        rng: Source of randomness; the output is a pure function of its state.
        size: Height and width in pixels (at least 32).
        n_camps: Number of camps (0, 1 or 2); drawn from ``rng`` when None.

    Returns:
        ``(chip, mask)``: ``(size, size, 3)`` uint8 RGB and ``(size, size)`` uint8 in {0, 1},
        1 on the camp footprint (shelters dilated by one pixel).
    """
    scene = compose_scene(rng, size, n_camps)
    return scene.chip, scene.mask


def camps_for_index(index: int) -> int:
    """Number of camps chip ``index`` of a sample dataset gets: 0, 1, 1, 2, repeating."""
    return (0, 1, 1, 2)[index % 4]


def generate_sample_dataset(
    out_dir: Path, n_chips: int = 64, size: int = 128, seed: int = 0
) -> Path:
    """Write a seeded synthetic dataset: ``chips/sample-NNNN.png`` and ``labels/sample-NNNN.png``.

    Chips are RGB uint8 PNGs; labels are single-band ('L') PNGs with 0 (background) and
    255 (camp). Chip ``i`` depends only on ``(seed, i)``.

    Args:
        out_dir: Folder to write into (created if missing).
        n_chips: Number of chip/label pairs.
        size: Chip height and width in pixels (at least 32).
        seed: Seed; the same seed writes the same bytes.

    Returns:
        ``out_dir``.
    """
    if n_chips < 1:
        raise ValueError(f"n_chips={n_chips}: need at least one chip")
    out_dir = Path(out_dir)
    chips_dir, labels_dir = out_dir / "chips", out_dir / "labels"
    chips_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for index in range(n_chips):
        rng = np.random.default_rng([seed, index])
        chip, mask = render_scene(rng, size, camps_for_index(index))
        name = f"sample-{index:04d}.png"
        Image.fromarray(chip).save(chips_dir / name)
        Image.fromarray(mask * np.uint8(255)).save(labels_dir / name)
    return out_dir


def generate_sample_scene(path: Path, tiles: int = 8, tile: int = 128, seed: int = 1,
                          resolution: float = 0.5) -> Path:
    """Write a georeferenced synthetic scene: ``tiles`` x ``tiles`` rendered chips side by side.

    A north-up RGB GeoTIFF in UTM zone 51N (EPSG:32651) with ``resolution`` m pixels, for trying
    ``predict``; its camp mask goes to ``labels/<name>`` beside it (1 camp, 0 not).
    Tile ``i`` is chip ``i`` of ``generate_sample_dataset(..., size=tile, seed=seed)``.
    """
    import rasterio
    from rasterio.transform import from_origin

    if tiles < 1:
        raise ValueError(f"tiles={tiles}: need at least one")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = tiles * tile
    chip = np.zeros((3, side, side), np.uint8)
    mask = np.zeros((1, side, side), np.uint8)
    for index in range(tiles * tiles):
        rng = np.random.default_rng([seed, index])
        rgb, camp = render_scene(rng, tile, camps_for_index(index))
        r, c = divmod(index, tiles)
        chip[:, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = np.moveaxis(rgb, -1, 0)
        mask[0, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = camp
    profile = dict(driver="GTiff", width=side, height=side, crs="EPSG:32651", tiled=True, compress="deflate",
                   transform=from_origin(500_000.0, 1_550_000.0, resolution, resolution))
    with rasterio.open(path, "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(chip)
    (path.parent / "labels").mkdir(exist_ok=True)
    with rasterio.open(path.parent / "labels" / path.name, "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(mask)
    return path
