"""Sliding windows: coverage, blending weights, strip-by-strip assembly, skipped no-data windows."""

from __future__ import annotations

import numpy as np
import pytest

from components.contracts.errors import ParameterError
from components.ml.windows import blend_weights, predict_array, sliding_probabilities, window_starts


def _identity_normalize(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.float32)


def _first_band(inputs: np.ndarray) -> np.ndarray:
    """A 'model' whose probability is its first input band: windows must reassemble the scene."""
    return inputs[:, 0]


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 0), (100, 32, 8), (64, 32, 16), (33, 32, 4), (20, 32, 8)])
def test_windows_cover_the_length_with_the_overlap(length, tile, overlap):
    starts = window_starts(length, tile, overlap)
    covered = np.zeros(max(length, tile), int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered[:length].min() >= 1
    assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_overlap_beyond_half_a_tile_is_refused():
    with pytest.raises(ParameterError, match="--overlap 20"):
        window_starts(100, 32, 20)


def test_weights_ramp_over_the_overlap_and_are_never_zero():
    w = blend_weights(32, 8)
    assert w.min() > 0 and w.max() == 1
    assert w[16, 16] == 1 and w[0, 16] < w[4, 16] < w[8, 16] == 1
    assert np.allclose(w, w.T)
    assert (blend_weights(32, 0) == 1).all()


@pytest.mark.parametrize("overlap", [0, 4, 16])
@pytest.mark.parametrize("shape", [(100, 77), (32, 32), (20, 45)])
def test_a_position_independent_model_reassembles_the_scene(shape, overlap):
    rng = np.random.default_rng(0)
    scene = rng.random((2, *shape)).astype(np.float32)
    out = predict_array(scene, None, 32, overlap, _first_band, _identity_normalize, batch_size=3)
    assert out.shape == shape
    assert np.allclose(out, scene[0], atol=1e-6)


def test_windows_wholly_without_data_are_skipped_and_stay_nodata():
    scene = np.ones((1, 64, 96), np.float32)
    valid = np.ones((64, 96), bool)
    valid[:, 64:] = False  # the last column of 32x32 windows has no data
    calls = []

    def model(inputs):
        calls.append(len(inputs))
        return inputs[:, 0]

    rows = []

    def write(r, probs, ok):
        rows.append((r, probs.copy(), ok.copy()))

    counts = sliding_probabilities(lambda a, b: (scene[:, a:b], valid[a:b]), write, 64, 96, 32, 0, model,
                                   _identity_normalize, batch_size=8)
    assert counts == {"windows": 6, "predicted": 4, "skipped": 2}
    assert sum(calls) == 4
    out = np.concatenate([p for _, p, _ in rows])
    assert np.isnan(out[:, 64:]).all() and (out[:, :64] == 1).all()
    assert [r for r, _, _ in rows] == [0, 32]


def test_a_window_sees_no_data_pixels_as_zero():
    scene = np.full((1, 32, 32), 7, np.float32)
    valid = np.ones((32, 32), bool)
    valid[:4] = False
    seen = []

    def model(inputs):
        seen.append(inputs.copy())
        return np.zeros(inputs.shape[:1] + inputs.shape[2:], np.float32)

    predict_array(scene, valid, 32, 0, model, _identity_normalize)
    assert (seen[0][0, 0, :4] == 0).all() and (seen[0][0, 0, 4:] == 7).all()


def test_strips_are_written_in_order_and_exactly_once():
    scene = np.random.default_rng(1).random((1, 150, 40)).astype(np.float32)
    written = []
    sliding_probabilities(lambda a, b: (scene[:, a:b], np.ones((b - a, 40), bool)),
                          lambda r, p, _v: written.append((r, len(p))), 150, 40, 32, 8, _first_band,
                          _identity_normalize)
    rows = [r for r, _ in written]
    assert rows == sorted(rows) and rows[0] == 0
    assert sum(n for _, n in written) == 150
    assert all(a + n == b for (a, n), (b, _) in zip(written, written[1:]))
