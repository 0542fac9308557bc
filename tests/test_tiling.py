"""The tile grid: full coverage, inward-shifted edges, strict small scenes, stable ids."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from pipeline.errors import SpexInputError
from pipeline.tiling import plan_tiles

CASES = [
    (443, 489, 64, 16),  # l7-raleigh with small tiles
    (723, 934, 512, 64),  # a NAIP quarter quad with the defaults
    (1000, 1000, 512, 64),
    (512, 512, 512, 64),  # exactly one tile
    (513, 700, 512, 64),  # one pixel more than a tile: a huge last-tile overlap
    (300, 200, 100, 0),  # no overlap
]


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), CASES)
def test_grid_covers_every_pixel_and_stays_inside(h: int, w: int, tile: int, overlap: int) -> None:
    grid = plan_tiles(h, w, tile, overlap)
    cover = np.zeros((h, w), dtype=np.int32)
    for t in grid:
        assert t.row >= 0 and t.col >= 0
        assert t.row + t.height <= h and t.col + t.width <= w
        assert (t.height, t.width) == (tile, tile)  # never padded, never shrunk
        cover[t.slices] += 1
    assert cover.min() >= 1


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), CASES)
def test_edge_tiles_are_shifted_inward(h: int, w: int, tile: int, overlap: int) -> None:
    grid = plan_tiles(h, w, tile, overlap)
    stride = tile - overlap
    for offsets, size in ((grid.row_offsets, h), (grid.col_offsets, w)):
        assert offsets[0] == 0
        assert offsets[-1] == size - tile
        steps = np.diff(offsets)
        assert (steps[:-1] == stride).all() and (steps > 0).all()


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), CASES)
def test_recorded_overlaps_match_geometry(h: int, w: int, tile: int, overlap: int) -> None:
    grid = plan_tiles(h, w, tile, overlap)
    for t in grid:
        if t.grid_col + 1 < grid.n_cols:
            right = grid[t.index + 1]
            shared = t.col + t.width - right.col
            assert t.overlap_right == right.overlap_left == shared >= overlap
        else:
            assert t.overlap_right == 0
        if t.grid_row + 1 < grid.n_rows:
            below = grid[t.index + grid.n_cols]
            shared = t.row + t.height - below.row
            assert t.overlap_bottom == below.overlap_top == shared >= overlap
        else:
            assert t.overlap_bottom == 0
        if t.grid_row == 0:
            assert t.overlap_top == 0
        if t.grid_col == 0:
            assert t.overlap_left == 0


def test_real_scene_shape(shared_data) -> None:
    path = next((shared_data / "naip-north-dakota").glob("*.tif"))
    with rasterio.open(path) as src:
        grid = plan_tiles(src.height, src.width)
    assert grid.shape == (723, 934)
    assert (grid.n_rows, grid.n_cols) == (2, 2)
    assert grid[3].row == 723 - 512 and grid[3].col == 934 - 512


def test_scene_smaller_than_a_tile_is_a_clear_error() -> None:
    with pytest.raises(SpexInputError, match=r"300x200 px, smaller than one 512x512 px tile"):
        plan_tiles(300, 200)
    with pytest.raises(SpexInputError, match="smaller than one"):
        plan_tiles(1000, 200)


def test_smaller_scene_allowed_explicitly_gives_one_tile_of_scene_size() -> None:
    grid = plan_tiles(300, 1000, 512, 64, allow_smaller_scene=True)
    assert (grid.tile_height, grid.tile_width) == (300, 512)
    assert grid.n_rows == 1 and grid.col_offsets == (0, 448, 488)
    assert all(t.overlap_top == t.overlap_bottom == 0 for t in grid)


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (64, 64), (64, -1), (64, 100)])
def test_bad_tile_settings(tile: int, overlap: int) -> None:
    with pytest.raises(SpexInputError):
        plan_tiles(1000, 1000, tile, overlap)


def test_empty_scene_rejected() -> None:
    with pytest.raises(SpexInputError, match="no pixels"):
        plan_tiles(0, 10, allow_smaller_scene=True)


def test_ids_are_stable_and_unique() -> None:
    a, b = plan_tiles(2000, 1500), plan_tiles(2000, 1500)
    assert a == b
    assert [t.index for t in a] == list(range(len(a)))
    assert len({t.key for t in a}) == len(a)
    assert a[5].key == f"000005_y{a[5].row}_x{a[5].col}"


def test_batches_group_in_order_and_skip_finished() -> None:
    grid = plan_tiles(443, 489, 64, 16)
    batches = grid.batches(8)
    assert [t.index for b in batches for t in b] == list(range(len(grid)))
    assert all(len(b) == 8 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 8
    rest = grid.batches(8, skip=range(0, len(grid), 2))
    assert [t.index for b in rest for t in b] == list(range(1, len(grid), 2))
    with pytest.raises(ValueError):
        grid.batches(0)


def test_intersecting_returns_covering_tiles_in_index_order() -> None:
    grid = plan_tiles(443, 489, 64, 16)
    rows, cols = slice(100, 150), slice(200, 230)
    hits = grid.intersecting(rows, cols)
    expected = [
        t
        for t in grid
        if t.row < rows.stop
        and t.row + t.height > rows.start
        and t.col < cols.stop
        and t.col + t.width > cols.start
    ]
    assert hits == expected
