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

The raw strided sample of a source is kept (the last :data:`SAMPLES_KEPT`, a few MB each)
because a job asks for the same sample several times: the per-scene percentile scale, the
validity check, the extractor's scene threshold and the quicklook read it once together.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from rasterio.windows import Window

from pipeline.memory import release_free_memory
from pipeline.scene.reader import RasterBlockSource, _read_window

#: Recipes remembered (one per opened scene and its masked DN array).
RECIPES_KEPT = 64
#: Raw strided samples kept per process (each at most ~1 Mpx x bands).
SAMPLES_KEPT = 2
#: Target size of one window of a strided read (file blocks are decoded once each).
WINDOW_PIXELS = 1024 * 1024
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

    def identity(self) -> tuple[Any, ...]:
        """What a kept sample depends on: sources and their files' size and mtime."""
        stats = []
        for s in self.sources:
            st = os.stat(s.path)
            stats.append((st.st_size, st.st_mtime_ns))
        return (self.sources, self.keep, self.height, self.width, tuple(stats))


_recipes: OrderedDict[str, PixelRecipe] = OrderedDict()
_samples: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
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


def _windows(recipe: PixelRecipe, itemsize: int, bands: int) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) windows of about WINDOW_PIXELS, aligned with the blocks.

    Tiled files: whole blocks up to ~1024 px a side. Striped files (a block spans the
    width): whole strips across the full width, as many rows as fit in ~4 MB."""
    h, w = recipe.height, recipe.width
    bh, bw = max(1, recipe.block[0]), max(1, recipe.block[1])
    side = int(math.sqrt(WINDOW_PIXELS))
    if bw >= w:
        rows = max(1, (4 * WINDOW_PIXELS) // max(1, w * itemsize * bands) // bh) * bh
        cols = w
    else:
        rows, cols = max(1, side // bh) * bh, max(1, side // bw) * bw
    return [
        (r, min(h, r + rows), c, min(w, c + cols))
        for r in range(0, h, rows)
        for c in range(0, w, cols)
    ]


def _raw_sample(recipe: PixelRecipe, step: int) -> np.ndarray:
    """Native values at rows and columns 0, step, 2 step ... (every block is read).

    Windows are decoded by :data:`READERS` threads (GDAL decodes without the GIL), each
    with its own open file; the result does not depend on their order."""
    key = (recipe.identity(), step)
    with _lock:
        found = _samples.get(key)
        if found is not None:
            _samples.move_to_end(key)
            return found
    itemsize = max(np.dtype(s.dtype).itemsize for s in recipe.sources)
    bands = sum(len(s.indexes) for s in recipe.sources)
    parts = _windows(recipe, itemsize, bands)
    out = np.empty(
        (len(recipe.keep) if recipe.keep is not None else bands, *_strided_shape(recipe, step)),
        dtype=np.result_type(*(np.dtype(s.dtype) for s in recipe.sources)),
    )

    def take(part: tuple[int, int, int, int]) -> None:
        r0, r1, c0, c1 = part
        block = recipe.raw(Window(c0, r0, c1 - c0, r1 - r0))
        rs, cs = (-r0) % step, (-c0) % step
        picked = block[:, rs::step, cs::step]
        y, x = (r0 + rs) // step, (c0 + cs) // step
        out[:, y : y + picked.shape[1], x : x + picked.shape[2]] = picked

    if len(parts) == 1 or READERS == 1:
        for part in parts:
            take(part)
    else:
        with ThreadPoolExecutor(READERS, thread_name_prefix="spex-sample") as pool:
            list(pool.map(take, parts))  # re-raises the first read error
    release_free_memory()  # the decoded windows: see pipeline.memory
    out.flags.writeable = False  # shared by every caller of this sample
    with _lock:
        _samples[key] = out
        while len(_samples) > SAMPLES_KEPT:
            _samples.popitem(last=False)
    return out


def _strided_shape(recipe: PixelRecipe, step: int) -> tuple[int, int]:
    return -(-recipe.height // step), -(-recipe.width // step)


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


def forget_samples() -> None:
    """Drop the kept samples (tests; memory)."""
    with _lock:
        _samples.clear()
