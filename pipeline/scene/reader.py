"""Lazy, windowed raster reads that fail loudly.

Each dask block opens the file, reads its window and closes it again, so a scene is a
picklable graph that any worker can compute. Two GDAL behaviours make a plain
``rioxarray.open_rasterio`` unsafe for a batch pipeline, and this reader exists for them:

* multi-threaded JPEG 2000 decoding (``GDAL_NUM_THREADS`` > 1) reports a truncated
  codestream ("Stream too short") from a worker thread, where rasterio cannot see it, and
  hands back zeros as if they were pixels. Blocks are therefore decoded with one GDAL
  thread, so any driver error surfaces as an exception;
* driver errors (a truncated JP2, a COG whose last tiles are cut off, a missing file)
  become :class:`SceneReadError` naming the file and the window, never a silently wrong
  tile. Callers record a tile as done only after its read succeeded.

Blocks that need another grid (Sentinel-2 20/60 m bands onto 10 m) read through a GDAL
warped VRT built per block; the VRT reads only the source window it needs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from dask.base import tokenize
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.errors import SceneReadError

RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear}

#: GDAL options for every block read: single-threaded decoding (see the module docstring).
READ_OPTIONS = {"GDAL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Grid:
    """An output pixel grid: CRS (WKT), affine transform and size."""

    crs_wkt: str
    transform: tuple[float, ...]
    width: int
    height: int

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])


@dataclass(frozen=True)
class RasterBlockSource:
    """What one lazy array reads: bands of one file, optionally warped onto ``warp_to``."""

    path: str
    indexes: tuple[int, ...]  # 1-based band numbers in the file
    dtype: str
    warp_to: Grid | None = None
    resampling: str = "nearest"


def _read_window(source: RasterBlockSource, window: Window) -> np.ndarray:
    where = (
        f"{source.path} (rows {int(window.row_off)}..{int(window.row_off + window.height)}, "
        f"cols {int(window.col_off)}..{int(window.col_off + window.width)})"
    )
    try:
        with rasterio.Env(**READ_OPTIONS), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(source.path) as src:
                if source.warp_to is None:
                    return src.read(list(source.indexes), window=window)
                grid = source.warp_to
                with WarpedVRT(
                    src,
                    crs=grid.crs_wkt,
                    transform=grid.affine,
                    width=grid.width,
                    height=grid.height,
                    resampling=RESAMPLING[source.resampling],
                ) as vrt:
                    return vrt.read(list(source.indexes), window=window)
    except (RasterioError, OSError) as exc:
        cause = exc.__cause__ or exc
        raise SceneReadError(f"cannot read {where}: {cause}") from exc


def _block(source: RasterBlockSource, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
    out = _read_window(source, Window(c0, r0, c1 - c0, r1 - r0))
    return out.astype(source.dtype, copy=False)


def lazy_raster(source: RasterBlockSource, height: int, width: int, chunks: int) -> da.Array:
    """A (band, y, x) dask array whose blocks read ``source`` window by window."""
    n = len(source.indexes)
    ychunks = tuple(min(chunks, height - i) for i in range(0, height, chunks))
    xchunks = tuple(min(chunks, width - i) for i in range(0, width, chunks))
    return da.map_blocks(
        _block,
        source,
        chunks=((n,), ychunks, xchunks),
        dtype=np.dtype(source.dtype),
        meta=np.empty((0, 0, 0), dtype=source.dtype),
        name=f"read-raster-{tokenize(source, height, width, chunks)}",
    )


def as_scene_array(data: da.Array, grid: Grid) -> xr.DataArray:
    """Wrap a (band, y, x) dask array with pixel-centre coordinates, CRS and transform."""
    t = grid.affine
    xs = t.c + t.a * (np.arange(grid.width) + 0.5)
    ys = t.f + t.e * (np.arange(grid.height) + 0.5)
    arr = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": np.arange(data.shape[0]), "y": ys, "x": xs},
    )
    return arr.rio.write_crs(grid.crs_wkt).rio.write_transform(t)
