"""Region catalogs: the shipped ones load, bad ones fail clearly, paths stay in roots."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from affine import Affine

from pipeline.errors import CatalogError
from pipeline.regions import (
    CATALOG_DIR,
    Roots,
    date_from_name,
    find_scenes,
    list_regions,
    load_region,
    validate_cron,
)

GOOD = {
    "name": "r1",
    "aoi": {"crs": "EPSG:32633", "bbox": [0, 0, 1000, 1000]},
    "targets": ["water"],
    "scenes": {"type": "local", "root": "data", "glob": "scenes/*.tif"},
    "output": {"root": "out", "path": "regions/r1"},
    "schedule": {"cron": "0 6 * * mon"},
}


def _roots(tmp_path: Path) -> Roots:
    for sub in ("data/scenes", "out"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    return Roots({"data": tmp_path / "data", "out": tmp_path / "out"})


def _write(tmp_path: Path, raw: dict, name: str = "r1.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _tif(path: Path, x0: float = 0.0) -> None:
    profile = {
        "driver": "GTiff",
        "width": 10,
        "height": 10,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(100, 0, x0, 0, -100, 1000),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((1, 10, 10), np.uint8))


def test_shipped_catalogs_load_and_prefect_accepts_their_schedules() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    names = list_regions()
    assert {"naip-north-dakota", "landsat-timeseries"} <= set(names)
    roots = Roots({"data": CATALOG_DIR, "project": CATALOG_DIR, "out": CATALOG_DIR})
    for name in names:
        region = load_region(name, roots=Roots({**roots.folders}))
        CronSchedule(cron=region.schedule.cron, timezone=region.schedule.timezone)
        assert region.targets and region.aoi.bounds


def test_good_catalog(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    region = load_region(_write(tmp_path, GOOD), roots=roots)
    assert region.output == (tmp_path / "out" / "regions" / "r1").resolve()
    assert region.aoi.bounds == (0, 0, 1000, 1000)
    assert region.schedule.active is False  # paused unless the catalog says otherwise


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tragets": ["water"]}, "unknown key"),
        ({"targets": ["lava"]}, "lava"),
        ({"sensor": "hubble"}, "hubble"),
        ({"aoi": {"crs": "EPSG:32633", "bbox": [5, 0, 1, 1]}}, "min < max"),
        ({"aoi": {"crs": "EPSG:999999", "bbox": [0, 0, 1, 1]}}, "coordinate reference"),
        (
            {"aoi": {"crs": "EPSG:4326", "geojson": {"type": "Point", "coordinates": [0, 0]}}},
            "Polygon",
        ),
        ({"schedule": {"cron": "61 * * * *"}}, "minute 61"),
        ({"schedule": {"cron": "0 6 * *"}}, "5 fields"),
        ({"output": {"root": "out", "path": "../../etc"}}, "without '..'"),
        ({"output": {"root": "out", "path": "/etc"}}, "without '..'"),
        ({"output": {"root": "home", "path": "x"}}, "unknown root"),
        ({"scenes": {"type": "local", "root": "data", "glob": "../*.tif"}}, "without '..'"),
        ({"scenes": {"type": "ftp", "root": "data", "path": "x"}}, "not one of"),
        (
            {"scenes": {"type": "local", "root": "data", "glob": "s/*", "start": "2020-13-01"}},
            "not a date",
        ),
    ],
)
def test_bad_catalogs_fail_clearly(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        load_region(_write(tmp_path, {**GOOD, **change}), roots=_roots(tmp_path))


def test_yaml_is_safe_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_region(path, roots=_roots(tmp_path))
    assert not Path("pwned").exists()


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    outside = tmp_path / "secret"
    outside.mkdir()
    _tif(outside / "a_20200101.tif")
    (tmp_path / "data" / "scenes" / "link_20200101.tif").symlink_to(outside / "a_20200101.tif")
    region = load_region(_write(tmp_path, GOOD), roots=roots)
    with pytest.raises(CatalogError, match="outside root 'data'"):
        find_scenes(region)


def test_region_names_cannot_be_paths() -> None:
    with pytest.raises(CatalogError, match="lowercase"):
        load_region("../../etc/passwd")


def test_local_scenes_filtered_by_date_and_footprint(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    scenes = tmp_path / "data" / "scenes"
    _tif(scenes / "s_20190601.tif")
    _tif(scenes / "s_20200601.tif")
    _tif(scenes / "s_20210601.tif")
    _tif(scenes / "far_20200701.tif", x0=50_000)  # outside the AOI
    raw = {**GOOD, "scenes": {**GOOD["scenes"], "start": "2020-01-01", "end": "2020-12-31"}}
    selection = find_scenes(load_region(_write(tmp_path, raw), roots=roots))
    assert [s.id for s in selection.scenes] == ["s_20200601"]
    reasons = dict(selection.skipped)
    assert "before" in reasons["s_20190601"] and "after" in reasons["s_20210601"]
    assert "area of interest" in reasons["far_20200701"]


def test_zarr_source(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    store = tmp_path / "data" / "scenes" / "s_20200101.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    raw = {**GOOD, "scenes": {"type": "zarr", "root": "data", "glob": "scenes/*.zarr"}}
    selection = find_scenes(load_region(_write(tmp_path, raw), roots=roots))
    assert [(s.id, s.acquired) for s in selection.scenes] == [("s_20200101", date(2020, 1, 1))]


def test_stac_source_filters_by_date_and_cloud_cover(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    cat_dir = tmp_path / "data" / "stac"
    catalog = pystac.Catalog(id="scenes", description="test scenes")
    for k, (day, cloud) in enumerate([(1, 5.0), (2, 80.0), (3, 10.0)]):
        tif = cat_dir / f"scene{k}.tif"
        tif.parent.mkdir(parents=True, exist_ok=True)
        _tif(tif)
        item = pystac.Item(
            f"scene{k}",
            {"type": "Point", "coordinates": [15, 0]},
            [15, 0, 15, 0],
            datetime(2021, 5, day, tzinfo=UTC),
            {"eo:cloud_cover": cloud},
        )
        item.add_asset("image", pystac.Asset(str(tif), roles=["data"]))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(cat_dir))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    raw = {
        **GOOD,
        "scenes": {
            "type": "stac",
            "root": "data",
            "path": "stac/catalog.json",
            "asset": "image",
            "end": "2021-05-02",
            "max_cloud_cover": 20,
        },
    }
    selection = find_scenes(load_region(_write(tmp_path, raw), roots=roots))
    assert [s.id for s in selection.scenes] == ["scene0"]
    assert dict(selection.skipped)["scene1"].startswith("cloud cover 80%")
    assert "after" in dict(selection.skipped)["scene2"]


def test_cron_and_dates() -> None:
    assert validate_cron("*/15 0-6,22 1 jan-mar mon-fri") == "*/15 0-6,22 1 jan-mar mon-fri"
    with pytest.raises(CatalogError, match="empty range"):
        validate_cron("0 9-5 * * *")
    assert date_from_name("m_4709963_se_14_1_20190904") == date(2019, 9, 4)
    assert date_from_name("1985") == date(1985, 1, 1)
    assert date_from_name("scene") is None


def test_shipped_naip_region_finds_real_scenes(shared_data: Path) -> None:
    roots = Roots({"data": shared_data, "out": shared_data, "project": shared_data})
    selection = find_scenes(load_region("naip-north-dakota", roots=roots))
    assert len(selection.scenes) == 6 and len(selection.skipped) == 4
    landsat = find_scenes(load_region("landsat-timeseries", roots=roots))
    assert [s.acquired.year for s in landsat.scenes] == [
        1985,
        1990,
        1995,
        2000,
        2005,
        2010,
        2015,
        2020,
    ]
