"""Native-resolution windows: how a model with a fixed input size reads a tile of any size.

Why not resize: a 512 px tile squeezed into a 128 px input loses three quarters of its
resolution, and rivers, roads and single buildings with it. A tile is instead cut into
windows of the model's input size at the scene's own pixel size (the grid of
:func:`pipeline.tiling.plan_tiles`, last window shifted inward, overlapping by
``overlap`` px, at most a quarter of a window), and the window predictions are blended
back with the stitcher's own
raised-cosine weights (:func:`pipeline.stitching.tile_weight`). A tile smaller than one
window is padded (and the padding ignored). The result depends only on the tile, never
on how tiles are batched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.stitching import tile_weight
from pipeline.tiling import Tile, TileGrid, plan_tiles


def plan_windows(height: int, width: int, size: int, overlap: int) -> TileGrid:
    """The windows of a ``height`` x ``width`` tile (one padded window if it is smaller)."""
    return plan_tiles(height, width, size, min(overlap, size // 4), allow_smaller_scene=True)


def crop(a: np.ndarray, window: Tile, size: int, fill: float) -> np.ndarray:
    """``a[..., window]`` padded bottom/right with ``fill`` to ``size`` x ``size``."""
    part = a[..., window.rows, window.cols]
    if part.shape[-2:] == (size, size):
        return np.ascontiguousarray(part)
    out = np.full((*a.shape[:-2], size, size), fill, dtype=a.dtype)
    out[..., : part.shape[-2], : part.shape[-1]] = part
    return out


def blend(grid: TileGrid, values: Sequence[np.ndarray]) -> np.ndarray:
    """(height, width) float32 blend of one (size, size) value map per window."""
    acc = np.zeros(grid.shape, np.float64)
    weights = np.zeros(grid.shape, np.float64)
    for window, value in zip(grid, values, strict=True):
        w = tile_weight(window)
        acc[window.rows, window.cols] += w * value[: window.height, : window.width]
        weights[window.rows, window.cols] += w
    return (acc / np.maximum(weights, 1e-12)).astype(np.float32)


def central_window(grid: TileGrid) -> int:
    """Index of the window nearest the tile's centre (whose description speaks for it)."""
    cy, cx = grid.height / 2, grid.width / 2

    def dist(t: Tile) -> float:
        return (t.row + t.height / 2 - cy) ** 2 + (t.col + t.width / 2 - cx) ** 2

    return min(range(len(grid)), key=lambda i: (dist(grid[i]), i))
