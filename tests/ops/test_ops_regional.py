"""The regional-mapping flow on the real NAIP epochs: mosaics, STAC collection, change
report; drill 2 (one unreadable scene); and the deployment through a server and worker."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pystac
import pytest
import rasterio

from pipeline.outputs.cog import validate_cog

REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")
NAIP = "naip-north-dakota/m_4709963_se_14_1_*.tif"


@pytest.fixture(scope="module")
def harness() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


def test_regional_run_writes_mosaics_collection_and_change_report(
    harness: str, region_env: dict[str, Path], naip_region: Callable[..., Path]
) -> None:
    from flows.regional_mapping import regional_mapping

    catalog = naip_region(region_env["catalogs"], "nd-test", NAIP, start="2018-01-01")
    first = regional_mapping(region=str(catalog), run_id="20240101T060000Z")
    assert first["status"] == "complete" and not first["failed"]
    report = json.loads(Path(first["report"]).read_text())
    assert [s["scene"][-8:] for s in report["scenes"]["selected"]] == [
        "20180716",
        "20190904",
        "20200831",
    ]
    assert report["aoi"]["area_m2"] == pytest.approx(4500 * 3500)
    for target in ("water", "vegetation"):
        mosaic = Path(first["mosaics"][target])
        assert validate_cog(mosaic)[0]
        with rasterio.open(mosaic) as src:
            assert src.crs.to_epsg() == 26914 and src.res == (5.0, 5.0)
            assert json.loads(src.tags()["SPEX_MOSAIC_SCENES"])[0].endswith("20200831")
        t = report["targets"][target]
        assert 0 < t["area_m2"] < t["observed_m2"] <= report["aoi"]["area_m2"]
        assert t["change"] is None  # first run of the region
    collection = pystac.Collection.from_file(first["collection"])
    items = list(collection.get_items())
    assert len(items) == 3 * 2 + 2
    for item in items:
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).exists(), asset.href

    # A week later: same scenes, so no change, and the per-scene work is reused.
    second = regional_mapping(region=str(catalog), run_id="20240108T060000Z")
    change = json.loads(Path(second["report"]).read_text())["targets"]["water"]["change"]
    assert change["previous_run"] == "20240101T060000Z"
    assert change["delta_m2"] == 0 and change["gained_m2"] == 0 and change["lost_m2"] == 0
    assert change["compared"] == "pixels and areas"


def test_drill_one_unreadable_scene_in_a_regional_run(
    harness: str,
    region_env: dict[str, Path],
    naip_region: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    drill_log: Callable[..., None],
) -> None:
    from flows.regional_mapping import regional_mapping

    data = tmp_path / "data"
    (data / "naip").mkdir(parents=True)
    for day in ("20190904", "20200831"):
        name = f"m_4709963_se_14_1_{day}.tif"
        shutil.copy(region_env["data"] / "naip-north-dakota" / name, data / "naip" / name)
    bad = data / "naip" / "m_4709963_se_14_1_20210801.tif"
    bad.write_bytes(b"II*\x00" + os.urandom(4096))  # a TIFF header, then garbage
    monkeypatch.setenv("SPEX_DATA_ROOT", str(data))
    catalog = naip_region(region_env["catalogs"], "nd-drill", "naip/*.tif")

    result = regional_mapping(region=str(catalog), run_id="20240101T060000Z")
    assert result["status"] == "partial"
    failed = {(f["scene"], f["target"]): f["error"] for f in result["failed"]}
    assert set(failed) == {(bad.stem, "water"), (bad.stem, "vegetation")}
    assert all("cannot read scene file" in e and bad.name in e for e in failed.values())
    report = json.loads(Path(result["report"]).read_text())
    md = Path(result["report"]).with_suffix(".md").read_text()
    assert "## Missing scenes" in md and bad.stem in md
    lost = 0
    for target, path in result["mosaics"].items():
        assert validate_cog(path)[0]
        with rasterio.open(path) as src:
            tags = src.tags()
        assert json.loads(tags["SPEX_MOSAIC_MISSING"])[0]["scene"] == bad.stem
        assert len(json.loads(tags["SPEX_MOSAIC_SCENES"])) == 2
        assert report["targets"][target]["missing_scenes"][0]["scene"] == bad.stem
        lost += len(report["targets"][target]["scenes_used"]) != 2
    collection = pystac.Collection.from_file(result["collection"])
    assert collection.extra_fields["spex:missing_scenes"] == [bad.stem]
    drill_log("2 unreadable scene in a regional run", runs=1, faults=1, files_lost=lost)
    assert lost == 0


@pytest.mark.slow
def test_regional_deployment_through_server_and_worker(
    tmp_path: Path, region_env: dict[str, Path], naip_region: Callable[..., Path], prefect_server
) -> None:
    """The prefect.yaml entry: deploy (paused, cron), run it, a worker executes."""
    catalog = naip_region(region_env["catalogs"], "nd-deploy", NAIP, start="2019-01-01")
    prefect = prefect_server.cli
    prefect("work-pool", "create", "spex-cpu", "--type", "process", "--overwrite")
    prefect("--no-prompt", "deploy", "--name", "regional-mapping")
    inspect = prefect("deployment", "inspect", "regional-mapping/regional-mapping")
    assert "'paused': True" in inspect and "0 6 * * 1" in inspect
    prefect(
        "deployment",
        "run",
        "regional-mapping/regional-mapping",
        "-p",
        f"region={catalog}",
        "-p",
        "run_id=20240101T060000Z",
    )
    log = prefect("worker", "start", "--pool", "spex-cpu", "--run-once", timeout=400)
    assert "Finished in state Completed()" in log, log[-3000:]
    run = region_env["out"] / "regions" / "nd-deploy" / "runs" / "20240101T060000Z"
    report = json.loads((run / "run_report.json").read_text())
    assert report["status"] == "complete" and set(report["targets"]) == {"water", "vegetation"}
    assert (run / "stac" / "collection.json").is_file()
    assert all(validate_cog(run / f"nd-deploy_{t}_mosaic.tif")[0] for t in report["targets"])
