"""Polygon outputs (GeoPackage, GeoParquet) of a real extraction on the Berlin sample."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import rasterio
from skimage.measure import label

from pipeline.extract import ExtractionSettings, run_extraction
from pipeline.outputs import vector
from pipeline.outputs.vector import PolygonSettings, write_polygons

gpd = pytest.importorskip("geopandas")

REPO = Path(__file__).resolve().parents[1]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
WEIGHTS = REPO / "model" / "weights" / "default"


@pytest.fixture(scope="module")
def water(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    settings = ExtractionSettings(
        target="water", tile=256, overlap=32, formats=("cog", "prob", "gpkg", "parquet")
    )
    return run_extraction(str(BERLIN), settings, tmp_path_factory.mktemp("vector"))


def test_polygon_area_equals_mask_target_area(water: dict[str, str | None]) -> None:
    with rasterio.open(water["mask"]) as src:
        mask = src.read(1)
        pixel_area = abs(src.transform.a * src.transform.e)
        crs = src.crs
    regions = label(mask == 1, connectivity=2, return_num=True)[1]
    polygons = gpd.read_file(water["gpkg"])
    report = json.loads(Path(water["report"]).read_text())
    target_area = float((mask == 1).sum()) * pixel_area
    assert len(polygons) == regions == report["totals"]["regions"] > 100
    assert polygons.crs == crs
    assert polygons.geometry.area.sum() == pytest.approx(target_area, rel=1e-12)
    assert polygons["area_m2"].sum() == pytest.approx(report["totals"]["target_area_m2"])
    assert (polygons.geometry.area.round(2) == polygons["area_m2"]).all()
    assert polygons.is_valid.all() and set(polygons.geom_type) == {"MultiPolygon"}
    # No two regions overlap: the union has the same area as the parts.
    assert polygons.geometry.union_all().area == pytest.approx(target_area, rel=1e-12)
    # Rasterised back onto the grid, the polygons are the mask.
    from rasterio.features import rasterize

    with rasterio.open(water["mask"]) as src:
        burnt = rasterize(
            polygons.geometry,
            out_shape=mask.shape,
            transform=src.transform,
            fill=0,
            default_value=1,
        )
    np.testing.assert_array_equal(burnt == 1, mask == 1)


def test_polygon_attributes_are_sensible(water: dict[str, str | None]) -> None:
    polygons = gpd.read_file(water["gpkg"])
    report = json.loads(Path(water["report"]).read_text())
    assert list(polygons["region_id"]) == list(range(1, len(polygons) + 1))
    assert set(polygons["target"]) == {"water"}
    assert polygons["mean_probability"].between(0.5, 1.0).all()  # mask = prob >= 0.5
    largest = polygons.sort_values("area_m2", ascending=False).iloc[0]
    top = report["regions"][0]
    assert largest["area_m2"] == pytest.approx(top["area_m2"])
    assert largest["size_class"] == top["size_class"]
    assert largest["location"] == top["location"]
    assert [largest["centroid_x"], largest["centroid_y"]] == pytest.approx(
        top["centroid_map"], abs=1e-3
    )
    assert polygons["tile"].str.match(r"^\d{6}_y\d+_x\d+$").all()
    assert polygons["description"].isna().all()  # the index extractor writes no text
    # GeoParquet holds the same features.
    parquet = gpd.read_parquet(water["parquet"])
    assert parquet.crs == polygons.crs
    assert len(parquet) == len(polygons)
    assert parquet.geometry.area.sum() == pytest.approx(polygons.geometry.area.sum())


def test_polygons_listed_in_stac_and_gpkg_is_deterministic(
    water: dict[str, str | None], tmp_path: Path
) -> None:
    item = json.loads(Path(water["stac"]).read_text())
    assert item["assets"]["gpkg"]["href"] == f"./{Path(water['gpkg']).name}"
    assert item["assets"]["gpkg"]["type"] == "application/geopackage+sqlite3"
    assert item["assets"]["parquet"]["type"] == "application/vnd.apache.parquet"
    with sqlite3.connect(water["gpkg"]) as db:
        (last_change,) = db.execute("select last_change from gpkg_contents").fetchone()
    assert last_change.startswith("2000-01-01")
    copies = []
    for name in ("a.gpkg", "b.gpkg"):
        write_polygons(
            water["mask"],
            tmp_path / name,
            probability=Path(water["probability"]),
            settings=PolygonSettings("water", layer=Path(water["mask"]).stem),
        )
        copies.append((tmp_path / name).read_bytes())
    assert copies[0] == copies[1]


def test_strips_join_regions_across_borders(
    water: dict[str, str | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the mask 16 rows at a time gives the same regions as reading it whole."""
    whole = gpd.read_file(water["gpkg"])
    monkeypatch.setattr(vector, "STRIP_PIXELS", 768 * 16)
    out = tmp_path / "strips.gpkg"
    n = write_polygons(
        water["mask"],
        out,
        probability=Path(water["probability"]),
        settings=PolygonSettings("water"),
    )
    strips = gpd.read_file(out)
    assert n == len(whole)
    a = whole.sort_values(["area_px", "centroid_x", "centroid_y"]).reset_index(drop=True)
    b = strips.sort_values(["area_px", "centroid_x", "centroid_y"]).reset_index(drop=True)
    for col in ("area_px", "area_m2", "size_class", "location", "mean_probability"):
        assert list(a[col]) == list(b[col]), col
    assert a.geometry.symmetric_difference(b.geometry).area.max() == 0


def test_simplification_keeps_shapes_within_the_tolerance(
    water: dict[str, str | None], tmp_path: Path
) -> None:
    exact = gpd.read_file(water["gpkg"])
    out = tmp_path / "simple.gpkg"
    write_polygons(
        water["mask"], out, probability=None, settings=PolygonSettings("water", simplify=10.0)
    )
    simple = gpd.read_file(out)
    big = exact["area_px"] >= 50  # small specks have few stairs to remove

    def vertices(df) -> int:
        return int(df.geometry[big].count_coordinates().sum())

    assert vertices(simple) < 0.7 * vertices(exact)
    assert simple.is_valid.all()
    # Attributes keep the mask's areas; large outlines move by about the tolerance.
    assert list(simple["area_m2"]) == list(exact["area_m2"])
    assert simple["mean_probability"].isna().all()
    moved = simple.geometry.hausdorff_distance(exact.geometry)[big]
    assert (moved <= 1.5 * 10.0).all()
    ratio = (simple.geometry.area / exact.geometry.area)[big]
    assert ratio.between(0.85, 1.15).all()


@pytest.mark.skipif(
    not (WEIGHTS / "model.safetensors").is_file(), reason="default weights not present"
)
def test_spex_descriptions_reach_the_polygons(tmp_path: Path, monkeypatch) -> None:
    """With the shipped SPEX, each polygon carries the description of its centroid's tile
    and that description's truthfulness score, checked against the mask."""
    monkeypatch.setenv("SPEX_MODEL_REGISTRY", str(tmp_path / "empty-registry"))
    settings = ExtractionSettings(
        target="water", model="spex", tile=384, overlap=32, batch_size=4, formats=("gpkg",)
    )
    paths = run_extraction(str(BERLIN), settings, tmp_path / "out")
    polygons = gpd.read_file(paths["gpkg"])
    report = json.loads(Path(paths["report"]).read_text())
    texts = {d["tile_id"]: d["text"] for d in report["descriptions"]}
    scores = {d["tile_id"]: d.get("check", {}).get("score") for d in report["descriptions"]}
    assert len(polygons) > 0 and texts
    for tile, text, score in zip(
        polygons["tile"], polygons["description"], polygons["truthfulness"], strict=True
    ):
        assert text == texts.get(tile)
        expected = scores.get(tile)
        assert (np.isnan(score) and expected is None) or score == pytest.approx(expected)
    assert polygons["description"].notna().any()
    scored = polygons["truthfulness"].dropna()
    assert scored.between(0.0, 1.0).all()  # NaN: nothing in the text could be checked


def test_cli_refuses_a_negative_tolerance_cleanly(tmp_path: Path) -> None:
    import subprocess
    import sys

    spex = Path(sys.executable).with_name("spex")
    out = tmp_path / "out"
    run = subprocess.run(
        [
            str(spex),
            "extract",
            "water",
            str(BERLIN),
            "--out",
            str(out),
            "--format",
            "gpkg",
            "--simplify",
            "-1",
            "--model",
            "index",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == "error: --simplify must be >= 0 (map units), got -1.0"
    assert not out.exists()


def test_no_region_gives_an_empty_layer_with_crs(
    water: dict[str, str | None], tmp_path: Path
) -> None:
    """A mask without target pixels (the sample's mask, all set to 'other') still gives a
    layer analysts can open: no features, the right CRS and fields."""
    with rasterio.open(water["mask"]) as src:
        profile = {**src.profile, "driver": "GTiff"}
        empty = np.where(src.read(1) == 255, 255, 0).astype(np.uint8)
    path = tmp_path / "none.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(empty, 1)
    for suffix, read in (("gpkg", gpd.read_file), ("parquet", gpd.read_parquet)):
        out = tmp_path / f"none.{suffix}"
        assert write_polygons(path, out, probability=None, settings=PolygonSettings("water")) == 0
        layer = read(out)
        assert len(layer) == 0 and layer.crs.to_epsg() == 32633
        assert "area_m2" in layer.columns
