"""Overlapping tiles over a frame and their feathered blending.

A network with a finite receptive field sees the same context inside a tile as in the whole
frame, except near tile edges. Tiles therefore overlap, and the overlap is blended with
linear ramps ("feathering") so that no seam shows. Positions are in LR pixels; the HR tile is
the same region times the scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One tile: the LR pixel region ``[y0, y1) x [x0, x1)``."""

    y0: int
    y1: int
    x0: int
    x1: int


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if tile <= 0 or tile >= length:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    # The last tile is aligned to the end, so every tile has the full size.
    starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Square tiles of size ``tile`` covering a ``height x width`` frame.

    Parameters
    ----------
    height, width : int
        Frame size (LR pixels).
    tile : int
        Tile side; 0, or a side not smaller than the frame, gives whole-frame extents.
    overlap : int
        Minimum overlap between neighbouring tiles.

    Returns
    -------
    list of Tile
        Row-major; tiles are ``min(tile, size)`` wide along each axis.
    """
    th = height if tile <= 0 else min(tile, height)
    tw = width if tile <= 0 else min(tile, width)
    return [
        Tile(y, y + th, x, x + tw)
        for y in _starts(height, th, overlap)
        for x in _starts(width, tw, overlap)
    ]


def _ramp(n: int, ramp_before: int, ramp_after: int) -> np.ndarray:
    w = np.ones(n, dtype=np.float32)
    if ramp_before:
        w[:ramp_before] = (np.arange(ramp_before, dtype=np.float32) + 0.5) / ramp_before
    if ramp_after:
        w[n - ramp_after :] = np.minimum(
            w[n - ramp_after :], (np.arange(ramp_after, 0, -1, dtype=np.float32) - 0.5) / ramp_after
        )
    return w


def feather_weights(
    tile: Tile, height: int, width: int, overlap: int, scale: int = 1
) -> np.ndarray:
    """Blend weights of one tile, ramping down over the overlap on sides that have neighbours.

    Sides on the frame border keep weight 1 so that the border is not down-weighted.

    Parameters
    ----------
    tile : Tile
        LR region of the tile.
    height, width : int
        LR frame size.
    overlap : int
        Ramp length in LR pixels.
    scale : int
        Returns weights on the grid ``scale`` times finer (for HR outputs).

    Returns
    -------
    ndarray, shape (scale * tile height, scale * tile width), float32
    """
    r = overlap * scale
    wy = _ramp(
        (tile.y1 - tile.y0) * scale,
        r if tile.y0 > 0 else 0,
        r if tile.y1 < height else 0,
    )
    wx = _ramp(
        (tile.x1 - tile.x0) * scale,
        r if tile.x0 > 0 else 0,
        r if tile.x1 < width else 0,
    )
    return wy[:, None] * wx[None, :]
