"""Shared test fixtures: where the real data lives, and an offline environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
PREFECT = Path(sys.executable).with_name("prefect")
SHARED_DATA = Path(os.environ.get("SPEX_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect keeps its database and settings under PREFECT_HOME: never the user's own.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="spex-prefect-home-")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def two_scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Catalog files of two small real scenes at two places, cut from the bundled
    samples (tests/fixtures/two_scenes.py): leave-one-scene-out and retraining tests."""
    import importlib.util

    path = REPO / "tests" / "fixtures" / "two_scenes.py"
    spec = importlib.util.spec_from_file_location("spex_two_scenes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_two_scenes(tmp_path_factory.mktemp("two-scenes"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real scenes in ../shared/data; tests that need them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def samples() -> Path:
    """The small real samples bundled with the project (always present)."""
    return SAMPLES


class PrefectServer:
    """A real `prefect server` on a free loopback port, and the CLI pointed at it.

    Used by the tests that walk the user's deployment sequence (work pool, deploy,
    `prefect deployment run`, worker) end to end.
    """

    def __init__(self, home: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"http://127.0.0.1:{self.port}/api",
            "SPEX_PROJECT_DIR": str(REPO),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "400",  # the CLI's tables truncate names to the terminal width
        }
        self.process = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                url = f"http://127.0.0.1:{self.port}/api/health"
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    pytest.fail("prefect server did not become healthy")
                time.sleep(1)

    def cli(self, *args: str, timeout: int = 300) -> str:
        """Run `prefect ARGS` from the project folder; returns stdout + stderr."""
        run = subprocess.run(
            [str(PREFECT), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout + run.stderr

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def gewata_with_border(samples: Path, tmp_path: Path) -> Path:
    """The Gewata crop with fill where its land-cover map is unmapped.

    The Gewata imagery has no nodata pixel of its own, but its map stops at a real border
    that crosses the bundled window (whole rows of it unmapped). Writing the file's own
    declared fill value there gives a scene with a real-shaped nodata border, stored the
    way products store one, so nodata handling is tested on real pixels around it.
    """
    with rasterio.open(samples / "landsat_gewata_crop_lulc.tif") as lab:
        unmapped = lab.read(1) == lab.nodata
    with rasterio.open(samples / "landsat_gewata_crop.tif") as src:
        assert src.nodata == -32768  # the imagery's declared fill value
        data, profile, names = src.read(), src.profile, src.descriptions
    data[:, unmapped] = profile["nodata"]  # the file's own declared fill value
    path = tmp_path / "gewata_with_border.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    return path


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path / "prefect-home")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def raleigh_pixels(shared_data: Path) -> np.ndarray:
    """Landsat-7 ETM+ Raleigh stack, bands B,G,R,N,S1 as float32 DN, NaN at nodata."""
    with rasterio.open(shared_data / "l7-raleigh" / "landsat_multiband.tif") as src:
        pixels = src.read()
        nodata = src.nodata
    return np.where(pixels == nodata, np.float32(np.nan), pixels).astype(np.float32)
