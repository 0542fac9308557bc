"""COG conversion and atomic final files, on a real NAIP scene."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.errors import OutputError
from pipeline.outputs.atomic import atomic_path, atomic_write_text, ensure_writable_dir
from pipeline.outputs.cog import assert_valid_cog, to_cog, validate_cog, write_array_cog


@pytest.fixture(scope="module")
def naip_products(shared_data, tmp_path_factory) -> dict[str, Path]:
    """A tiled uint8 mask (NDVI > 0, 255 in a corner) and a float32 NDVI GeoTIFF."""
    src_path = sorted((shared_data / "naip-north-dakota").glob("*.tif"))[0]
    root = tmp_path_factory.mktemp("naip")
    with rasterio.open(src_path) as src:
        red, nir = (src.read(i).astype(np.float32) for i in (1, 4))
        profile = {
            "driver": "GTiff",
            "height": src.height,
            "width": src.width,
            "count": 1,
            "crs": src.crs,
            "transform": src.transform,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
        }
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = ((nir - red) / (nir + red)).astype(np.float32)
    ndvi[:100, :100] = np.nan
    mask = np.where(np.isnan(ndvi), 255, ndvi > 0).astype(np.uint8)
    paths = {"mask": root / "mask.tif", "prob": root / "prob.tif", "src": src_path}
    with rasterio.open(paths["mask"], "w", dtype="uint8", nodata=255, **profile) as dst:
        dst.write(mask, 1)
    with rasterio.open(paths["prob"], "w", dtype="float32", nodata=float("nan"), **profile) as dst:
        dst.write(ndvi, 1)
    return paths


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mask_cog_is_valid_with_overviews_nodata_and_tags(naip_products, tmp_path) -> None:
    before = digest(naip_products["mask"])
    out = to_cog(
        naip_products["mask"],
        tmp_path / "mask_cog.tif",
        kind="mask",
        tags={"spex_version": "0.1.0", "target": "vegetation"},
        blocksize=256,
    )
    ok, errors, _ = validate_cog(out)
    assert ok, errors
    with rasterio.open(naip_products["src"]) as src, rasterio.open(out) as cog:
        assert cog.crs == src.crs and cog.transform == src.transform
        assert cog.nodata == 255 and cog.dtypes[0] == "uint8"
        assert cog.overviews(1)[0] == 2
        assert cog.tags()["spex_version"] == "0.1.0"
        assert "TIFFTAG_DATETIME" not in cog.tags()
        data = cog.read(1)
        assert set(np.unique(data)) <= {0, 1, 255}
        assert set(np.unique(cog.read(1, out_shape=(cog.height // 2, cog.width // 2)))) <= {
            0,
            1,
            255,
        }  # nearest overviews keep class values
    with rasterio.open(naip_products["mask"]) as src:
        assert np.array_equal(src.read(1), data)
    assert digest(naip_products["mask"]) == before  # source untouched
    assert not list(tmp_path.glob("*.aux.xml"))


def test_probability_cog(naip_products, tmp_path) -> None:
    out = to_cog(
        naip_products["prob"], tmp_path / "prob_cog.tif", kind="probability", blocksize=256
    )
    assert_valid_cog(out)
    with rasterio.open(out) as cog, rasterio.open(naip_products["prob"]) as src:
        assert np.isnan(cog.nodata) and cog.dtypes[0] == "float32"
        assert cog.overviews(1)
        assert np.array_equal(cog.read(1), src.read(1), equal_nan=True)


def test_same_input_gives_same_bytes(naip_products, tmp_path) -> None:
    tags = {"provenance": "x"}
    a = to_cog(naip_products["mask"], tmp_path / "a.tif", tags=tags, blocksize=256)
    time.sleep(1.1)  # a timestamp at second resolution would now differ
    b = to_cog(naip_products["mask"], tmp_path / "b.tif", tags=tags, blocksize=256)
    assert a.read_bytes() == b.read_bytes()


def test_plain_geotiff_is_not_a_cog(naip_products, tmp_path) -> None:
    plain = tmp_path / "plain.tif"
    with rasterio.open(naip_products["mask"]) as src:
        profile = {**src.profile, "tiled": False, "height": 600, "width": 600}
        profile.pop("blockxsize"), profile.pop("blockysize")
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(src.read(1, window=((0, 600), (0, 600))), 1)
    assert validate_cog(plain)[0] is False
    with pytest.raises(OutputError, match="not a valid Cloud-Optimized GeoTIFF"):
        assert_valid_cog(plain)


def test_write_array_cog_from_memory(naip_products, tmp_path) -> None:
    with rasterio.open(naip_products["mask"]) as src:
        mask, crs, transform = src.read(1), src.crs, src.transform
    out = write_array_cog(
        mask,
        tmp_path / "apg.tif",
        crs=crs,
        transform=transform,
        nodata=255,
        tags={"SPEX_INDEX": "NDVI"},
        blocksize=256,
    )
    assert_valid_cog(out)
    with rasterio.open(out) as cog:
        assert np.array_equal(cog.read(1), mask)
        assert cog.crs == crs and cog.transform == transform and cog.nodata == 255
        assert cog.tags()["SPEX_INDEX"] == "NDVI"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apg.tif"]


def test_bad_blocksize_rejected(naip_products, tmp_path) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        to_cog(naip_products["mask"], tmp_path / "x.tif", blocksize=100)


# ------------------------------------------------------------------ atomic


def test_atomic_path_renames_on_success(tmp_path) -> None:
    final = tmp_path / "out" / "result.json"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.suffix == ".json" and tmp != final
        tmp.write_text("{}")
        assert not final.exists()
    assert final.read_text() == "{}"
    assert [p.name for p in final.parent.iterdir()] == ["result.json"]


def test_atomic_path_removes_temp_and_keeps_old_file_on_error(tmp_path) -> None:
    final = tmp_path / "result.tif"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        Path(str(tmp) + ".aux.xml").write_text("sidecar")
        raise RuntimeError("boom")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.tif"]


def test_atomic_cog_conversion_failure_leaves_nothing(naip_products, tmp_path) -> None:
    final = tmp_path / "cog.tif"
    with pytest.raises(ValueError), atomic_path(final) as tmp:
        to_cog(naip_products["mask"], tmp, kind="nonsense")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_a_clear_output_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"output folder .*file/sub is not writable"):
        ensure_writable_dir(blocker / "sub")
    with pytest.raises(OutputError, match="not writable"):
        atomic_write_text(blocker / "sub" / "a.txt", "hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ------------------------------------------------------------------ styling for QGIS


def test_job_rasters_open_as_styled_layers(tmp_path) -> None:
    """The extraction's mask COG is paletted with class names and mode overviews; the
    probability COG is float32 0..1 with NaN nodata; both are valid COGs."""
    from pipeline.extract import ExtractionSettings, run_extraction
    from pipeline.outputs.quicklook import overlay_colour

    berlin = Path(__file__).resolve().parents[1] / "samples" / "s2_l1c_berlin_20170216.tif"
    settings = ExtractionSettings(target="water", tile=256, overlap=32, formats=("prob",))
    paths = run_extraction(str(berlin), settings, tmp_path)
    for key in ("mask", "probability"):
        assert_valid_cog(paths[key])
    with rasterio.open(paths["mask"]) as mask:
        assert mask.colorinterp[0] == rasterio.enums.ColorInterp.palette
        colours = mask.colormap(1)
        assert colours[1] == (*overlay_colour("water")[:3], 255) and colours[0] != colours[1]
        assert mask.nodata == 255
        assert mask.tags(1) == {"CLASS_0": "other", "CLASS_1": "water", "CLASS_255": "nodata"}
        assert mask.descriptions[0].startswith("water mask")
    sidecar = Path(paths["mask"] + ".aux.xml").read_text()  # category names, for QGIS
    assert "<Category>other</Category>" in sidecar and "<Category>water</Category>" in sidecar
    with rasterio.open(paths["mask"]) as mask:
        full = mask.read(1)
        level = mask.overviews(1)[0]
        overview = mask.read(1, out_shape=(mask.height // level, mask.width // level))
    # Mode overviews: every overview pixel is the majority class of its block.
    blocks = full[: overview.shape[0] * level, : overview.shape[1] * level].reshape(
        overview.shape[0], level, overview.shape[1], level
    )
    share = (blocks == 1).mean(axis=(1, 3))
    assert set(np.unique(overview)) <= {0, 1, 255}
    assert (overview[share > 0.5] == 1).all() and (overview[share < 0.5] == 0).all()
    with rasterio.open(paths["probability"]) as prob:
        assert prob.dtypes[0] == "float32" and np.isnan(prob.nodata)
        assert prob.descriptions[0].startswith("water probability")
        values = prob.read(1)
        assert np.nanmin(values) >= 0 and np.nanmax(values) <= 1
