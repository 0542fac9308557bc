"""A deterministic tile grid over a whole scene.

Why this shape:

* Tiles overlap (``overlap`` px, defaults in :mod:`pipeline.defaults`) so that every
  output pixel can be blended from more than one prediction near tile borders, where
  models see least context.
* The last row and column of tiles are shifted inward so that every tile lies fully
  inside the scene. A tile is therefore never padded with fake data where real data
  exists; the price is a larger overlap between the last two tiles of a row/column,
  which the blending window (``pipeline.stitching``) handles like any other overlap.
* A scene smaller than one tile is an error by default (``SpexInputError``): silently
  shrinking the tile would change what the model sees and is rarely what a user meant.
  ``allow_smaller_scene=True`` (the ``--allow-small-scene`` flag, and always for a
  per-pixel extractor such as the spectral index, whose result does not depend on the
  tile) opts in to a single tile of the scene's size along each dimension that is too
  small: the tile shrinks, nothing is padded.
* The grid is a pure function of ``(height, width, tile, overlap, allow_smaller_scene)``,
  and tiles are numbered row-major, so a tile's ``index`` is a stable id: a resumed job
  that plans the same grid finds the same ids in its store's record of finished tiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.defaults import DEFAULT_OVERLAP, DEFAULT_TILE
from pipeline.errors import SpexInputError


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    ``row``/``col`` are pixel offsets of the tile's top-left corner in the scene;
    ``grid_row``/``grid_col`` its position in the grid. ``overlap_top`` etc. are the
    number of pixels this tile shares with its neighbour on that side (0 at the scene's
    outer edges), which is exactly where the blending window ramps.
    """

    index: int
    grid_row: int
    grid_col: int
    row: int
    col: int
    height: int
    width: int
    overlap_top: int
    overlap_bottom: int
    overlap_left: int
    overlap_right: int

    @property
    def rows(self) -> slice:
        """Scene row slice covered by the tile."""
        return slice(self.row, self.row + self.height)

    @property
    def cols(self) -> slice:
        """Scene column slice covered by the tile."""
        return slice(self.col, self.col + self.width)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)``, ready to index a (..., y, x) array."""
        return self.rows, self.cols

    @property
    def key(self) -> str:
        """Human-readable stable id, e.g. ``000012_y448_x896`` (used in resume records)."""
        return f"{self.index:06d}_y{self.row}_x{self.col}"


def _axis_offsets(size: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets along one axis; the last one shifted inward to ``size - tile``."""
    if size <= tile:
        return [0]
    offsets = list(range(0, size - tile, stride))
    offsets.append(size - tile)
    return offsets


def _axis_overlaps(offsets: list[int], tile: int) -> list[tuple[int, int]]:
    """(before, after) overlap in pixels of each tile with its neighbours on one axis."""
    out = []
    for k, off in enumerate(offsets):
        before = offsets[k - 1] + tile - off if k > 0 else 0
        after = off + tile - offsets[k + 1] if k + 1 < len(offsets) else 0
        out.append((max(before, 0), max(after, 0)))
    return out


@dataclass(frozen=True)
class TileGrid:
    """All tiles over a ``height`` x ``width`` scene, numbered row-major."""

    height: int
    width: int
    tile: int
    overlap: int
    allow_smaller_scene: bool
    tile_height: int
    tile_width: int
    row_offsets: tuple[int, ...]
    col_offsets: tuple[int, ...]
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def __getitem__(self, index: int) -> Tile:
        return self.tiles[index]

    @property
    def shape(self) -> tuple[int, int]:
        """Scene shape ``(height, width)``."""
        return self.height, self.width

    @property
    def n_rows(self) -> int:
        return len(self.row_offsets)

    @property
    def n_cols(self) -> int:
        return len(self.col_offsets)

    def batches(self, n: int, skip: Iterable[int] = ()) -> list[tuple[Tile, ...]]:
        """Group tiles (in index order) into batches of at most ``n``.

        ``skip`` holds tile indices to leave out, typically ``store.finished()`` on
        resume, so a rerun only schedules the missing work.
        """
        if n < 1:
            raise ValueError(f"batch size must be >= 1, got {n}")
        skipped = set(skip)
        todo = [t for t in self.tiles if t.index not in skipped]
        return [tuple(todo[i : i + n]) for i in range(0, len(todo), n)]

    def intersecting(self, rows: slice, cols: slice) -> list[Tile]:
        """Tiles overlapping the scene window ``rows`` x ``cols``, in index order."""
        r_idx = [
            k
            for k, o in enumerate(self.row_offsets)
            if o < rows.stop and o + self.tile_height > rows.start
        ]
        c_idx = [
            k
            for k, o in enumerate(self.col_offsets)
            if o < cols.stop and o + self.tile_width > cols.start
        ]
        return [self.tiles[r * self.n_cols + c] for r in r_idx for c in c_idx]

    def describe(self) -> dict[str, Any]:
        """The parameters that fully determine the grid (for store attributes)."""
        return {
            "height": self.height,
            "width": self.width,
            "tile": self.tile,
            "overlap": self.overlap,
            "allow_smaller_scene": self.allow_smaller_scene,
        }

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> TileGrid:
        """Rebuild a grid from :meth:`describe` output."""
        return plan_tiles(
            int(desc["height"]),
            int(desc["width"]),
            tile=int(desc["tile"]),
            overlap=int(desc["overlap"]),
            allow_smaller_scene=bool(desc["allow_smaller_scene"]),
        )


def plan_tiles(
    height: int,
    width: int,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    *,
    allow_smaller_scene: bool = False,
) -> TileGrid:
    """Plan the tile grid over a ``height`` x ``width`` scene.

    stride = ``tile - overlap``; the last tile of each row/column is shifted inward so
    it ends exactly at the scene edge. Raises :class:`SpexInputError` for a scene smaller
    than one tile unless ``allow_smaller_scene`` (then tiles take the scene's size along
    that dimension).
    """
    if height < 1 or width < 1:
        raise SpexInputError(f"scene has no pixels (height={height}, width={width})")
    if tile < 1:
        raise SpexInputError(f"--tile must be >= 1 px, got {tile}")
    if not 0 <= overlap < tile:
        raise SpexInputError(f"--overlap must be in [0, --tile {tile}), got {overlap}")
    if (height < tile or width < tile) and not allow_smaller_scene:
        raise SpexInputError(
            f"scene is {height}x{width} px, smaller than one {tile}x{tile} px tile; "
            f"pass --tile {min(height, width)} (or smaller), or --allow-small-scene to run "
            "it as one tile of the scene's size"
        )
    tile_h, tile_w = min(tile, height), min(tile, width)
    stride = tile - overlap
    row_offsets = _axis_offsets(height, tile_h, stride)
    col_offsets = _axis_offsets(width, tile_w, stride)
    row_ov = _axis_overlaps(row_offsets, tile_h)
    col_ov = _axis_overlaps(col_offsets, tile_w)
    tiles: list[Tile] = []
    for gr, r in enumerate(row_offsets):
        for gc, c in enumerate(col_offsets):
            tiles.append(
                Tile(
                    index=len(tiles),
                    grid_row=gr,
                    grid_col=gc,
                    row=r,
                    col=c,
                    height=tile_h,
                    width=tile_w,
                    overlap_top=row_ov[gr][0],
                    overlap_bottom=row_ov[gr][1],
                    overlap_left=col_ov[gc][0],
                    overlap_right=col_ov[gc][1],
                )
            )
    return TileGrid(
        height=height,
        width=width,
        tile=tile,
        overlap=overlap,
        allow_smaller_scene=allow_smaller_scene,
        tile_height=tile_h,
        tile_width=tile_w,
        row_offsets=tuple(row_offsets),
        col_offsets=tuple(col_offsets),
        tiles=tuple(tiles),
    )
