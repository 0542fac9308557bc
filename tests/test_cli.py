"""The `spex` command line on real scenes: help, sensors, info, apg, and its errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows
from skimage.filters import threshold_otsu

from pipeline.outputs.cog import validate_cog

REPO = Path(__file__).resolve().parents[1]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
SPEX = Path(sys.executable).with_name("spex")


def spex(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([str(SPEX), *args], capture_output=True, text=True)
    if check:
        assert run.returncode == 0, run.stderr
    return run


@pytest.mark.parametrize("command", ["sensors", "encodings", "info", "apg", "extract"])
def test_every_command_has_help(command: str) -> None:
    assert "Usage" in spex(command, "--help").stdout


def test_sensors_lists_every_catalog() -> None:
    out = spex("sensors").stdout
    for name in ("sentinel2-msi", "landsat-tm", "landsat-oli", "gaofen2-pms", "naip"):
        assert name in out
    encodings = spex("encodings").stdout
    for name in ("sentinel2-dn", "landsat-c2-l2", "reflectance-x10000", "uncalibrated-dn"):
        assert name in encodings


def test_info_describes_the_sample() -> None:
    facts = json.loads(spex("info", str(BERLIN), "--json").stdout)
    assert facts["sensor"] == "sentinel2-msi" and facts["encoding"] == "sentinel2-dn"
    assert facts["level"] == "L1C" and facts["plausibility"]["checked"]
    assert facts["bands"] == ["B", "G", "R", "N", "S1", "S2"]
    assert (facts["width"], facts["height"]) == (768, 768)
    assert facts["crs"] == "EPSG:32633"


def test_apg_mask_matches_an_independent_ndwi_otsu(shared_data: Path, tmp_path: Path) -> None:
    """The issue's acceptance command, checked against rasterio + skimage directly."""
    scene = shared_data / "l7-raleigh" / "landsat_multiband.tif"
    out = tmp_path / "m.tif"
    run = spex(
        "apg",
        "water",
        str(scene),
        "--sensor",
        "landsat-etm",
        "--encoding",
        "uncalibrated-dn",
        "--out",
        str(out),
        "--json",
    )
    result = json.loads(run.stdout)
    assert result["instruction"].startswith(
        "Based on the provided image and the attributes of the water regions"
    )
    assert 0 < len(result["regions"]) <= 10
    assert validate_cog(out)[0]
    with rasterio.open(scene) as src, rasterio.open(out) as mask:
        green, nir = src.read(2).astype(np.float64), src.read(4).astype(np.float64)
        valid = (src.read(1) != src.nodata) & (green != src.nodata) & (nir != src.nodata)
        assert (mask.crs, mask.transform) == (src.crs, src.transform)
        got = mask.read(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndwi = (green - nir) / (green + nir)
    valid &= np.isfinite(ndwi)
    threshold = threshold_otsu(ndwi[valid], nbins=256)
    expected = np.where(valid, (ndwi > threshold).astype(np.uint8), 255)
    assert abs(result["threshold"] - threshold) < 1e-6
    np.testing.assert_array_equal(got, expected)


def test_apg_refuses_buildings_without_swir(shared_data: Path, tmp_path: Path) -> None:
    naip = sorted((shared_data / "naip-north-dakota").glob("*.tif"))[0]
    run = spex(
        "apg",
        "building",
        str(naip),
        "--sensor",
        "naip",
        "--out",
        str(tmp_path / "m.tif"),
        check=False,
    )
    assert run.returncode == 2
    assert "NDBI needs S1" in run.stderr and "Traceback" not in run.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("garbage", "cannot"),
        ("nocrs", "no CRS"),
    ],
)
def test_bad_files_give_one_error_line(tmp_path: Path, make: str, message: str) -> None:
    bad = tmp_path / "bad.tif"
    if make == "garbage":
        bad.write_bytes(b"this is not a GeoTIFF" * 10)
    else:
        with rasterio.open(BERLIN) as src:
            data, profile = src.read(), src.profile
        profile.pop("crs")
        with rasterio.open(bad, "w", **profile) as dst:
            dst.write(data)
    out = tmp_path / "out.tif"
    run = spex("apg", "water", str(bad), "--out", str(out), check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and message in run.stderr, run.stderr
    assert not out.exists()


# ------------------------------------------------------------------ input errors (issue 11)
# Each refusal is one `error:` line, exit status 2, and no output folder.


def _refused(run: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _extract(scene: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    args = ["extract", "water", str(scene), "--out", str(out), "--model", "index"]
    return spex(*args, "--tile", "256", "--overlap", "32", *flags, check=False)


def _band_folder(folder: Path, driver: str = "JP2OpenJPEG") -> list[Path]:
    """The bundled sample as one file per band, named like a Sentinel-2 granule."""
    folder.mkdir(parents=True)
    with rasterio.open(BERLIN) as src:
        data, profile, names = src.read(), src.profile, src.descriptions
    keep = {k: profile[k] for k in ("crs", "transform", "width", "height")}
    suffix = ".jp2" if driver == "JP2OpenJPEG" else ".tif"
    options = {"REVERSIBLE": "YES", "QUALITY": 100} if driver == "JP2OpenJPEG" else {}
    options.update(driver=driver, count=1, dtype="uint16", blockxsize=256, blockysize=256)
    files = []
    for band, name in zip(data, names, strict=True):
        path = folder / f"T33UUU_20170216T102101_{name}{suffix}"
        with rasterio.open(path, "w", **keep, **options) as dst:
            dst.write(band[None])
        files.append(path)
    return files


def _truncate(path: Path, share: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])


def test_truncated_jp2_fails_before_any_output(tmp_path: Path) -> None:
    """GDAL logs "Stream too short" and returns zeros when it decodes JPEG 2000 on several
    threads; the block reader decodes on one, so the error surfaces and nothing is done."""
    folder = tmp_path / "IMG_DATA"
    files = _band_folder(folder)
    good = tmp_path / "good"
    assert _extract(folder, good).returncode == 0
    intact = files[1].read_bytes()
    _truncate(files[1], 0.4)
    out = tmp_path / "out"
    _refused(_extract(folder, out), "cannot read", files[1].name)
    assert not out.exists()
    _refused(_extract(folder, good), files[1].name)  # the done record does not hide it
    files[1].write_bytes(intact)
    assert _extract(folder, tmp_path / "again").returncode == 0


def test_cog_with_missing_tiles_is_refused(tmp_path: Path) -> None:
    cog = tmp_path / "scene.tif"
    with rasterio.open(BERLIN) as src:
        data, profile, names, tags = src.read(), dict(src.profile), src.descriptions, src.tags()
    profile.update(driver="COG", blocksize=256)
    for key in ("blockxsize", "blockysize", "tiled", "interleave"):
        profile.pop(key, None)
    with rasterio.open(cog, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    _truncate(cog, 0.7)
    out = tmp_path / "out"
    _refused(_extract(cog, out), "cannot read", str(cog))
    assert not out.exists()
    _refused(spex("info", str(cog), check=False), str(cog))


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--sensor", "landsat-tm"), "named as bands of sentinel2-msi, not of --sensor landsat-tm"),
        (("--sensor", "naip"), "not of --sensor naip"),
        (("--sensor", "reflectance-x10000"), "is an encoding: pass it with --encoding"),
        (("--encoding", "reflectance"), "holds uint16"),
        (("--encoding", "reflectance-x1000"), "does not look like reflectance"),
        (("--encoding", "landsat-c2-l2"), "is for sensor(s) landsat-tm"),
        (("--bands", "B02,B03"), "--bands names 2 bands"),
        (("--level", "L2"), "--level 'L2' is not a product level of sensor sentinel2-msi"),
    ],
)
def test_explicit_input_flags_are_checked_against_the_file(
    tmp_path: Path, flags: tuple[str, str], needle: str
) -> None:
    out = tmp_path / "out"
    _refused(_extract(BERLIN, out, *flags), needle)
    assert not out.exists()


def test_missing_scene(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _refused(_extract(tmp_path / "nope.tif", out), "scene not found")
    assert not out.exists()


@pytest.mark.parametrize(
    ("device", "needle"),
    [("banana", "is not a device; use cpu, cuda or cuda:N"), ("cuda:7", "this machine has")],
)
def test_device_is_validated(tmp_path: Path, device: str, needle: str) -> None:
    out = tmp_path / "out"
    _refused(_extract(BERLIN, out, "--device", device), needle)
    assert not out.exists()


def test_apg_out_must_be_a_file(tmp_path: Path) -> None:
    _refused(spex("apg", "water", str(BERLIN), "--out", str(tmp_path), check=False), "is a folder")
    assert not list(tmp_path.iterdir())


def test_fifo_scene_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "scene.tif"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    run = subprocess.run(
        [str(SPEX), "extract", "water", str(fifo), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _refused(run, "is a FIFO")
    assert not out.exists()


def test_crs_without_geotransform(tmp_path: Path) -> None:
    bad = tmp_path / "placeless.tif"
    with rasterio.open(BERLIN) as src:
        data, crs, names = src.read(), src.crs, src.descriptions
    with rasterio.open(
        bad, "w", driver="GTiff", width=768, height=768, count=6, dtype="uint16", crs=crs
    ) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    out = tmp_path / "out"
    _refused(_extract(bad, out), "has a CRS but no geotransform")
    assert not out.exists()


def test_out_inside_the_scene_folder(tmp_path: Path) -> None:
    folder = tmp_path / "bands"
    _band_folder(folder, driver="GTiff")
    before = sorted(p.name for p in folder.iterdir())
    _refused(_extract(folder, folder / "out"), "is inside the scene folder", "--out")
    assert sorted(p.name for p in folder.iterdir()) == before


def test_small_scene_runs_with_the_flag_its_message_names(tmp_path: Path) -> None:
    small = tmp_path / "small.tif"
    with rasterio.open(BERLIN) as src:
        window = rasterio.windows.Window(100, 100, 200, 150)
        data, profile = src.read(window=window), dict(src.profile)
        profile.update(width=200, height=150, transform=src.window_transform(window))
        names, tags = src.descriptions, src.tags()
    with rasterio.open(small, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    out = tmp_path / "out"
    # per-tile Otsu looks at the whole tile, so a smaller tile changes its result
    _refused(
        _extract(small, out, "--model", "index-tile"),
        "smaller than one 256x256 px tile",
        "--allow-small-scene",
    )
    assert not out.exists()
    run = _extract(small, out, "--model", "index-tile", "--allow-small-scene")
    assert run.returncode == 0, run.stderr
    with rasterio.open(json.loads(run.stdout)["mask"]) as mask:
        assert mask.shape == (150, 200)
    # the per-pixel index gives the same mask whatever the tile: no flag needed
    run = _extract(small, tmp_path / "index")
    assert run.returncode == 0, run.stderr
    with rasterio.open(json.loads(run.stdout)["mask"]) as mask:
        assert mask.shape == (150, 200)


def _flow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.extract_scene", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("missing.tif",), "scene not found"),
        ((str(BERLIN), "--tile", "abc"), "valid integer"),
        ((str(BERLIN), "--device", "banana"), "is not a device"),
        ((str(BERLIN), "--sensor", "landsat-tm"), "not of --sensor landsat-tm"),
        ((str(BERLIN), "--scale", "a,b"), "--scale takes numbers"),
        ((str(BERLIN), "--no-such-flag"), "No such option"),
    ],
)
def test_flow_entry_bad_input_is_one_error_line(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    out = tmp_path / "out"
    _refused(_flow("water", *args, "--out", str(out), "--model", "index"), needle)
    assert not out.exists()


# Values to try each flag with (flags without a value are boolean switches).
FLAG_VALUES = {
    "--sensor": "naip",
    "--bands": "B02,B03",
    "--encoding": "reflectance",
    "--level": "L1C",
    "--scale": "0.0001",
    "--offset": "-0.1",
    "--nodata": "0",
    "--baseline": "04.00",
    "--tile": "128",
    "--overlap": "16",
    "--out": "out",
    "--device": "cpu",
    "--format": "cog",
    "--model": "index",
    "--batch-size": "2",
    "--simplify": "10",
}
MESSAGE_SOURCES = [
    "pipeline/scene",
    "pipeline/extract.py",
    "pipeline/tiling.py",
    "pipeline/stitching.py",
    "pipeline/sensors.py",
    "pipeline/encodings.py",
    "pipeline/cli/main.py",
]


def _suggested_flags() -> set[str]:
    """Every --flag that a message in the input-handling code names."""
    flags: set[str] = set()
    for rel in MESSAGE_SOURCES:
        path = REPO / rel
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            text = source.read_text()
            strings = re.findall(r'"(?:[^"\\]|\\.)*"', text)
            for s in strings:
                flags.update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", s))
    return flags - {"--help", "--json", "--threshold"}


def test_every_suggested_flag_parses() -> None:
    """A message may only name a flag that `spex extract` takes (the flow's shell entry
    parses with the same command, `pipeline.cli.main.parse_extract`)."""
    from typer.main import get_command

    from pipeline.cli.main import app

    flags = _suggested_flags()
    assert {"--sensor", "--encoding", "--baseline", "--scale", "--allow-small-scene"} <= flags
    extract = get_command(app).commands["extract"]  # type: ignore[attr-defined]
    for flag in sorted(flags):
        param = next((p for p in extract.params if flag in p.opts + p.secondary_opts), None)
        assert param is not None, f"{flag} is named in a message but `spex extract` lacks it"
        value = [] if getattr(param, "is_flag", False) else [FLAG_VALUES[flag]]
        extract.make_context("extract", ["water", "scene.tif", flag, *value])
