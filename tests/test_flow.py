"""The extract-scene flow through real Prefect: test harness, Dask workers, deployments."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.extract import ExtractionSettings, run_extraction
from pipeline.outputs.cog import validate_cog

REPO = Path(__file__).resolve().parents[1]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
PREFECT = Path(sys.executable).with_name("prefect")
SETTINGS = {"target": "water", "tile": 256, "overlap": 32}


def _outputs(paths: dict[str, str | None]) -> dict[str, bytes]:
    return {k: Path(v).read_bytes() for k, v in paths.items() if v and Path(v).is_file()}


@pytest.fixture(scope="module")
def harness() -> Iterator[str]:
    """A real (temporary) Prefect API server for the flows of this module."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="module")
def reference_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """The same job run in-process without Prefect (the CLI path)."""
    out = tmp_path_factory.mktemp("reference")
    return run_extraction(str(BERLIN), ExtractionSettings(**SETTINGS), out)


@pytest.fixture(scope="module")
def reference(reference_paths: dict[str, str | None]) -> dict[str, bytes]:
    return _outputs(reference_paths)


def test_flow_writes_the_same_bytes_as_the_cli_path(
    harness: str, reference: dict[str, bytes], tmp_path: Path
) -> None:
    from flows.extract_scene import extract_scene

    results = extract_scene(scene=str(BERLIN), out_dir=str(tmp_path), model="index", **SETTINGS)
    assert len(results) == 1
    assert _outputs(results[0]) == reference


def test_dask_cluster_gives_identical_outputs(
    harness: str, reference: dict[str, bytes], tmp_path: Path
) -> None:
    """Tile tasks on a 2-worker Dask LocalCluster on loopback, same bytes as in-process."""
    from distributed import LocalCluster

    from flows.extract_scene import extract_scene

    # Worker processes talk to the harness's server, not to temporary servers of their own.
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = harness
    try:
        with LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster:
            results = extract_scene(
                scene=str(BERLIN),
                out_dir=str(tmp_path),
                model="index",
                dask_address=cluster.scheduler_address,
                **SETTINGS,
            )
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
    assert _outputs(results[0]) == reference


@pytest.mark.slow
def test_deployment_run_through_server_and_worker(tmp_path: Path, prefect_server) -> None:
    """The user's sequence: server, work pool, deploy, `prefect deployment run`, worker.
    The deployment asks for the default model, so the reference is the CLI path with
    ``model='default'`` (the shipped weights, or the index where none are shipped)."""
    reference_mask = run_extraction(
        str(BERLIN), ExtractionSettings(**SETTINGS, model="default"), tmp_path / "reference"
    )["mask"]
    prefect = prefect_server.cli
    prefect("work-pool", "create", "spex-cpu", "--type", "process", "--overwrite")
    prefect("--no-prompt", "deploy", "--name", "extract-water")
    out = tmp_path / "out"
    prefect("deployment", "run", "extract-scene/extract-water", "-p", f"out_dir={out}")
    log = prefect("worker", "start", "--pool", "spex-cpu", "--run-once")
    assert "Finished in state Completed()" in log, log
    summary = json.loads(
        (out / ".spex-work" / "s2_l1c_berlin_20170216_water.done.json").read_text()
    )["outputs"]
    # The deployment names the scene by a relative path, which the provenance records, so
    # compare pixels rather than bytes here.
    assert validate_cog(summary["mask"])[0]
    with rasterio.open(summary["mask"]) as got, rasterio.open(reference_mask) as want:
        assert got.transform == want.transform and got.crs == want.crs
        np.testing.assert_array_equal(got.read(1), want.read(1))
    item = json.loads(Path(summary["stac"]).read_text())
    assert item["properties"]["spex:target"] == "water"
