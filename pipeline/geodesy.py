"""Pixel areas in square metres: the one measurement behind every area the project reports.

The scene report, the polygons and the regional mosaic (and so the run report's change
figures) all sum per-pixel areas; measuring them one way keeps a scene's water area the
same whichever of them an analyst reads.

- Projected CRS: every cell has the same planar area, |det(transform)| x (CRS unit in
  metres)^2, rotated grids included (what QGIS's field calculator gives on that layer).
- Geographic CRS: a degree cell shrinks towards the poles, so each grid row gets its own
  area, measured as a geodesic polygon on the CRS's own ellipsoid (``pyproj.Geod``; WGS84
  when the CRS names none). On a rotated grid the row's cell at the centre column stands
  for the row, an approximation the method text admits.
"""

from __future__ import annotations

import numpy as np
from affine import Affine
from pyproj import CRS, Geod

from pipeline.errors import SceneError

__all__ = ["crs_unit", "row_cell_areas"]

_UNIT_ABBREVIATIONS = {
    "metre": "m",
    "meter": "m",
    "degree": "deg",
    "foot": "ft",
    "US survey foot": "ftUS",
}


def crs_unit(crs: CRS) -> tuple[str, float]:
    """(unit label, metres per unit) of the CRS's first axis (NaN metres for degrees)."""
    if crs.is_geographic:
        return "deg", float("nan")
    axes = crs.axis_info
    if not axes:
        raise SceneError(f"CRS {crs.name!r} has no axis information; cannot tell its unit")
    name, factor = axes[0].unit_name, axes[0].unit_conversion_factor
    return _UNIT_ABBREVIATIONS.get(name, name), float(factor)


def row_cell_areas(
    crs: CRS | str,
    transform: Affine,
    rows: int,
    width: int,
    *,
    row_start: int = 0,
    label: str = "grid",
) -> tuple[np.ndarray, str]:
    """Area in m2 of one cell in each of ``rows`` grid rows from ``row_start`` (a grid
    ``width`` cells wide), and a sentence saying how it was measured (``label`` names
    the grid's CRS in it)."""
    crs = CRS.from_user_input(crs)
    if not crs.is_geographic:
        unit, factor = crs_unit(crs)
        cell = abs(transform.a * transform.e - transform.b * transform.d) * factor**2
        return np.full(rows, cell, dtype=np.float64), (
            f"planar: pixel count x |pixel area| of the {label} grid (unit {unit} = {factor:g} m)"
        )
    geod: Geod = crs.get_geod() or Geod(ellps="WGS84")
    col = 0 if transform.b == 0 and transform.d == 0 else width // 2
    areas = np.empty(rows, dtype=np.float64)
    for k in range(rows):
        row = row_start + k
        corners = [transform @ (col + dx, row + dy) for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1))]
        area, _ = geod.polygon_area_perimeter([c[0] for c in corners], [c[1] for c in corners])
        areas[k] = abs(area)
    rotated = "" if col == 0 else " (rotated grid: centre-column cell per row, approximate)"
    return areas, (
        f"geodesic: per-row cell areas on the {label} ellipsoid "
        f"({geod.initstring.strip()}){rotated}"
    )
