"""Scene-level region report on real masks (NDWI/NDBI + Otsu of real Landsat pixels).

Region areas, counts and centroids are checked against an independent
``skimage.measure.label`` pass and the file's own transform, not against the report's
code path; lon/lat against where the scenes actually are (Raleigh NC; Gewata, Ethiopia).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject
from skimage.measure import label

from pipeline.apg import binary_mask, otsu_threshold, size_class
from pipeline.errors import SceneError, SpexInputError
from pipeline.indices import index_from_stack
from pipeline.outputs.report import build_report, report_to_markdown, write_report

L7_BANDS = ["B", "G", "R", "N", "S1"]  # ETM+ bands 1-5 of the Raleigh stack (data README)
GEWATA_BANDS = ["B", "G", "R", "N", "S1", "S2"]  # TM bands 1-5, 7 of the bundled crop
RALEIGH = {"pixel_m2": 28.5 * 28.5, "lonlat": (-78.6, 35.8)}
GEWATA = {"pixel_m2": 30.0 * 30.0, "lonlat": (36.07, 7.55)}
PROVENANCE = {"extractor": "index+otsu", "threshold": 0.0123456789012345, "tile": [512, 64]}


def _index_mask(
    path: Path, index: str, bands: list[str] = L7_BANDS, nodata_from: Path | None = None
) -> tuple[np.ndarray, dict]:
    """uint8 mask (1/0/255) of ``index > Otsu`` over the valid pixels of a real stack.

    ``nodata_from``: a label raster whose nodata also makes the mask nodata (the Gewata
    imagery is complete, its land-cover map is not; this gives a real nodata border).
    """
    with rasterio.open(path) as src:
        pixels = src.read().astype(np.float32)
        nodata = src.nodata
        profile = {"crs": src.crs, "transform": src.transform}
    pixels[pixels == nodata] = np.nan
    if nodata_from is not None:
        with rasterio.open(nodata_from) as lab:
            pixels[:, lab.read(1) == lab.nodata] = np.nan
    values = index_from_stack(index, pixels, bands)
    return binary_mask(values, otsu_threshold(values), "above"), profile


def _write(
    path: Path, mask: np.ndarray, crs: CRS | None, transform: Affine, *, overviews=()
) -> Path:
    profile = {
        "driver": "GTiff",
        "dtype": "uint8",
        "count": 1,
        "height": mask.shape[0],
        "width": mask.shape[1],
        "nodata": 255,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "transform": transform,
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask, 1)
        if overviews:
            dst.build_overviews(list(overviews), Resampling.nearest)
    return path


@pytest.fixture(scope="module")
def sample_mask(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """NDVI mask of the bundled Gewata crop (200 x 200 at 30 m, nodata where the
    land-cover map has none)."""
    mask, prof = _index_mask(
        samples / "landsat_gewata_crop.tif",
        "NDVI",
        GEWATA_BANDS,
        nodata_from=samples / "landsat_gewata_crop_lulc.tif",
    )
    path = tmp_path_factory.mktemp("sample") / "gewata_crop_vegetation.tif"
    return _write(path, mask, CRS.from_epsg(32636), prof["transform"]), mask


@pytest.fixture(scope="module")
def scene_mask(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """NDWI mask of the whole Raleigh scene, EPSG:32119, as the brief describes."""
    mask, prof = _index_mask(shared_data / "l7-raleigh" / "landsat_multiband.tif", "NDWI")
    path = tmp_path_factory.mktemp("scene") / "raleigh_water.tif"
    return _write(path, mask, CRS.from_epsg(32119), prof["transform"]), mask, prof["transform"]


def _check_against_labelling(
    report: dict, mask: np.ndarray, transform: Affine, place: dict
) -> None:
    """Areas, totals and centroids vs an independent labelling of the same mask."""
    pixel_m2, lonlat = place["pixel_m2"], place["lonlat"]
    labels, n = label(mask == 1, connectivity=2, return_num=True)
    sizes = np.bincount(labels.ravel())[1:]
    top = np.sort(sizes)[::-1][:10]
    tot = report["totals"]
    assert tot["regions"] == n
    assert tot["regions_listed"] == min(10, n)
    assert [r["area_m2"] for r in report["regions"]] == pytest.approx(top * pixel_m2, abs=0.01)
    assert [r["rank"] for r in report["regions"]] == list(range(1, len(top) + 1))
    n_target = int((mask == 1).sum())
    n_valid = int((mask != 255).sum())
    assert tot["target_area_m2"] == pytest.approx(n_target * pixel_m2, abs=0.01)
    assert tot["valid_area_m2"] == pytest.approx(n_valid * pixel_m2, abs=0.01)
    assert tot["scene_area_m2"] == pytest.approx(mask.size * pixel_m2, abs=0.01)
    assert tot["target_share_of_valid"] == pytest.approx(n_target / n_valid, abs=1e-6)
    assert tot["nodata_share"] == pytest.approx(1 - n_valid / mask.size, abs=1e-6)
    # every listed region that has a unique size: centroid and box from the transform
    for r in report["regions"]:
        ids = np.flatnonzero(sizes == round(r["area_m2"] / pixel_m2)) + 1
        if len(ids) != 1:
            continue
        rows, cols = np.nonzero(labels == ids[0])
        x, y = transform @ (cols.mean() + 0.5, rows.mean() + 0.5)
        assert r["centroid_map"] == pytest.approx([x, y], abs=2e-3)
        xmin, ymin = transform @ (cols.min(), rows.max() + 1)  # north-up: last row is south
        xmax, ymax = transform @ (cols.max() + 1, rows.min())
        assert r["bbox_map"] == pytest.approx([xmin, ymin, xmax, ymax], abs=2e-3)
        assert r["bbox_pixels"] == [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
        assert r["size_class"] == size_class(len(rows) / mask.size)
        lon, lat = r["centroid_lonlat"]
        assert abs(lon - lonlat[0]) < 0.3 and abs(lat - lonlat[1]) < 0.3
        w, s, e, n_ = r["bbox_lonlat"]
        assert w <= lon <= e and s <= lat <= n_


def test_sample_report_matches_independent_labelling(sample_mask) -> None:
    path, mask = sample_mask
    with rasterio.open(path) as src:
        transform = src.transform
    report = build_report(
        path, target="vegetation", scene_name="gewata-crop", provenance=PROVENANCE
    )
    assert report["mask"]["crs"] == "EPSG:32636"
    assert report["analysis"]["full_resolution"] is True
    assert 0 < report["totals"]["nodata_share"] < 0.6  # the crop keeps part of the border
    _check_against_labelling(report, mask, transform, GEWATA)


def test_scene_report_matches_independent_labelling(scene_mask) -> None:
    path, mask, transform = scene_mask
    report = build_report(path, target="water", scene_name="raleigh", provenance=PROVENANCE)
    assert report["mask"]["shape"] == [443, 489]
    # the data README: about 15 % of the Raleigh scene is nodata border
    assert 0.12 < report["totals"]["nodata_share"] < 0.18
    _check_against_labelling(report, mask, transform, RALEIGH)


def test_decimated_read_is_close_to_full_resolution(shared_data: Path, tmp_path: Path) -> None:
    """Forced decimation reads the nearest overview and keeps areas within a few %.

    NDBI mask: its largest region is compact. (On the speckled NDWI mask the totals hold
    just as well, but halving the resolution breaks one-pixel links and splits its
    largest region, as any raster decimation must.)
    """
    mask, prof = _index_mask(shared_data / "l7-raleigh" / "landsat_multiband.tif", "NDBI")
    path = _write(
        tmp_path / "raleigh_building.tif",
        mask,
        CRS.from_epsg(32119),
        prof["transform"],
        overviews=(2, 4),
    )
    kw = {"target": "building", "scene_name": "raleigh", "provenance": {}}
    full = build_report(path, **kw)
    half = build_report(path, max_pixels=mask.size // 3, **kw)
    ana = half["analysis"]
    assert full["analysis"]["full_resolution"] and not ana["full_resolution"]
    assert ana["decimation"] == 2 and ana["shape"] == [222, 245]
    assert "from the 28.5 m mask" in ana["note"]
    assert ana["resolution"] == pytest.approx([57, 57], rel=0.01)
    assert half["mask"]["overviews"] == [2, 4]
    for key in ("target_area_m2", "valid_area_m2"):
        assert half["totals"][key] == pytest.approx(full["totals"][key], rel=0.02)
    assert half["totals"]["scene_area_m2"] == pytest.approx(full["totals"]["scene_area_m2"])
    big_full, big_half = full["regions"][0], half["regions"][0]
    assert big_half["area_m2"] == pytest.approx(big_full["area_m2"], rel=0.05)
    assert big_half["centroid_map"] == pytest.approx(big_full["centroid_map"], abs=60)


def test_geographic_mask_uses_geodesic_cell_areas(sample_mask, tmp_path: Path) -> None:
    """The same real mask warped to EPSG:4326 keeps its areas (degree cells are not m2)."""
    path, mask = sample_mask
    with rasterio.open(path) as src:
        dst_crs = CRS.from_epsg(4326)
        transform, width, height = calculate_default_transform(
            src.crs, dst_crs, src.width, src.height, *src.bounds
        )
        warped = np.full((height, width), 255, dtype=np.uint8)
        reproject(
            mask,
            warped,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=dst_crs,
            src_nodata=255,
            dst_nodata=255,
            resampling=Resampling.nearest,
        )
    geo = _write(tmp_path / "geo.tif", warped, dst_crs, transform)
    kw = {"target": "vegetation", "scene_name": "gewata-crop", "provenance": {}}
    planar, geodesic = build_report(path, **kw), build_report(geo, **kw)
    assert geodesic["analysis"]["area_method"].startswith("geodesic")
    assert geodesic["mask"]["units"] == "deg"
    for key in ("target_area_m2", "valid_area_m2"):
        assert geodesic["totals"][key] == pytest.approx(planar["totals"][key], rel=0.03)
    # per-region areas add up to the rows they cover (largest region, same place)
    assert geodesic["regions"][0]["area_m2"] == pytest.approx(
        planar["regions"][0]["area_m2"], rel=0.05
    )
    assert geodesic["regions"][0]["centroid_lonlat"] == pytest.approx(
        planar["regions"][0]["centroid_lonlat"], abs=1e-3
    )


def test_writers_are_deterministic_and_readable(sample_mask, tmp_path: Path) -> None:
    path, _ = sample_mask
    descriptions = [
        {"tile_id": "000001_y0_x64", "row_off": 0, "col_off": 64, "text": "A river | bends.\nEnd"},
        {"tile_id": "000000_y0_x0", "row_off": 0, "col_off": 0, "text": "Two ponds."},
        {"tile_id": "000002_y64_x0", "row_off": 64, "col_off": 0, "text": "  "},
    ]
    kw = {"target": "vegetation", "scene_name": "gewata-crop", "provenance": PROVENANCE}
    paths = []
    for run in ("a", "b"):
        report = build_report(path, descriptions=descriptions, **kw)
        paths.append(write_report(report, tmp_path / f"{run}.json", tmp_path / f"{run}.md"))
    (ja, ma), (jb, mb) = paths
    assert ja.read_bytes() == jb.read_bytes()
    assert ma.read_bytes() == mb.read_bytes()
    data = json.loads(ja.read_text(encoding="utf-8"))
    assert data == report
    assert [d["tile_id"] for d in data["descriptions"]] == ["000000_y0_x0", "000001_y0_x64"]
    assert data["provenance"]["threshold"] == 0.0123456789
    md = ma.read_text(encoding="utf-8")
    assert md.startswith("# Vegetation regions in gewata-crop\n")
    for heading in ("## Summary", "## Largest regions", "## Provenance", "## Descriptions"):
        assert heading in md
    assert "> A river | bends.\n> End" in md and "`threshold`" in md
    assert "| 1 | " in md and "Analysed at full resolution (30 m)." in md


def test_empty_and_all_nodata_masks(sample_mask, tmp_path: Path) -> None:
    path, mask = sample_mask
    with rasterio.open(path) as src:
        crs, transform = src.crs, src.transform
    empty = np.where(mask == 255, 255, 0).astype(np.uint8)
    kw = {"target": "water", "scene_name": "empty", "provenance": {}}
    report = build_report(_write(tmp_path / "empty.tif", empty, crs, transform), **kw)
    assert report["regions"] == [] and report["totals"]["regions"] == 0
    assert (
        report["totals"]["target_area_m2"] == 0 and report["totals"]["target_share_of_valid"] == 0
    )
    assert "No water region was extracted." in report_to_markdown(report)
    nodata = np.full_like(mask, 255)
    report = build_report(_write(tmp_path / "nodata.tif", nodata, crs, transform), **kw)
    assert report["totals"]["target_share_of_valid"] is None
    assert report["totals"]["nodata_share"] == 1.0
    write_report(report, tmp_path / "n.json", tmp_path / "n.md")  # no NaN reaches JSON


def test_bad_inputs_are_refused(sample_mask, tmp_path: Path) -> None:
    path, mask = sample_mask
    no_crs = _write(tmp_path / "nocrs.tif", mask, None, Affine(30, 0, 0, 0, -30, 0))
    kw = {"target": "water", "scene_name": "x", "provenance": {}}
    with pytest.raises(SceneError, match="no CRS"):
        build_report(no_crs, **kw)
    with pytest.raises(SpexInputError, match="row_off"):
        build_report(path, descriptions=[{"tile_id": "t", "text": "x"}], **kw)
    with pytest.raises(SpexInputError, match="not JSON"):
        build_report(path, target="water", scene_name="x", provenance={"bad": object()})


def test_narrative_is_built_from_the_mask_and_says_where(sample_mask) -> None:
    path, mask = sample_mask
    report = build_report(path, target="vegetation", scene_name="gewata-crop", provenance={})
    tot, big = report["totals"], report["regions"][0]
    # the 3 x 3 distribution, independently: target pixels per ninth (uniform pixel area)
    h, w = mask.shape
    cuts_r, cuts_c = [0, h // 3, 2 * h // 3, h], [0, w // 3, 2 * w // 3, w]
    counts = np.array(
        [
            [
                (mask[cuts_r[i] : cuts_r[i + 1], cuts_c[j] : cuts_c[j + 1]] == 1).sum()
                for j in range(3)
            ]
            for i in range(3)
        ]
    )
    shares = counts / counts.sum()
    assert report["distribution"]["top-left"] == pytest.approx(shares[0, 0], abs=1e-6)
    assert report["distribution"]["bottom-right"] == pytest.approx(shares[2, 2], abs=1e-6)
    text = report["narrative"]
    assert text.startswith(
        f"Vegetation covers {100 * tot['target_share_of_valid']:.1f} % of the scene's valid area"
    )
    assert f"in {tot['regions']:,} separate regions." in text
    assert f"lies in the {big['location']} of the scene" in text
    assert f"{100 * tot['nodata_share']:.1f} % of the scene is nodata" in text
    md = report_to_markdown(report)
    assert md.index("## The scene in words") < md.index("## Descriptions") < md.index("## Summary")
    assert text in md
    again = build_report(path, target="vegetation", scene_name="gewata-crop", provenance={})
    assert again["narrative"] == text  # deterministic


def test_narrative_of_an_empty_mask(sample_mask, tmp_path: Path) -> None:
    path, mask = sample_mask
    with rasterio.open(path) as src:
        crs, transform = src.crs, src.transform
    empty = np.where(mask == 255, 255, 0).astype(np.uint8)
    report = build_report(
        _write(tmp_path / "empty.tif", empty, crs, transform),
        target="water",
        scene_name="empty",
        provenance={},
    )
    assert report["narrative"].startswith("No water was extracted: all ")
    assert report["distribution"] == {} and report["truthfulness"] is None


def test_checked_descriptions_are_flagged_in_the_report(sample_mask, samples: Path) -> None:
    """Texts checked against windows of a real mask with the real pixels: a true and a
    false description, then the report's summary and Markdown flags."""
    from pipeline.outputs.descriptions import check_descriptions
    from pipeline.scene import open_scene

    path, mask = sample_mask
    scene = open_scene(str(samples / "landsat_gewata_crop.tif"), sensor="landsat-tm")
    window = mask[0:100, 100:200]
    share = (window == 1).sum() / (window != 255).sum()
    true_text = f"Vegetation covers about {round(100 * share)}% of the patch."
    records = [
        {"tile": "a", "row": 0, "col": 100, "height": 100, "width": 100, "text": true_text},
        {"tile": "b", "row": 100, "col": 0, "height": 100, "width": 100,
         "text": "There is no vegetation in this patch. The rest is water."},
    ]  # fmt: skip
    checked = check_descriptions(records, path, scene, "vegetation")
    assert checked[0]["check"]["passed"] and checked[0]["check"]["score"] == 1.0
    assert not checked[1]["check"]["passed"]
    verdicts = [s["verdict"] for s in checked[1]["check"]["statements"]]
    assert verdicts == ["false", "false"]  # vegetation is there; 'water' is not the target
    assert checked[1]["facts"]["regions"] > 0
    report = build_report(
        path, target="vegetation", scene_name="g", provenance={}, descriptions=checked
    )
    truth = report["truthfulness"]
    assert (truth["statements_true"], truth["statements_false"]) == (1, 2)
    assert truth["descriptions_passed"] == 1 and truth["share_true"] == pytest.approx(1 / 3, 1e-3)
    md = report_to_markdown(report)
    assert "**1 of 3 checkable statements are true (33.33 %)**" in md
    assert "**Check: passed**" in md and "**Check: FAILED**" in md
    assert "> [FALSE: absence 'no vegetation', mask: " in md
    assert f"> [true] {true_text}" in md
    off = build_report(
        path, target="vegetation", scene_name="g", provenance={}, descriptions_requested=False
    )
    assert "Descriptions were not requested (`--no-describe`)." in report_to_markdown(off)
