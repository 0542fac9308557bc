"""Spectral indices on real imagery: values, NaN handling, no warnings, laziness, refusals."""

from __future__ import annotations

import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr

from pipeline.errors import CatalogError, MissingBandError
from pipeline.indices import (
    compute_index,
    index_from_stack,
    index_names,
    load_index,
    normalized_difference,
)

RALEIGH_BANDS = ["B", "G", "R", "N", "S1"]
# Sentinel-2 band descriptions -> canonical codes, for this test's scene only.
S2_CODES = {"B02": "B", "B03": "G", "B04": "R", "B08": "N", "B11": "S1", "B12": "S2"}


@pytest.fixture(scope="module")
def raleigh(raleigh_pixels: np.ndarray) -> np.ndarray:
    return raleigh_pixels


@pytest.fixture(scope="module")
def slovenia(shared_data: Path) -> xr.DataArray:
    """Sentinel-2 L1C reflectance as a (band, y, x) DataArray with canonical band codes."""
    with rasterio.open(shared_data / "s2-l1c-slovenia" / "S2L1C_ref_scene2.tif") as src:
        keep = [i for i, d in enumerate(src.descriptions) if d in S2_CODES]
        pixels = src.read([i + 1 for i in keep])
        codes = [S2_CODES[src.descriptions[i]] for i in keep]
        h, w = src.height, src.width
    return xr.DataArray(
        pixels,
        dims=("band", "y", "x"),
        coords={"band": codes, "y": np.arange(h), "x": np.arange(w)},
        attrs={"sensor": "sentinel2-msi"},
    )


def test_catalog_defines_the_paper_indices() -> None:
    assert set(index_names()) >= {"NDVI", "NDWI", "MNDWI", "NDBI", "NDMI"}
    assert load_index("ndwi").bands == ("G", "N")  # McFeeters, not Gao
    assert load_index("NDMI").bands == ("N", "S1")  # Gao's index under its own name
    with pytest.raises(CatalogError, match="NDVI"):
        load_index("EVI")


@pytest.mark.parametrize("name", ["NDVI", "NDWI", "MNDWI", "NDBI", "NDMI"])
def test_index_matches_hand_computation(raleigh: np.ndarray, name: str) -> None:
    a_code, b_code = load_index(name).bands
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = index_from_stack(name, raleigh, RALEIGH_BANDS)
    assert out.dtype == np.float32 and out.shape == raleigh.shape[1:]
    a = raleigh[RALEIGH_BANDS.index(a_code)]
    b = raleigh[RALEIGH_BANDS.index(b_code)]
    rng = np.random.default_rng(0)
    valid = np.argwhere(np.isfinite(a) & np.isfinite(b))
    for r, c in valid[rng.choice(len(valid), 50, replace=False)]:
        av, bv = float(a[r, c]), float(b[r, c])
        assert out[r, c] == pytest.approx((av - bv) / (av + bv), abs=1e-6)
    # nodata in -> NaN out, and nowhere else for this scene (DN >= 1, so a + b > 0)
    np.testing.assert_array_equal(np.isnan(out), ~(np.isfinite(a) & np.isfinite(b)))


def test_zero_sum_and_nan_give_nan_without_warnings(raleigh: np.ndarray) -> None:
    a = raleigh[3, :50, :50].copy()
    b = raleigh[2, :50, :50].copy()
    a[0, :5] = 0.0
    b[0, :5] = 0.0  # 0 / 0
    a[1, :5] = 7.0
    b[1, :5] = -7.0  # x / 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in (np.asarray, da.from_array):
            out = np.asarray(normalized_difference(kind(a), kind(b)))
            assert np.isnan(out[:2, :5]).all()
            assert np.isnan(out[np.isnan(a) | np.isnan(b)]).all()


def test_integer_input_does_not_wrap(raleigh: np.ndarray) -> None:
    n = np.nan_to_num(raleigh[3, 200:220, 200:220]).astype(np.uint8)
    r = np.nan_to_num(raleigh[2, 200:220, 200:220]).astype(np.uint8)
    assert (r > n).any()  # some pixels where uint8 N - R would wrap around
    out = normalized_difference(n, r)
    expected = (n.astype(float) - r) / (n.astype(float) + r)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_dask_input_stays_lazy(raleigh: np.ndarray) -> None:
    computed = []

    def counting(block: np.ndarray) -> np.ndarray:
        if block.size:  # dask may probe with empty blocks to infer metadata
            computed.append(block.shape)
        return block

    stack = da.from_array(raleigh, chunks=(1, 128, 128)).map_blocks(counting, dtype=np.float32)
    out = index_from_stack("NDVI", stack, RALEIGH_BANDS)
    assert isinstance(out, da.Array) and computed == []
    scene = xr.DataArray(stack, dims=("band", "y", "x"), coords={"band": RALEIGH_BANDS})
    lazy = compute_index("NDVI", scene)
    assert isinstance(lazy.data, da.Array) and computed == []
    np.testing.assert_array_equal(
        lazy.values, index_from_stack("NDVI", raleigh, RALEIGH_BANDS), strict=False
    )
    assert computed  # computing it did run the blocks


def test_compute_index_on_dataarray(slovenia: xr.DataArray) -> None:
    out = compute_index("MNDWI", slovenia)
    assert out.dims == ("y", "x") and out.name == "MNDWI" and "band" not in out.coords
    g = slovenia.sel(band="G").values.astype(float)
    s1 = slovenia.sel(band="S1").values.astype(float)
    np.testing.assert_allclose(out.values, (g - s1) / (g + s1), rtol=1e-5)
    np.testing.assert_array_equal(out.x, slovenia.x)


def test_missing_band_is_refused_with_a_clear_message(shared_data: Path) -> None:
    path = shared_data / "naip-north-dakota" / "m_4709963_se_14_1_20090818.tif"
    with rasterio.open(path) as src:
        pixels = src.read(window=((0, 32), (0, 32)))
    naip = xr.DataArray(pixels, dims=("band", "y", "x"), coords={"band": ["R", "G", "B", "N"]})
    assert compute_index("NDVI", naip).shape == (32, 32)
    with pytest.raises(MissingBandError) as err:
        compute_index("NDBI", naip, sensor="NAIP")
    message = str(err.value)
    assert "NDBI needs S1" in message and "SWIR" in message and "sensor NAIP" in message
    with pytest.raises(MissingBandError, match="MNDWI needs S1"):
        index_from_stack("MNDWI", pixels, ["R", "G", "B", "N"])
