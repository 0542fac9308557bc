"""Lazy, windowed raster reads that fail loudly.

Each dask block reads its window through the calling thread's own open dataset (opened
on first use), so a scene is a picklable graph of file paths that any worker can compute.
Two GDAL behaviours make a plain ``rioxarray.open_rasterio`` unsafe for a batch pipeline,
and this reader exists for them:

* multi-threaded JPEG 2000 decoding (``GDAL_NUM_THREADS`` > 1) reports a truncated
  codestream ("Stream too short") from a worker thread, where rasterio cannot see it, and
  hands back zeros as if they were pixels. Blocks are therefore decoded with one GDAL
  thread, so any driver error surfaces as an exception;
* driver errors (a truncated JP2, a COG whose last tiles are cut off, a missing file)
  become :class:`SceneReadError` naming the file and the window, never a silently wrong
  tile. Callers record a tile as done only after its read succeeded.

Blocks that need another grid (Sentinel-2 20/60 m bands onto 10 m) read through a GDAL
warped VRT; the VRT reads only the source window it needs. Open datasets are kept per
thread (GDAL handles are not thread-safe) and reused while the file is unchanged.

Neighbouring tiles share the blocks they are cut from, so every tile of a row reads the
same blocks again. That is cheap for GeoTIFF (GDAL's block cache and a fast codec) but not
for JPEG 2000 decoded on one thread or for warped bands: on the Berlin JP2 folder 416
block reads per job instead of 26 made extraction 4.6x slower. Blocks of such sources
(``RasterBlockSource.keep``) are therefore kept in a process-wide LRU of at most
:data:`CACHE_BYTES` (``SPEX_READ_CACHE_MB``, default 32, the order of the 16 MB GDAL cache
set in :mod:`pipeline`), keyed by file identity so a replaced file is read anew; a
failed read is never cached. GeoTIFF blocks stay uncached, so memory on such scenes is
what it was.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
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
    keep: bool = False  # expensive to decode again (JPEG 2000, warped): cache its blocks


#: Open datasets kept per thread (least recently used beyond this are closed).
MAX_OPEN_PER_THREAD = 64
#: Bytes of decoded blocks kept by the process (least recently used beyond are dropped).
CACHE_BYTES = int(os.environ.get("SPEX_READ_CACHE_MB", "32")) * 2**20
_local = threading.local()
_blocks: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
_blocks_lock = threading.Lock()
_blocks_bytes = 0


def _cached_block(key: tuple[Any, ...]) -> np.ndarray | None:
    with _blocks_lock:
        found = _blocks.get(key)
        if found is not None:
            _blocks.move_to_end(key)
        return found


def _keep_block(key: tuple[Any, ...], block: np.ndarray) -> None:
    global _blocks_bytes
    if block.nbytes > CACHE_BYTES:
        return
    block.flags.writeable = False  # shared by every task that reads this block
    with _blocks_lock:
        if key in _blocks:
            return
        _blocks[key] = block
        _blocks_bytes += block.nbytes
        while _blocks_bytes > CACHE_BYTES:
            _, dropped = _blocks.popitem(last=False)
            _blocks_bytes -= dropped.nbytes


def _handles() -> OrderedDict[tuple[Any, ...], tuple[Any, ...]]:
    if not hasattr(_local, "handles"):
        _local.handles = OrderedDict()
    return _local.handles


def _close(handle: tuple[Any, ...]) -> None:
    for obj in reversed(handle):
        if obj is not None:
            obj.close()


def _open_for(source: RasterBlockSource, st: os.stat_result) -> Any:
    """The thread's open dataset (or warped VRT) for ``source``; reopened when the file
    changed (size or modification time, from ``st``), so a replaced file is never read
    stale."""
    key = (source.path, source.warp_to, source.resampling)
    handles = _handles()
    found = handles.get(key)
    if found is not None and found[0] == (st.st_size, st.st_mtime_ns):
        handles.move_to_end(key)
        return found[2] or found[1]
    if found is not None:
        _close(handles.pop(key)[1:])
    src = rasterio.open(source.path)
    vrt = None
    if source.warp_to is not None:
        grid = source.warp_to
        vrt = WarpedVRT(
            src,
            crs=grid.crs_wkt,
            transform=grid.affine,
            width=grid.width,
            height=grid.height,
            resampling=RESAMPLING[source.resampling],
        )
    handles[key] = ((st.st_size, st.st_mtime_ns), src, vrt)
    while len(handles) > MAX_OPEN_PER_THREAD:
        _close(handles.popitem(last=False)[1][1:])
    return vrt or src


def _forget(source: RasterBlockSource) -> None:
    found = _handles().pop((source.path, source.warp_to, source.resampling), None)
    if found is not None:
        _close(found[1:])


def _read_window(source: RasterBlockSource, window: Window) -> np.ndarray:
    where = (
        f"{source.path} (rows {int(window.row_off)}..{int(window.row_off + window.height)}, "
        f"cols {int(window.col_off)}..{int(window.col_off + window.width)})"
    )
    try:
        st = os.stat(source.path)
        key = (source, window.flatten(), st.st_size, st.st_mtime_ns)
        found = _cached_block(key) if source.keep else None
        if found is not None:
            return found
        with rasterio.Env(**READ_OPTIONS), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            block = _open_for(source, st).read(list(source.indexes), window=window)
    except (RasterioError, OSError) as exc:
        _forget(source)
        cause = exc.__cause__ or exc
        raise SceneReadError(f"cannot read {where}: {cause}") from exc
    if source.keep:
        _keep_block(key, block)
    return block


def _block(source: RasterBlockSource, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    assert block_info is not None  # dask's map_blocks always passes it to this function
    (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
    return _read_window(source, Window(c0, r0, c1 - c0, r1 - r0))


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
