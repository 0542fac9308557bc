"""Direct window reads of an opened scene, the same values as its dask graph, much cheaper.

An opened scene is a dask graph: read a 1024 px chunk, mask nodata, scale, offset. That
graph is what lets any worker compute any part lazily, but two hot reads pay for it:

* a tile computed through the graph decodes and converts every chunk it touches, whole,
  so the 4 chunks under a 512 px tile cost 16 tile-sized decodes and float conversions,
  and each ``compute`` call adds graph overhead;
* a strided sample (``[:, ::step, ::step]``, for scene statistics) converts every pixel
  of every chunk to float before the stride keeps one pixel in ``step**2``.

When a scene is a per-pixel recipe over plain raster files (GeoTIFF, COG, VRT: no warp,
no JPEG 2000), :func:`pipeline.scene.open_scene` records that recipe here, keyed by the
name of the dask array. :func:`read_window` then reads exactly the window through the
block reader (GDAL decodes only the file blocks it covers, and driver errors stay
fatal), and :func:`strided_sample` decodes the scene once in windows aligned with the
file's blocks and converts only the kept pixels. Both apply the very numpy operations the
graph applies (mask, ``* scale``, ``+ offset`` in float32), so the values are identical
bit for bit; anything without a recipe (Zarr, netCDF, warped or JPEG 2000 bands, a band
subset) goes through the graph as before.

The native strided sample of each file is kept (:mod:`pipeline.samples`, a few MB each)
because a job asks for the same sample several times: the per-scene percentile scale, the
validity check, the extractor's scene threshold and the quicklook read it once together
(and ``spex extract`` may have read it already, during its imports).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from rasterio.windows import Window

from pipeline import samples
from pipeline.memory import release_free_memory
from pipeline.scene.reader import RasterBlockSource, _read_window

#: Recipes remembered (one per opened scene and its masked DN array).
RECIPES_KEPT = 64
#: Threads decoding the windows of a strided read (one per core of the 2-core machines
#: this runs on; each holds one window).
READERS = min(2, os.cpu_count() or 1)

MaskFn = Callable[[np.ndarray, tuple[tuple[float, ...], ...]], np.ndarray]


@dataclass(frozen=True)
class PixelRecipe:
    """How a scene's pixels follow from its files, pixel by pixel.

    ``sources`` are read in order and their bands concatenated; ``keep`` selects bands
    (None: all); ``mask`` turns native values into float32 with NaN at ``nodata``; then
    ``* scales + offsets`` (float32) where given. ``block`` is the files' block shape
    (rows, cols), so that strided reads decode each block once.
    """

    sources: tuple[RasterBlockSource, ...]
    height: int
    width: int
    block: tuple[int, int]
    nodata: tuple[tuple[float, ...], ...]
    mask: MaskFn
    keep: tuple[int, ...] | None = None
    scales: tuple[float, ...] | None = None
    offsets: tuple[float, ...] | None = None

    def scaled(self, scales: Any, offsets: Any) -> PixelRecipe:
        """The same recipe followed by ``* scales + offsets`` (one per kept band)."""
        return replace(
            self,
            scales=tuple(float(s) for s in np.asarray(scales, np.float32).ravel()),
            offsets=tuple(float(o) for o in np.asarray(offsets, np.float32).ravel()),
        )

    def raw(self, window: Window) -> np.ndarray:
        """Native values of the kept bands in ``window`` (driver errors raise)."""
        parts = [_read_window(s, window) for s in self.sources]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return block if self.keep is None else block[list(self.keep)]

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """Native values -> the scene's float32 values (the graph's operations)."""
        out = self.mask(raw, self.nodata)
        if self.scales is None or self.offsets is None:
            return out
        # in place, but the same float32 multiply then add as the graph's out * sc + of
        out *= np.asarray(self.scales, np.float32)[:, None, None]
        out += np.asarray(self.offsets, np.float32)[:, None, None]
        return out


_recipes: OrderedDict[str, PixelRecipe] = OrderedDict()
_lock = threading.Lock()


def register(array: Any, recipe: PixelRecipe) -> None:
    """Remember that the dask array ``array`` computes ``recipe``."""
    with _lock:
        _recipes[array.name] = recipe
        _recipes.move_to_end(array.name)
        while len(_recipes) > RECIPES_KEPT:
            _recipes.popitem(last=False)


def recipe_of(array: Any) -> PixelRecipe | None:
    """The recipe of a scene (DataArray) or dask array, or None (read through dask)."""
    data = getattr(array, "data", array)
    name = getattr(data, "name", None)
    if not isinstance(name, str):
        return None
    with _lock:
        return _recipes.get(name)


def read_window(scene: Any, rows: slice, cols: slice) -> np.ndarray:
    """float32 (band, rows, cols) of a scene; direct when it has a recipe, else dask."""
    recipe = recipe_of(scene)
    if recipe is None:
        data = getattr(scene, "data", scene)
        values = data[:, rows, cols].compute(scheduler="synchronous")
        return np.asarray(values, dtype=np.float32)
    window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    return recipe.finish(recipe.raw(window))


def _raw_sample(recipe: PixelRecipe, step: int) -> np.ndarray:
    """Native values of the kept bands at rows and columns 0, step, 2 step ...: each
    file's sample from :mod:`pipeline.samples` (kept, or read now: every block, in
    windows aligned with the blocks, by :data:`READERS` threads)."""
    parts = []
    for source in recipe.sources:
        key = samples.file_key(source.path, source.indexes, step)
        found = samples.recall(key)
        if found is None:
            found = _read_sample(recipe, source, step)
            samples.remember(key, found)
        parts.append(found)
    raw = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return raw if recipe.keep is None else raw[list(recipe.keep)]


def _read_sample(recipe: PixelRecipe, source: RasterBlockSource, step: int) -> np.ndarray:
    dtype = np.dtype(source.dtype)
    bands = len(source.indexes)
    windows = samples.block_windows(
        recipe.height, recipe.width, recipe.block, dtype.itemsize, bands
    )

    def read(part: tuple[int, int, int, int]) -> np.ndarray:
        r0, r1, c0, c1 = part
        return _read_window(source, Window(c0, r0, c1 - c0, r1 - r0))

    shape = (bands, recipe.height, recipe.width)
    sample = samples.strided_read(read, windows, shape, dtype, step, threads=READERS)
    assert sample is not None  # not stoppable
    release_free_memory()  # the decoded windows: see pipeline.memory
    return sample


def strided_sample(array: Any, step: int) -> np.ndarray:
    """``array[:, ::step, ::step]`` computed (a scene or dask array of (band, y, x)).

    With a recipe the files are decoded once in block-aligned windows (so a corrupt
    block fails here too) and only the kept pixels are converted; the native sample is
    kept for the next caller. Without one, through dask, one chunk at a time."""
    recipe = recipe_of(array)
    if recipe is None:
        data = getattr(array, "data", array)
        return np.asarray(data[:, ::step, ::step].compute(scheduler="synchronous"))
    return recipe.finish(_raw_sample(recipe, step))
