import itertools

import numpy as np
import pytest

from napari_xfusion.tiling import Tile, feather_weights, tile_grid


@pytest.mark.parametrize(
    "size, tile, overlap", [((100, 256), 48, 8), ((64, 64), 32, 8), ((40, 52), 96, 16)]
)
def test_tiles_cover_frame_with_overlap(size, tile, overlap):
    h, w = size
    tiles = tile_grid(h, w, tile, overlap)
    cover = np.zeros(size, int)
    for t in tiles:
        assert t.y1 - t.y0 == min(tile, h) and t.x1 - t.x0 == min(tile, w)
        assert 0 <= t.y0 and t.y1 <= h and 0 <= t.x0 and t.x1 <= w
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert cover.min() >= 1
    # Neighbours overlap by at least `overlap` pixels.
    ys = sorted({t.y0 for t in tiles})
    for a, b in itertools.pairwise(ys):
        assert (a + min(tile, h)) - b >= overlap


def test_whole_frame_when_tile_is_zero():
    assert tile_grid(30, 40, 0, 8) == [Tile(0, 30, 0, 40)]


def test_feather_weights_sum_to_constant_shape_and_borders():
    h, w, tile, overlap, s = 40, 72, 24, 8, 4
    tiles = tile_grid(h, w, tile, overlap)
    total = np.zeros((s * h, s * w))
    for t in tiles:
        wgt = feather_weights(t, h, w, overlap, s)
        assert wgt.shape == (s * (t.y1 - t.y0), s * (t.x1 - t.x0))
        assert wgt.min() > 0
        total[s * t.y0 : s * t.y1, s * t.x0 : s * t.x1] += wgt
    assert total.min() > 0
    # Frame borders are not feathered.
    first = feather_weights(tiles[0], h, w, overlap, s)
    assert first[0, 0] == 1.0
    # Weights ramp down towards an inner neighbour.
    assert first[0, -1] < first[0, 0]
