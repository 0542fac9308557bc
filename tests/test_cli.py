"""The `spex` command line on real scenes: help, sensors, info, apg, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from skimage.filters import threshold_otsu

from pipeline.outputs.cog import validate_cog

REPO = Path(__file__).resolve().parents[1]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
SPEX = Path(sys.executable).with_name("spex")


def spex(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([str(SPEX), *args], capture_output=True, text=True)
    if check:
        assert run.returncode == 0, run.stderr
    return run


@pytest.mark.parametrize("command", ["sensors", "encodings", "info", "apg", "extract"])
def test_every_command_has_help(command: str) -> None:
    assert "Usage" in spex(command, "--help").stdout


def test_sensors_lists_every_catalog() -> None:
    out = spex("sensors").stdout
    for name in ("sentinel2-msi", "landsat-tm", "landsat-oli", "gaofen2-pms", "naip"):
        assert name in out
    encodings = spex("encodings").stdout
    for name in ("sentinel2-dn", "landsat-c2-l2", "reflectance-x10000", "uncalibrated-dn"):
        assert name in encodings


def test_info_describes_the_sample() -> None:
    facts = json.loads(spex("info", str(BERLIN), "--json").stdout)
    assert facts["sensor"] == "sentinel2-msi" and facts["encoding"] == "sentinel2-dn"
    assert facts["level"] == "L1C" and facts["plausibility"]["checked"]
    assert facts["bands"] == ["B", "G", "R", "N", "S1", "S2"]
    assert (facts["width"], facts["height"]) == (768, 768)
    assert facts["crs"] == "EPSG:32633"


def test_apg_mask_matches_an_independent_ndwi_otsu(shared_data: Path, tmp_path: Path) -> None:
    """The issue's acceptance command, checked against rasterio + skimage directly."""
    scene = shared_data / "l7-raleigh" / "landsat_multiband.tif"
    out = tmp_path / "m.tif"
    run = spex(
        "apg",
        "water",
        str(scene),
        "--sensor",
        "landsat-etm",
        "--encoding",
        "uncalibrated-dn",
        "--out",
        str(out),
        "--json",
    )
    result = json.loads(run.stdout)
    assert result["instruction"].startswith(
        "Based on the provided image and the attributes of the water regions"
    )
    assert 0 < len(result["regions"]) <= 10
    assert validate_cog(out)[0]
    with rasterio.open(scene) as src, rasterio.open(out) as mask:
        green, nir = src.read(2).astype(np.float64), src.read(4).astype(np.float64)
        valid = (src.read(1) != src.nodata) & (green != src.nodata) & (nir != src.nodata)
        assert (mask.crs, mask.transform) == (src.crs, src.transform)
        got = mask.read(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndwi = (green - nir) / (green + nir)
    valid &= np.isfinite(ndwi)
    threshold = threshold_otsu(ndwi[valid], nbins=256)
    expected = np.where(valid, (ndwi > threshold).astype(np.uint8), 255)
    assert abs(result["threshold"] - threshold) < 1e-6
    np.testing.assert_array_equal(got, expected)


def test_apg_refuses_buildings_without_swir(shared_data: Path, tmp_path: Path) -> None:
    naip = sorted((shared_data / "naip-north-dakota").glob("*.tif"))[0]
    run = spex(
        "apg",
        "building",
        str(naip),
        "--sensor",
        "naip",
        "--out",
        str(tmp_path / "m.tif"),
        check=False,
    )
    assert run.returncode == 2
    assert "NDBI needs S1" in run.stderr and "Traceback" not in run.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("garbage", "cannot"),
        ("nocrs", "no CRS"),
    ],
)
def test_bad_files_give_one_error_line(tmp_path: Path, make: str, message: str) -> None:
    bad = tmp_path / "bad.tif"
    if make == "garbage":
        bad.write_bytes(b"this is not a GeoTIFF" * 10)
    else:
        with rasterio.open(BERLIN) as src:
            data, profile = src.read(), src.profile
        profile.pop("crs")
        with rasterio.open(bad, "w", **profile) as dst:
            dst.write(data)
    out = tmp_path / "out.tif"
    run = spex("apg", "water", str(bad), "--out", str(out), check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and message in run.stderr, run.stderr
    assert not out.exists()
