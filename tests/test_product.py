"""Output names from the product: granule folders, generic file names, STAC items."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.extract import ExtractionSettings, plan_extraction, run_extraction
from pipeline.product import identify_product
from pipeline.scene import open_scene
from pipeline.sensors import load_sensor

REPO = Path(__file__).resolve().parents[1]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
S2_PATTERN = load_sensor("sentinel2-msi").product_name
SETTINGS = ExtractionSettings(target="water", model="index", tile=256, overlap=32)


def test_file_named_after_its_acquisition_keeps_its_name(tmp_path: Path) -> None:
    plan = plan_extraction(str(BERLIN), SETTINGS, tmp_path)
    assert plan.scene_name == "s2_l1c_berlin_20170216"
    assert plan.outputs.mask.name == "s2_l1c_berlin_20170216_water.tif"
    assert plan.product["named_by"] == "file name"


def test_generic_file_name_takes_the_product_id_from_its_tags(tmp_path: Path) -> None:
    generic = tmp_path / "in" / "scene.tif"
    generic.parent.mkdir()
    shutil.copy(BERLIN, generic)
    plan = plan_extraction(str(generic), SETTINGS, tmp_path / "out")
    assert plan.scene_name == "T33UUU_20170216T102101"
    assert plan.product == {
        "name": "T33UUU_20170216T102101",
        "named_by": "metadata tag SOURCE_PRODUCT",
        "acquired": "2017-02-16",
    }


def test_granule_folder_is_named_by_tile_and_sensing_time(shared_data: Path) -> None:
    granule = shared_data / "s2-l1c-berlin" / "IMG_DATA"
    product = identify_product(str(granule), pattern=S2_PATTERN)
    assert product.name == "T33UUU_20170216T102101"
    assert product.named_by == "band file names"
    assert str(product.acquired) == "2017-02-16"
    # Without a product pattern (an unknown sensor) the folder name stays.
    assert identify_product(str(granule), pattern=None).name == "IMG_DATA"


def test_two_granules_into_one_folder_never_collide(shared_data: Path, tmp_path: Path) -> None:
    """A second granule with the same tile and time (a reprocessed product) gets its own
    name instead of taking over the first one's outputs or being refused."""
    first = shared_data / "s2-l1c-berlin" / "IMG_DATA"
    second = tmp_path / "reprocessed" / "GRANULE" / "L1C_T33UUU" / "IMG_DATA"
    second.mkdir(parents=True)
    for band in ("B03", "B08"):  # the bands NDWI needs, as their own product's files
        name = f"T33UUU_20170216T102101_{band}.jp2"
        (second / name).symlink_to(first / name)
    out = tmp_path / "out"
    settings = ExtractionSettings(
        target="water", model="index", sensor="sentinel2-msi", tile=512, overlap=32
    )
    a = plan_extraction(str(first), settings, out)
    b = plan_extraction(str(second), settings, out)
    assert a.scene_name == "T33UUU_20170216T102101"
    assert b.scene_name.startswith("T33UUU_20170216T102101-") and len(b.scene_name) == 31
    assert a.store_path != b.store_path and a.outputs.mask != b.outputs.mask
    # Each maps back to its own name on every later run.
    assert plan_extraction(str(second), settings, out).scene_name == b.scene_name
    assert plan_extraction(str(first), settings, out).scene_name == a.scene_name


def test_stac_item_is_a_scene_named_by_its_id(tmp_path: Path) -> None:
    data = tmp_path / "data" / "berlin.tif"
    data.parent.mkdir()
    shutil.copy(BERLIN, data)
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "S2A_T33UUU_20170216_berlin-crop",
        "geometry": None,
        "properties": {"datetime": "2017-02-16T10:21:01Z"},
        "links": [],
        "assets": {
            "visual": {"href": "../data/berlin.tif", "type": "image/tiff", "roles": ["data"]},
            "thumbnail": {"href": "../data/thumb.png", "type": "image/png"},
        },
    }
    item_path = tmp_path / "items" / "item.json"
    item_path.parent.mkdir()
    item_path.write_text(json.dumps(item))
    paths = run_extraction(str(item_path), SETTINGS, tmp_path / "out")
    assert Path(paths["mask"]).name == "S2A_T33UUU_20170216_berlin-crop_water.tif"
    stac = json.loads(Path(paths["stac"]).read_text())
    assert stac["properties"]["datetime"].startswith("2017-02-16")
    assert stac["properties"]["spex:product"]["named_by"] == "STAC item item.json"


def test_stac_item_without_raster_is_a_clear_error(tmp_path: Path) -> None:
    from pipeline.errors import SceneError

    item_path = tmp_path / "item.json"
    item_path.write_text(
        json.dumps(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "id": "no-raster",
                "geometry": None,
                "properties": {"datetime": "2017-02-16T10:21:01Z"},
                "links": [],
                "assets": {"meta": {"href": "./meta.xml", "type": "application/xml"}},
            }
        )
    )
    with pytest.raises(SceneError, match="no raster asset"):
        plan_extraction(str(item_path), SETTINGS, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stac_item_with_one_multiband_asset_is_named_by_its_bands(
    shared_data: Path, tmp_path: Path
) -> None:
    """NAIP as Planetary Computer publishes it: one 4-band ``image`` asset whose
    ``eo:bands`` name the bands; the item's platform tells the sensor."""
    naip = shared_data / "naip-north-dakota" / "m_4709963_se_14_1_20200831.tif"
    bands = [("Red", "red"), ("Green", "green"), ("Blue", "blue"), ("NIR", "nir")]
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "nd_m_4709963_se_14_060_20200831",
        "geometry": None,
        "properties": {"datetime": "2020-08-31T00:00:00Z", "platform": "naip"},
        "links": [],
        "assets": {
            "image": {
                "href": str(naip),
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
                "eo:bands": [{"name": n, "common_name": c} for n, c in bands],
            },
            "thumbnail": {"href": "thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]},
        },
    }
    item_path = tmp_path / "item.json"
    item_path.write_text(json.dumps(item))
    plan = plan_extraction(str(item_path), SETTINGS, tmp_path / "out")
    scene = open_scene(str(item_path))
    assert scene.attrs["sensor"] == "naip"
    assert [str(b) for b in scene["band"].values] == ["R", "G", "B", "N"]
    direct = open_scene(str(naip), sensor="naip")
    assert np.array_equal(scene.values, direct.values, equal_nan=True)
    assert plan.scene_name == "nd_m_4709963_se_14_060_20200831"
