"""Regional mosaics: many per-scene masks -> one mask COG over the area of interest.

Choices, and why:

- **One grid per region**, derived from the AOI: its bounds in the AOI's CRS, at the
  region's resolution (default: the first scene's pixel size). When the first mask is
  already in the AOI's CRS the grid is snapped to that mask's pixel grid, so same-grid
  inputs (the usual case: one tile of one product over time) are copied, not resampled.
  Other inputs are reprojected on the fly (``WarpedVRT``, nearest: masks are classes).
- **Newest observation wins.** Masks are given newest first; a pixel takes the first
  mask that observed it (target or other). Nodata in a newer scene lets an older one
  show through, so clouds or scene edges do not punch holes while any scene saw the
  ground. Pixels no scene covered, and pixels outside the AOI polygon, stay nodata.
- **Bounded memory.** Window by window (``window`` pixels square): one output window plus
  one window per input at a time, whatever the region size. The window loop also counts
  pixels, so areas come for free without rereading the mosaic.
- **Areas in m2** per grid row, measured as the scene report measures them
  (:mod:`pipeline.geodesy`): planar cell area in projected CRSs; in geographic CRSs each
  row's cell is a geodesic polygon on the CRS's ellipsoid (a degree cell shrinks
  towards the poles).
- The result appears atomically (intermediate tiled GeoTIFF, then COG via
  :func:`pipeline.outputs.cog.to_cog` into :func:`pipeline.outputs.atomic.atomic_path`).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from pipeline.errors import OutputError
from pipeline.geodesy import row_cell_areas
from pipeline.mask_codes import MASK_NODATA, MASK_OTHER, MASK_TARGET
from pipeline.outputs.atomic import atomic_path
from pipeline.outputs.cog import GDAL_ENV, to_cog
from pipeline.regions import Aoi

#: Side of the windows the mosaic is computed in (px): memory is one window per input.
WINDOW = 512


@dataclass(frozen=True)
class MosaicGrid:
    """The output pixel grid of a region (north-up)."""

    crs: str
    transform: Affine
    width: int
    height: int


@dataclass(frozen=True)
class SceneMask:
    """One input: a scene's uint8 mask COG (:mod:`pipeline.mask_codes`)."""

    scene: str
    path: Path
    acquired: str | None = None


@dataclass
class MosaicStats:
    """Areas (m2) inside the AOI; per scene as well as for the mosaic."""

    aoi_m2: float = 0.0
    target_m2: float = 0.0
    observed_m2: float = 0.0
    per_scene: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def nodata_m2(self) -> float:
        return self.aoi_m2 - self.observed_m2


@dataclass(frozen=True)
class MosaicResult:
    """The written mosaic, which scenes went into it and its areas."""

    path: Path
    grid: MosaicGrid
    scenes: list[str]
    missing: list[dict[str, str]]
    stats: MosaicStats


def _resolution(reference: Path, crs: CRS) -> tuple[float, float, Affine | None]:
    """Pixel size of ``reference`` in ``crs`` units, and its transform when in ``crs``."""
    with rasterio.open(reference) as src:
        if src.crs is None:
            raise OutputError(f"{reference} has no CRS; cannot place it in the mosaic")
        if CRS.from_user_input(src.crs) == crs:
            return abs(src.transform.a), abs(src.transform.e), src.transform
        transform, _, _ = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds
        )
        return abs(transform.a), abs(transform.e), None


def region_grid(aoi: Aoi, reference: Path, resolution: float | None = None) -> MosaicGrid:
    """The grid covering the AOI's bounds (see module docstring for the snapping)."""
    crs = CRS.from_user_input(aoi.crs)
    rx, ry, ref_transform = _resolution(reference, crs)
    if resolution is not None:
        rx = ry = float(resolution)
        ref_transform = None
    x0, y0, x1, y1 = aoi.bounds
    ox, oy = (ref_transform.c, ref_transform.f) if ref_transform is not None else (0.0, 0.0)
    left = ox + math.floor((x0 - ox) / rx + 1e-9) * rx
    right = ox + math.ceil((x1 - ox) / rx - 1e-9) * rx
    top = oy - math.floor((oy - y1) / ry + 1e-9) * ry
    bottom = oy - math.ceil((oy - y0) / ry - 1e-9) * ry
    width, height = round((right - left) / rx), round((top - bottom) / ry)
    if width < 1 or height < 1:
        raise OutputError(f"area of interest {aoi.bounds} is smaller than one pixel")
    return MosaicGrid(aoi.crs, Affine(rx, 0.0, left, 0.0, -ry, top), width, height)


def row_areas(grid: MosaicGrid, row_start: int, rows: int) -> np.ndarray:
    """Area in m2 of one cell in each of ``rows`` rows of ``grid`` from ``row_start``
    (:func:`pipeline.geodesy.row_cell_areas`, as the scene report measures them)."""
    return row_cell_areas(grid.crs, grid.transform, rows, grid.width, row_start=row_start)[0]


def _windows(grid: MosaicGrid, size: int) -> list[Window]:
    return [
        Window(col, row, min(size, grid.width - col), min(size, grid.height - row))
        for row in range(0, grid.height, size)
        for col in range(0, grid.width, size)
    ]


def mosaic_masks(
    masks: Sequence[SceneMask],
    aoi: Aoi,
    out_path: str | Path,
    *,
    grid: MosaicGrid | None = None,
    resolution: float | None = None,
    missing: Sequence[Mapping[str, str]] = (),
    tags: Mapping[str, str] | None = None,
    window: int = WINDOW,
) -> MosaicResult:
    """Mosaic ``masks`` (newest first) over ``aoi`` into the COG ``out_path``.

    ``missing`` lists scenes that should have been there (``{"scene", "reason"}``); they
    are recorded in the COG's tags so the file itself says what it lacks. With no masks
    at all the mosaic is all nodata (still a valid, honest answer) if ``grid`` is given.
    """
    out_path = Path(out_path)
    if not masks and grid is None:
        raise OutputError(f"no scene masks for {out_path.name} and no grid to write nodata on")
    grid = grid or region_grid(aoi, masks[0].path, resolution)
    stats = MosaicStats(per_scene={m.scene: {"target_m2": 0.0, "observed_m2": 0.0} for m in masks})
    all_tags = {
        "SPEX_MOSAIC_SCENES": json.dumps([m.scene for m in masks]),
        "SPEX_MOSAIC_MISSING": json.dumps([dict(m) for m in missing], sort_keys=True),
        "SPEX_MOSAIC_RULE": f"newest observation wins; {MASK_NODATA} where no scene observed",
        **dict(tags or {}),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".spex-mosaic-", dir=out_path.parent))
    try:
        intermediate = work / "mosaic.tif"
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": grid.height,
            "width": grid.width,
            "count": 1,
            "dtype": "uint8",
            "nodata": MASK_NODATA,
            "crs": grid.crs,
            "transform": grid.transform,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
            "zlevel": 1,
            "bigtiff": "IF_SAFER",
        }
        with contextlib.ExitStack() as stack:
            stack.enter_context(rasterio.Env(**GDAL_ENV))
            dst = stack.enter_context(rasterio.open(intermediate, "w", **profile))
            vrts = []
            for m in masks:
                src = stack.enter_context(rasterio.open(m.path))
                vrts.append(
                    stack.enter_context(
                        WarpedVRT(
                            src,
                            crs=grid.crs,
                            transform=grid.transform,
                            width=grid.width,
                            height=grid.height,
                            resampling=Resampling.nearest,
                            nodata=MASK_NODATA,
                        )
                    )
                )
            for win in _windows(grid, window):
                _mosaic_window(win, grid, aoi, masks, vrts, dst, stats)
        with atomic_path(out_path) as tmp:
            to_cog(intermediate, tmp, kind="mask", nodata=MASK_NODATA, tags=all_tags)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return MosaicResult(out_path, grid, [m.scene for m in masks], [dict(m) for m in missing], stats)


def _mosaic_window(
    win: Window,
    grid: MosaicGrid,
    aoi: Aoi,
    masks: Sequence[SceneMask],
    vrts: Sequence[WarpedVRT],
    dst: rasterio.io.DatasetWriter,
    stats: MosaicStats,
) -> None:
    h, w = int(win.height), int(win.width)
    inside = geometry_mask(
        [aoi.geometry],
        out_shape=(h, w),
        transform=window_transform(win, grid.transform),
        invert=True,
    )
    areas = row_areas(grid, int(win.row_off), h)[:, None]
    stats.aoi_m2 += float((inside * areas).sum())
    out = np.full((h, w), MASK_NODATA, dtype=np.uint8)
    for m, vrt in zip(masks, vrts, strict=True):
        data = vrt.read(1, window=win)
        seen = inside & (data != MASK_NODATA)
        per = stats.per_scene[m.scene]
        per["observed_m2"] += float((seen * areas).sum())
        per["target_m2"] += float((((data == MASK_TARGET) & inside) * areas).sum())
        fill = seen & (out == MASK_NODATA)
        out[fill] = data[fill]
    stats.observed_m2 += float(((out != MASK_NODATA) * areas).sum())
    stats.target_m2 += float(((out == MASK_TARGET) * areas).sum())
    dst.write(out, 1, window=win)


def compare_masks(
    previous: str | Path, current: str | Path, window: int = WINDOW
) -> dict[str, float] | None:
    """Pixel change between two mosaics on the same grid, in m2 (None if grids differ).

    ``gained``: target now, not target before; ``lost``: the reverse; only pixels
    observed in both runs count, so a scene missing from one run is not called change.
    """
    with rasterio.open(previous) as a, rasterio.open(current) as b:
        if (a.crs, a.transform, a.shape) != (b.crs, b.transform, b.shape):
            return None
        grid = MosaicGrid(b.crs.to_string(), b.transform, b.width, b.height)
        gained = lost = both = 0.0
        for win in _windows(grid, window):
            pa, pb = a.read(1, window=win), b.read(1, window=win)
            areas = row_areas(grid, int(win.row_off), int(win.height))[:, None]
            observed = (pa != MASK_NODATA) & (pb != MASK_NODATA)
            both += float((observed * areas).sum())
            gained += float(((observed & (pa == MASK_OTHER) & (pb == MASK_TARGET)) * areas).sum())
            lost += float(((observed & (pa == MASK_TARGET) & (pb == MASK_OTHER)) * areas).sum())
    return {"gained_m2": gained, "lost_m2": lost, "observed_in_both_m2": both}
