"""Direct window reads of opened scenes equal what their dask graphs compute, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline import samples as kept_samples
from pipeline.errors import SceneReadError
from pipeline.scene import decimated_sample, open_scene, windows


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    same_type = a.dtype == b.dtype and a.shape == b.shape
    return same_type and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _check(scene, windows_to_read, steps) -> None:
    assert windows.recipe_of(scene) is not None
    for rows, cols in windows_to_read:
        direct = windows.read_window(scene, rows, cols)
        graph = np.asarray(scene.data[:, rows, cols].compute(), dtype=np.float32)
        assert _same_bits(direct, graph), (rows, cols)
    for step in steps:
        kept_samples.forget()
        direct = windows.strided_sample(scene, step)
        graph = np.asarray(scene.data[:, ::step, ::step].compute())
        assert _same_bits(direct, graph), step


def _edges(h: int, w: int) -> list[tuple[slice, slice]]:
    return [
        (slice(0, min(h, 300)), slice(0, min(w, 300))),
        (slice(37, min(h, 290)), slice(101, min(w, 333))),
        (slice(h - 123, h), slice(w - 77, w)),
    ]


def test_sentinel2_stack_scaled_with_offset(samples: Path) -> None:
    """uint16 DN x 1e-4 (scale and offset in float32), no nodata present."""
    scene = open_scene(str(samples / "s2_l1c_berlin_20170216.tif"))
    _check(scene, _edges(*scene.shape[1:]), (1, 3, 7))


def test_landsat_int16_with_nodata_border(tmp_path: Path, gewata_with_border: Path) -> None:
    """int16 with its fill value over a real border: NaN where the fill is, in both."""
    source = gewata_with_border
    scene = open_scene(str(source), sensor="landsat-tm")
    direct = windows.read_window(scene, slice(0, scene.shape[1]), slice(0, scene.shape[2]))
    assert 0.1 < np.isnan(direct).any(axis=0).mean() < 0.9
    _check(scene, _edges(*scene.shape[1:]), (1, 2, 5))


def test_uncalibrated_naip_and_float_landsat(shared_data: Path) -> None:
    """uint8 NAIP (per-scene percentile scale, nodata 0) and float32 Landsat DN
    (nodata -99999 over a 15 % border), a band subset kept from a six-band file."""
    naip = sorted((shared_data / "naip-north-dakota").glob("m_*.tif"))[0]
    scene = open_scene(str(naip), sensor="naip")
    _check(scene, _edges(*scene.shape[1:]), (1, 4, 9))
    raleigh = shared_data / "l7-raleigh" / "landsat_multiband.tif"
    scene = open_scene(str(raleigh), sensor="landsat-etm", encoding="uncalibrated-dn")
    _check(scene, _edges(*scene.shape[1:]), (1, 3))


def test_band_files_read_together(tmp_path: Path, samples: Path) -> None:
    """A folder of single-band files is one recipe over several sources."""
    folder = tmp_path / "bands"
    folder.mkdir()
    with rasterio.open(samples / "s2_l1c_berlin_20170216.tif") as src:
        profile = dict(src.profile, count=1)
        for i, name in enumerate(src.descriptions, start=1):
            with rasterio.open(folder / f"T33UUU_20170216T102101_{name}.tif", "w", **profile) as d:
                d.write(src.read(i), 1)
    scene = open_scene(str(folder))
    assert len(windows.recipe_of(scene).sources) == scene.shape[0]
    _check(scene, _edges(*scene.shape[1:]), (1, 5))


def test_decimated_sample_is_shared_and_equal(samples: Path) -> None:
    scene = open_scene(str(samples / "s2_l1c_berlin_20170216.tif"))
    kept_samples.forget()
    first, step = decimated_sample(scene, max_pixels=50_000)
    again, _ = decimated_sample(scene, max_pixels=50_000)
    lazy = scene.isel(y=slice(None, None, step), x=slice(None, None, step)).compute()
    assert step > 1 and _same_bits(first.values, lazy.values)
    assert _same_bits(again.values, first.values)
    assert (first.x.values == lazy.x.values).all() and (first.band.values == lazy.band.values).all()


def test_warped_and_jpeg2000_sources_go_through_dask(shared_data: Path) -> None:
    scene = open_scene(str(shared_data / "s2-l1c-berlin" / "IMG_DATA"))
    assert windows.recipe_of(scene) is None
    rows, cols = slice(100, 228), slice(300, 428)
    direct = windows.read_window(scene, rows, cols)
    assert _same_bits(direct, np.asarray(scene.data[:, rows, cols].compute(), np.float32))


def test_a_cut_file_fails_loudly(tmp_path: Path, samples: Path) -> None:
    """A GeoTIFF whose last blocks are cut off: the direct reads raise, never zeros."""
    source = tmp_path / "cut.tif"
    with rasterio.open(samples / "s2_l1c_berlin_20170216.tif") as src:
        profile = dict(src.profile, tiled=True, blockxsize=128, blockysize=128, compress="deflate")
        with rasterio.open(source, "w", **profile) as dst:
            dst.write(src.read())
            dst.descriptions = src.descriptions
            dst.update_tags(**src.tags())
    scene = open_scene(str(source))
    data = source.read_bytes()
    source.write_bytes(data[: len(data) * 2 // 3])
    h, w = scene.shape[1:]
    with pytest.raises(SceneReadError, match=r"cut\.tif"):
        windows.read_window(scene, slice(h - 128, h), slice(w - 128, w))
