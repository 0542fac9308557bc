"""One area measurement: the scene report and the regional mosaic give the same area for
the same mask, in projected and geographic CRSs and on rotated grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.geodesy import row_cell_areas
from pipeline.mask_codes import MASK_NODATA, MASK_OTHER, MASK_TARGET
from pipeline.mosaic import MosaicGrid, SceneMask, mosaic_masks, row_areas
from pipeline.outputs.report import build_report
from pipeline.regions import Aoi

BERLIN = Path(__file__).resolve().parents[1] / "samples" / "s2_l1c_berlin_20170216.tif"


def _real_mask() -> np.ndarray:
    """Water-like mask of the Berlin sample: NIR below its 20th percentile is the target,
    the scene's zero fill is nodata (real imagery, so regions have real shapes)."""
    with rasterio.open(BERLIN) as src:
        nir = src.read(4).astype(np.float64)  # B08 in the sample's band order
    mask = np.where(nir < np.percentile(nir[nir > 0], 20), MASK_TARGET, MASK_OTHER)
    mask = mask.astype(np.uint8)
    mask[nir == 0] = MASK_NODATA
    mask[:5, :] = MASK_NODATA  # a nodata strip whatever the sample holds
    return mask


def _write(path: Path, mask: np.ndarray, crs: str, transform: Affine) -> Path:
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 1, "nodata": MASK_NODATA}
    with rasterio.open(
        path,
        "w",
        height=mask.shape[0],
        width=mask.shape[1],
        crs=crs,
        transform=transform,
        **profile,
    ) as dst:
        dst.write(mask, 1)
    return path


def _report_area(path: Path) -> float:
    report = build_report(path, target="water", scene_name="s", provenance={})
    return report["totals"]["target_area_m2"]


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:32633", Affine(10.0, 0.0, 380000.0, 0.0, -10.0, 5820000.0)),
        ("EPSG:4326", Affine(0.0001, 0.0, 13.0, 0.0, -0.0001, 52.6)),
    ],
    ids=["projected", "geographic"],
)
def test_report_and_mosaic_measure_the_same_area(tmp_path: Path, crs: str, transform) -> None:
    mask = _real_mask()
    path = _write(tmp_path / "mask.tif", mask, crs, transform)
    h, w = mask.shape
    x0, y0 = transform * (0, h)
    x1, y1 = transform * (w, 0)
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    aoi = Aoi(crs, {"type": "Polygon", "coordinates": [ring]})
    mosaic = mosaic_masks([SceneMask("s", path)], aoi, tmp_path / "mosaic.tif")
    assert (mosaic.grid.width, mosaic.grid.height) == (w, h)  # snapped: a copy, not a resample
    assert mosaic.stats.target_m2 > 0
    assert _report_area(path) == pytest.approx(mosaic.stats.target_m2, rel=1e-9, abs=0.01)


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
def test_rotated_grid_same_area_in_report_and_mosaic(tmp_path: Path, crs: str) -> None:
    """A grid rotated by 30 degrees: the report measures it (the mosaic's own grids are
    north-up, but its area function now takes any grid and agrees instead of refusing)."""
    size = 10.0 if crs == "EPSG:32633" else 0.0001
    origin = (380000.0, 5820000.0) if crs == "EPSG:32633" else (13.0, 52.6)
    transform = Affine.translation(*origin) * Affine.rotation(30.0) * Affine.scale(size, -size)
    mask = _real_mask()
    path = _write(tmp_path / "rotated.tif", mask, crs, transform)
    h, w = mask.shape
    areas = row_areas(MosaicGrid(crs, transform, w, h), 0, h)
    mosaic_way = float(np.count_nonzero(mask == MASK_TARGET, axis=1) @ areas)
    assert _report_area(path) == pytest.approx(mosaic_way, rel=1e-9, abs=0.01)
    if crs == "EPSG:32633":  # planar: the rotation does not change a cell's area
        assert areas == pytest.approx(np.full(h, size * size))


def test_method_text_names_the_measurement() -> None:
    t = Affine(0.0001, 0.0, 13.0, 0.0, -0.0001, 52.6)
    areas, method = row_cell_areas("EPSG:4326", t, 3, 4, label="EPSG:4326")
    assert method.startswith("geodesic: per-row cell areas on the EPSG:4326 ellipsoid")
    assert areas[0] < areas[2]  # rows further south (nearer the equator) are larger
