"""The whole-scene extraction job on real scenes: outputs, seams, resume, nodata, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from pipeline.apg import binary_mask
from pipeline.errors import CatalogError, MissingBandError, OutputError, SpexInputError
from pipeline.extract import (
    ExtractionSettings,
    finalise,
    plan_extraction,
    run_batch,
    run_batches,
    run_extraction,
)
from pipeline.index_extractor import IndexExtractor
from pipeline.indices import compute_index
from pipeline.outputs.cog import validate_cog
from pipeline.scene import open_scene

REPO = Path(__file__).resolve().parents[1]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
SPEX = Path(sys.executable).with_name("spex")


def _bytes(paths: dict[str, str | None]) -> dict[str, bytes]:
    """Bytes of every output file (Zarr stores: every file inside, by relative path)."""
    out: dict[str, bytes] = {}
    for key, value in paths.items():
        if value is None:
            continue
        path = Path(value)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                out[f"{key}/{f.relative_to(path)}"] = f.read_bytes()
        else:
            out[key] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def berlin_water(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    out = tmp_path_factory.mktemp("berlin")
    settings = ExtractionSettings(
        target="water", tile=256, overlap=32, formats=("cog", "prob", "zarr", "gpkg", "parquet")
    )
    return run_extraction(str(BERLIN), settings, out)


def test_outputs_are_valid_and_georeferenced(berlin_water: dict[str, str | None]) -> None:
    assert set(berlin_water) == {
        "mask",
        "probability",
        "zarr",
        "gpkg",
        "parquet",
        "stac",
        "quicklook",
        "report",
    }
    for key in ("mask", "probability"):
        valid, errors, _ = validate_cog(berlin_water[key])
        assert valid, errors
    with rasterio.open(BERLIN) as src, rasterio.open(berlin_water["mask"]) as mask:
        assert mask.crs == src.crs
        assert mask.transform == src.transform
        assert mask.shape == src.shape
        assert mask.nodata == 255
        assert mask.overviews(1), "mask COG has no overviews"
        values = set(np.unique(mask.read(1)).tolist())
        assert values <= {0, 1, 255} and 1 in values
        tags = mask.tags()
        assert json.loads(tags["SPEX_EXTRACTOR"])["index"] == "NDWI"
    item = json.loads(Path(berlin_water["stac"]).read_text())
    assert item["properties"]["spex:extractor"]["extractor"] == "index-otsu"
    assert item["properties"]["proj:code"] == "EPSG:32633"
    assert item["properties"]["datetime"].startswith("2017-02-16")
    assert {"mask", "probability", "zarr", "gpkg", "parquet", "quicklook", "report"} <= set(
        item["assets"]
    )
    assert item["assets"]["mask"]["href"] == f"./{Path(berlin_water['mask']).name}"
    with Image.open(berlin_water["quicklook"]) as png:
        assert png.width >= 768 and png.height > 768
    report = json.loads(Path(berlin_water["report"]).read_text())
    assert report["target"] == "water" and report["totals"]["regions"] > 0
    assert Path(berlin_water["report"]).with_suffix(".md").is_file()


def test_zarr_output_keeps_crs(berlin_water: dict[str, str | None]) -> None:
    import xarray as xr

    ds = xr.open_zarr(berlin_water["zarr"], decode_coords="all", consolidated=False)
    assert ds.rio.crs.to_epsg() == 32633
    with rasterio.open(berlin_water["mask"]) as mask:
        np.testing.assert_array_equal(ds["mask"].values, mask.read(1))


def test_stitched_mask_equals_untiled_mask(tmp_path: Path) -> None:
    """Seams: per-pixel extractor + scene-level threshold -> tiling changes nothing."""
    settings = ExtractionSettings(target="vegetation", tile=96, overlap=16)
    plan = plan_extraction(str(BERLIN), settings, tmp_path)
    for batch in plan.pending_batches():
        run_batch(plan, [t.index for t in batch])
    paths = finalise(plan)
    scene = open_scene(str(BERLIN))
    index = compute_index("NDVI", scene).values
    expected = binary_mask(index, plan.extractor.threshold, "above", np.isfinite(index))
    with rasterio.open(paths["mask"]) as mask:
        stitched = mask.read(1)
    assert len(plan.grid) > 50
    np.testing.assert_array_equal(stitched, expected)


def test_resume_after_interruption_is_byte_identical(tmp_path: Path) -> None:
    settings = ExtractionSettings(target="water", tile=128, overlap=32, batch_size=3)
    clean = run_extraction(str(BERLIN), settings, tmp_path / "clean")

    plan = plan_extraction(str(BERLIN), settings, tmp_path / "resumed")
    batches = plan.pending_batches()
    for batch in batches[: len(batches) // 2]:  # "crash" half-way through
        run_batch(plan, [t.index for t in batch])
    assert not Path(plan.outputs.mask).exists()

    seen: list[int] = []
    resumed = run_extraction(
        str(BERLIN), settings, tmp_path / "resumed", on_plan=lambda p, n: seen.append(n)
    )
    assert seen == [len(plan.grid) - sum(len(b) for b in batches[: len(batches) // 2])]
    assert _bytes(resumed).keys() == _bytes(clean).keys()
    for key, data in _bytes(clean).items():
        assert _bytes(resumed)[key] == data, f"{key} differs after resume"

    # A rerun of a finished job is a no-op; --force recomputes every tile.
    before = {k: Path(v).stat().st_mtime_ns for k, v in resumed.items() if v}
    again: list[int] = []
    run_extraction(
        str(BERLIN), settings, tmp_path / "resumed", on_plan=lambda p, n: again.append(n)
    )
    assert again == [0]
    assert before == {k: Path(v).stat().st_mtime_ns for k, v in resumed.items() if v}
    forced: list[int] = []
    run_extraction(
        str(BERLIN),
        replace(settings, force=True),
        tmp_path / "resumed",
        on_plan=lambda p, n: forced.append(n),
    )
    assert forced == [len(plan.grid)]
    assert _bytes(resumed) == _bytes(clean)


def test_nodata_border_stays_nodata(tmp_path: Path, gewata_with_border: Path) -> None:
    """Nodata in -> 255 out. The Gewata imagery is complete but its land-cover map has a
    real nodata border; writing the imagery's own fill value there gives a real pattern."""
    source = gewata_with_border
    scene = open_scene(str(source), sensor="landsat-tm")
    invalid = ~np.isfinite(scene.values).all(axis=0)
    assert 0.1 < invalid.mean() < 0.9
    settings = ExtractionSettings(target="vegetation", sensor="landsat-tm", tile=64, overlap=16)
    paths = run_extraction(str(source), settings, tmp_path / "out")
    with rasterio.open(paths["mask"]) as mask:
        values = mask.read(1)
    assert (values[invalid] == 255).all()
    assert (values[~invalid] != 255).all()


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (ExtractionSettings(target="lava"), CatalogError, "unknown target 'lava'"),
        (
            ExtractionSettings(target="water", model="index-tile", tile=1024),
            SpexInputError,
            "smaller than one",
        ),
    ],
)
def test_bad_input_gives_clear_error_and_no_files(
    tmp_path: Path, settings: ExtractionSettings, error: type, message: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        run_extraction(str(BERLIN), settings, out)
    assert not out.exists()


def test_missing_band_is_refused(tmp_path: Path, shared_data: Path) -> None:
    naip = sorted((shared_data / "naip-north-dakota").glob("*.tif"))[0]
    out = tmp_path / "out"
    with pytest.raises(MissingBandError, match="S1"):
        run_extraction(str(naip), ExtractionSettings(target="building", sensor="naip"), out)
    assert not out.exists()


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="not writable"):
        run_extraction(str(BERLIN), ExtractionSettings(target="water", tile=256), blocker / "out")
    assert blocker.read_text() == "not a folder"


def test_cli_extract_prints_paths_and_matches_library(
    tmp_path: Path, berlin_water: dict[str, str | None]
) -> None:
    run = subprocess.run(
        [
            str(SPEX),
            "extract",
            "water",
            str(BERLIN),
            "--out",
            str(tmp_path),
            "--tile",
            "256",
            "--overlap",
            "32",
            "--format",
            "cog,prob,zarr,gpkg,parquet",
            "--model",
            "index",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    paths = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(paths["mask"]).read_bytes() == Path(berlin_water["mask"]).read_bytes()
    assert Path(paths["stac"]).read_bytes() == Path(berlin_water["stac"]).read_bytes()


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            str(SPEX),
            "extract",
            "water",
            str(BERLIN),
            "--out",
            str(tmp_path / "o"),
            "--sensor",
            "landsat99",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and "landsat99" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()


class _BlendedIndex(IndexExtractor):
    """The scene-threshold index extractor with its per-pixel flag off: planned with
    overlapping tiles and stitched by blending, as any other extractor."""

    per_pixel = False  # type: ignore[assignment]


def test_per_pixel_shortcut_gives_the_blended_outputs(tmp_path: Path) -> None:
    """A per-pixel extractor runs on tiles without overlap and is stitched without
    blending; mask and probability must be what overlapping, blended tiles give."""
    settings = ExtractionSettings(target="water", tile=128, overlap=32, formats=("cog", "prob"))
    fast = run_extraction(str(BERLIN), settings, tmp_path / "fast")
    plan = plan_extraction(str(BERLIN), settings, tmp_path / "blended", _BlendedIndex())
    assert plan.grid.overlap == 32
    for batch in plan.pending_batches():
        run_batch(plan, [t.index for t in batch])
    blended = finalise(plan)
    for key in ("mask", "probability"):
        with rasterio.open(fast[key]) as a, rasterio.open(blended[key]) as b:
            np.testing.assert_array_equal(a.read(1), b.read(1))
    with rasterio.open(fast["mask"]) as mask:
        tags = mask.tags()
        assert 0 < (mask.read(1) == 1).sum() < mask.width * mask.height
    assert (tags["SPEX_OVERLAP"], tags["SPEX_STITCHING"]) == ("0", "per-pixel, no blending")


def test_overlapped_batches_equal_one_by_one(tmp_path: Path) -> None:
    """run_batches (reads ahead and stores behind in threads) writes the very tiles that
    run_batch writes batch by batch."""
    settings = ExtractionSettings(target="water", model="index-tile", tile=128, overlap=32)
    a = plan_extraction(str(BERLIN), settings, tmp_path / "a")
    run_batches(a, a.pending_batches())
    b = plan_extraction(str(BERLIN), settings, tmp_path / "b")
    for batch in b.pending_batches():
        run_batch(b, [t.index for t in batch])
    tiles_a, tiles_b = (sorted((p.store_path / "tiles").iterdir()) for p in (a, b))
    assert [p.name for p in tiles_a] == [p.name for p in tiles_b] and len(tiles_a) == 64
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(tiles_a, tiles_b, strict=True))
