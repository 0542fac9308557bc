"""Every convention of the corpus opens to the original's reflectance (within its stated
tolerance), or is refused with a message naming the flag that fixes it, and then opens
correctly with that flag; the NDWI mask of the Sentinel-2 scene is identical across all
its conventions; every convention runs through `spex extract`."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from byo_corpus import BERLIN, Case, opened_difference

from pipeline.apg import generate_prompt
from pipeline.cli import main
from pipeline.errors import SceneError
from pipeline.indices import compute_index
from pipeline.scene import open_scene

CONVENTIONS = [
    "S2 GEE export, B1..B12 names, int16 DN",
    "STAC item, per-band COGs, asset keys B02..B12",
    "STAC item, common-name keys, raster:bands scale/offset, 04.00",
    "S2 L2A baseline 04.00, PRODUCT_TYPE/PROCESSING_BASELINE tags",
    "S2 L2A baseline 04.00, no metadata",
    "S2 reflectance float32 0..1",
    "S2 reflectance x10000 as float32",
    "GDAL VRT over per-band files (SAFE-style name)",
    "S2 granule band files (JPEG 2000, *_B02_10m.jp2)",
    "Landsat SR x10000 int16, bands named 1..7 (the original)",
    "Landsat C2 L2 SR_B*.TIF files (product id names)",
    "Landsat C2 L1 DN stack, 7 bands with thermal, MTL",
    "Landsat C2 L1 DN stack, no MTL (declared fallback)",
    "NAIP 4-band uint8 (quarter-quad name)",
]


def test_corpus_has_every_convention(corpus: dict[str, Case]) -> None:
    assert list(corpus) == CONVENTIONS and len(CONVENTIONS) >= 10


@pytest.mark.parametrize("name", CONVENTIONS)
def test_convention_opens_like_the_original(corpus: dict[str, Case], name: str) -> None:
    case = corpus[name]
    if case.flags:
        with pytest.raises(SceneError) as err:
            open_scene(case.path)
        for flag in case.cli_flags()[::2]:
            assert flag in str(err.value), (flag, str(err.value))
    scene = open_scene(case.path, **case.flags)
    assert scene.attrs["sensor"] == case.sensor
    assert scene.attrs["encoding"] == case.encoding
    assert opened_difference(case, scene) <= case.tolerance


def test_thermal_band_is_dropped_and_said(corpus: dict[str, Case]) -> None:
    case = corpus["Landsat C2 L1 DN stack, 7 bands with thermal, MTL"]
    scene = open_scene(case.path)
    prov = json.loads(scene.attrs["provenance"])
    assert list(scene.band.values) == ["B", "G", "R", "N", "S1", "S2"]
    assert any(s.startswith("B6 (thermal") for s in prov["skipped"])
    assert prov["radiometry"]["method"] == "mtl" and prov["level"]["level"] == "L1"
    bare = open_scene(corpus["Landsat C2 L1 DN stack, no MTL (declared fallback)"].path)
    rad = json.loads(bare.attrs["provenance"])["radiometry"]
    assert rad["method"] == "percentile" and "no MTL file" in rad["why"]


def test_stac_item_skips_non_band_assets(corpus: dict[str, Case]) -> None:
    scene = open_scene(corpus["STAC item, per-band COGs, asset keys B02..B12"].path)
    prov = json.loads(scene.attrs["provenance"])
    assert any("visual" in s for s in prov["skipped"])
    assert prov["baseline"]["source"].startswith("STAC s2:processing_baseline")
    meta = open_scene(corpus["STAC item, common-name keys, raster:bands scale/offset, 04.00"].path)
    rad = json.loads(meta.attrs["provenance"])["radiometry"]
    assert rad["method"] == "metadata" and "raster:bands" in rad["source"]


def _ndwi_mask(scene) -> np.ndarray:
    index = compute_index("NDWI", scene).values
    return generate_prompt(index, "water", valid=np.isfinite(scene.values).all(axis=0)).mask


def test_ndwi_mask_identical_across_sentinel2_conventions(corpus: dict[str, Case]) -> None:
    original = _ndwi_mask(open_scene(BERLIN))
    assert 0.01 < (original == 1).mean() < 0.5
    s2 = [case for case in corpus.values() if case.family == "s2"]
    assert len(s2) >= 9
    for case in s2:
        mask = _ndwi_mask(open_scene(case.path, **case.flags))
        assert np.array_equal(mask, original), case.name


def _spex(*args: str) -> subprocess.CompletedProcess[str]:
    """The `spex` entry point in this process (the same code path as the console script,
    without paying for a new interpreter per run): exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["spex", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exit_:
                code = int(exit_.code or 0)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def original_mask(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    out = tmp_path_factory.mktemp("original")
    run = _spex("extract", "water", str(BERLIN), "--out", str(out), *EXTRACT_OPTIONS)
    assert run.returncode == 0, run.stderr
    with rasterio.open(json.loads(run.stdout.strip().splitlines()[-1])["mask"]) as m:
        return m.read(1)


EXTRACT_OPTIONS = ["--model", "index", "--tile", "256", "--overlap", "32"]


@pytest.mark.parametrize("name", CONVENTIONS)
def test_convention_runs_through_spex_extract(
    corpus: dict[str, Case], name: str, tmp_path: Path, original_mask: np.ndarray
) -> None:
    """Given at most what its error messages ask for: each refusal is one `error:` line
    with exit status 2 and no output folder, and the rerun adds only the flags it names."""
    case = corpus[name]
    out = tmp_path / "out"
    answers = dict(zip(case.cli_flags()[::2], case.cli_flags()[1::2], strict=True))
    args = ["water", str(case.path), "--out", str(out), *EXTRACT_OPTIONS]
    added: list[str] = []
    for _ in range(3):
        run = _spex("extract", *args)
        if run.returncode == 0:
            break
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
        assert not out.exists()
        asked = set(re.findall(r"--[a-z][a-z0-9-]*", lines[0]))
        new = [f for f in answers if f in asked and f not in added]
        if "--allow-small-scene" in asked and "--allow-small-scene" not in added:
            new.append("--allow-small-scene")
        assert new, f"the message names none of the flags this convention needs: {lines[0]}"
        for flag in new:
            args += [flag] if flag == "--allow-small-scene" else [flag, answers[flag]]
            added.append(flag)
    assert run.returncode == 0, run.stderr
    assert set(answers) <= set(added)
    paths = json.loads(run.stdout.strip().splitlines()[-1])
    with rasterio.open(paths["mask"]) as mask:
        values = mask.read(1)
    assert set(np.unique(values)) <= {0, 1, 255} and (values == 1).any()
    if case.family == "s2":
        assert np.array_equal(values, original_mask)
