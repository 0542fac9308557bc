"""Mosaics: newest observation wins, nodata where no scene saw the ground, AOI clip,
areas in m2 (projected and geographic), pixel change between runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.geodesy import row_cell_areas
from pipeline.mosaic import SceneMask, compare_masks, mosaic_masks
from pipeline.outputs.cog import validate_cog
from pipeline.regions import Aoi


def _mask(
    path: Path, data: np.ndarray, x0: float, crs: str = "EPSG:32633", res: float = 10.0
) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": "uint8",
        "nodata": 255,
        "crs": crs,
        "transform": Affine(res, 0, x0, 0, -res, 1000),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def test_newest_wins_gaps_fill_from_older_and_uncovered_is_nodata(tmp_path: Path) -> None:
    new = np.ones((10, 10), np.uint8)
    new[:, :3] = 255  # e.g. a cloud in the newest scene
    old = np.zeros((10, 10), np.uint8)
    masks = [
        SceneMask("new", _mask(tmp_path / "new.tif", new, x0=0)),
        SceneMask("old", _mask(tmp_path / "old.tif", old, x0=0)),
    ]
    aoi = Aoi(
        "EPSG:32633",
        {
            "type": "Polygon",
            "coordinates": [[[0, 850], [150, 850], [150, 1000], [0, 1000], [0, 850]]],
        },
    )  # 15 x 15 px, 5 uncovered
    result = mosaic_masks(
        masks,
        aoi,
        tmp_path / "m.tif",
        window=16,
        missing=[{"scene": "bad", "reason": "unreadable"}],
    )
    assert validate_cog(result.path)[0]
    with rasterio.open(result.path) as src:
        got = src.read(1)
        tags = src.tags()
    assert got.shape == (15, 15)
    np.testing.assert_array_equal(got[:10, :3], 0)  # the older scene shows through
    np.testing.assert_array_equal(got[:10, 3:10], 1)  # the newer scene wins
    assert (got[10:, :] == 255).all() and (got[:, 10:] == 255).all()  # nobody saw it
    assert json.loads(tags["SPEX_MOSAIC_MISSING"]) == [{"reason": "unreadable", "scene": "bad"}]
    assert result.stats.target_m2 == pytest.approx(70 * 100)
    assert result.stats.observed_m2 == pytest.approx(100 * 100)
    assert result.stats.aoi_m2 == pytest.approx(225 * 100)
    assert result.stats.per_scene["old"]["target_m2"] == 0


def test_polygon_aoi_clips(tmp_path: Path) -> None:
    m = SceneMask("a", _mask(tmp_path / "a.tif", np.ones((10, 10), np.uint8), x0=0))
    triangle = Aoi(
        "EPSG:32633",
        {"type": "Polygon", "coordinates": [[[0, 900], [100, 900], [0, 1000], [0, 900]]]},
    )
    result = mosaic_masks([m], triangle, tmp_path / "t.tif")
    with rasterio.open(result.path) as src:
        got = src.read(1)
    assert (got == 1).sum() < 100 and (got == 255).sum() > 0
    assert got[-1, 0] == 1 and got[0, -1] == 255


def test_geographic_areas_shrink_towards_the_pole() -> None:
    t = Affine(0.001, 0, 0, 0, -0.001, 60.0)
    near_pole = row_cell_areas("EPSG:4326", t, 1, 1)[0][0]
    equator = row_cell_areas("EPSG:4326", Affine(0.001, 0, 0, 0, -0.001, 0.0005), 1, 1)[0][0]
    assert equator == pytest.approx(111.32 * 110.57, rel=0.01)
    # cos 60 deg = 0.5 along x; a meridian degree is ~0.8 % longer at 60 deg
    assert near_pole / equator == pytest.approx(0.505, rel=0.002)


def test_compare_masks(tmp_path: Path) -> None:
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[0, :2] = 1
    a[3, 3] = 1
    b[3, 2] = 255
    pa, pb = _mask(tmp_path / "a.tif", a, 0), _mask(tmp_path / "b.tif", b, 0)
    assert compare_masks(pa, pb) == {
        "gained_m2": 200.0,
        "lost_m2": 100.0,
        "observed_in_both_m2": 1500.0,
    }
    assert compare_masks(pa, _mask(tmp_path / "c.tif", b, 10)) is None
