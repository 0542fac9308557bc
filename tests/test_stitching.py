"""Stitching on real data: exact seams, nodata, resume, determinism, bounded memory."""

from __future__ import annotations

import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray

from pipeline.errors import OutputError
from pipeline.outputs.cog import validate_cog
from pipeline.stitching import (
    IncompleteStoreError,
    StoreMismatchError,
    TileStore,
    axis_weight,
    owned_span,
    tile_weight,
)
from pipeline.tile_record import DamagedTileError, decode_tile, encode_tile
from pipeline.tiling import TileGrid, plan_tiles

TILE, OVERLAP = 64, 16
FP = "job-fingerprint-1"


class Scene:
    """l7-raleigh as numpy plus two per-pixel deterministic 'extractors'."""

    def __init__(self, path: Path) -> None:
        da = rioxarray.open_rasterio(path, chunks={"x": 256, "y": 256}, masked=True)
        self.path = path
        self.crs = da.rio.crs
        self.transform = da.rio.transform()
        x = da.values.astype(np.float32)  # 5 x 443 x 489: tiny
        self.valid = np.isfinite(x).all(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ndvi = (x[3] - x[2]) / (x[3] + x[2])
        cut = float(np.nanmedian(ndvi[self.valid]))
        self.hard = np.where(ndvi >= cut, 1.0, 0.0).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            self.soft = (1.0 / (1.0 + np.exp(-20.0 * (ndvi - cut)))).astype(np.float32)
        self.grid = plan_tiles(*self.valid.shape, TILE, OVERLAP)

    def untiled_mask(self, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        return np.where(self.valid, (prob >= threshold).astype(np.uint8), 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene(shared_data) -> Scene:
    return Scene(shared_data / "l7-raleigh" / "landsat_multiband.tif")


def new_store(
    scene: Scene,
    path: Path,
    fingerprint: str = FP,
    grid: TileGrid | None = None,
    force: bool = False,
) -> TileStore:
    return TileStore.create_or_open(
        path, grid or scene.grid, scene.crs, scene.transform, fingerprint, force=force
    )


def write(store: TileStore, scene: Scene, indices, prob: np.ndarray | None = None) -> None:
    prob = scene.soft if prob is None else prob
    for i in indices:
        t = store.grid[i]
        store.write_tile(t, prob[t.slices], scene.valid[t.slices])


def finalise(store: TileStore, out: Path, **kw) -> tuple[bytes, bytes]:
    kw.setdefault("window", 128)
    kw.setdefault("blocksize", 256)
    mask, prob = store.finalise(out / "scene_water.tif", out / "scene_water_prob.tif", **kw)
    return mask.read_bytes(), prob.read_bytes()


@pytest.fixture(scope="module")
def clean_run(scene: Scene, tmp_path_factory) -> tuple[bytes, bytes]:
    root = tmp_path_factory.mktemp("clean")
    store = new_store(scene, root / "store.tiles")
    write(store, scene, range(len(scene.grid)))
    return finalise(store, root / "out")


# ------------------------------------------------------------------------ weights


def test_weights_are_one_where_a_single_tile_covers_and_positive_everywhere(scene) -> None:
    grid = scene.grid
    cover = np.zeros(grid.shape, dtype=np.int32)
    for t in grid:
        cover[t.slices] += 1
    for t in grid:
        w = tile_weight(t)
        assert w.shape == (t.height, t.width)
        assert (w > 0).all() and (w <= 1).all()
        alone = cover[t.slices] == 1  # scene edges and tile interiors
        assert alone.any()
        assert (w[alone] == 1.0).all()
        if t.row == 0:
            assert t.overlap_top == 0
        if t.col + t.width == grid.width:
            assert t.overlap_right == 0


def test_weights_are_exactly_one_along_outer_scene_edges(scene) -> None:
    grid = scene.grid
    for t in grid:
        wy = axis_weight(t.height, t.overlap_top, t.overlap_bottom)
        wx = axis_weight(t.width, t.overlap_left, t.overlap_right)
        if t.row == 0:
            assert wy[0] == 1.0
        if t.row + t.height == grid.height:
            assert wy[-1] == 1.0
        if t.col == 0:
            assert wx[0] == 1.0
        if t.col + t.width == grid.width:
            assert wx[-1] == 1.0


def test_neighbour_ramps_are_complementary() -> None:
    left = axis_weight(64, 0, 16)
    right = axis_weight(64, 16, 0)
    np.testing.assert_allclose(left[-16:] + right[:16], 1.0, rtol=0, atol=1e-15)
    assert np.all(np.diff(right[:16]) > 0)  # smooth increase into the tile


# -------------------------------------------------------------------------- seams


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_stitched_equals_untiled_exactly(scene, tmp_path, kind) -> None:
    prob = getattr(scene, kind)
    store = new_store(scene, tmp_path / "store.tiles")
    write(store, scene, range(len(scene.grid)), prob)
    mask_path, prob_path = store.finalise(
        tmp_path / "m.tif", tmp_path / "p.tif", window=96, blocksize=256
    )
    with rasterio.open(mask_path) as m, rasterio.open(prob_path) as p:
        mask, blended = m.read(1), p.read(1)
    expected = scene.untiled_mask(prob)
    assert 0 < (expected == 1).sum() < scene.valid.sum()  # both classes present
    assert np.array_equal(mask, expected)
    assert np.array_equal(blended, np.where(scene.valid, prob, np.nan), equal_nan=True)


def test_nodata_border_stays_nodata(scene, tmp_path, clean_run) -> None:
    out = tmp_path / "m.tif"
    out.write_bytes(clean_run[0])
    with rasterio.open(out) as src:
        mask = src.read(1)
        assert src.nodata == 255
    nodata = ~scene.valid
    assert 0.05 < nodata.mean() < 0.3  # the ~15 % border is really there
    assert (mask[nodata] == 255).all()
    assert (mask[scene.valid] != 255).all()


def test_threshold_is_configurable(scene, tmp_path) -> None:
    store = new_store(scene, tmp_path / "store.tiles")
    write(store, scene, range(len(scene.grid)))
    mask_path, _ = store.finalise(tmp_path / "m.tif", threshold=0.8, window=128, blocksize=256)
    with rasterio.open(mask_path) as src:
        assert np.array_equal(src.read(1), scene.untiled_mask(scene.soft, 0.8))
    assert not (tmp_path / "p.tif").exists()


# ------------------------------------------------------------ COG output properties


def test_finalised_cog_is_valid_and_georeferenced_like_input(scene, tmp_path, clean_run) -> None:
    mask, prob = tmp_path / "m.tif", tmp_path / "p.tif"
    mask.write_bytes(clean_run[0])
    prob.write_bytes(clean_run[1])
    with rasterio.open(scene.path) as src:
        crs, transform, shape = src.crs, src.transform, (src.height, src.width)
    for path, dtype in ((mask, "uint8"), (prob, "float32")):
        ok, errors, _ = validate_cog(path)
        assert ok, errors
        with rasterio.open(path) as out:
            assert out.crs == crs
            assert out.transform == transform
            assert (out.height, out.width) == shape
            assert out.dtypes[0] == dtype
            assert out.overviews(1)
            assert out.compression is not None and out.compression.value == "DEFLATE"
    with rasterio.open(mask) as out:
        assert out.nodata == 255
    with rasterio.open(prob) as out:
        assert np.isnan(out.nodata)


def test_tags_reach_the_cog(scene, tmp_path) -> None:
    store = new_store(scene, tmp_path / "store.tiles")
    write(store, scene, range(len(scene.grid)))
    tags = {"spex_model": "baseline-ndwi 0.1", "tile": "64", "overlap": "16"}
    mask, _ = store.finalise(tmp_path / "m.tif", tags=tags, window=128, blocksize=256)
    with rasterio.open(mask) as src:
        got = src.tags()
    assert {k: got[k] for k in tags} == tags
    assert "TIFFTAG_DATETIME" not in got


# ------------------------------------------------------- resume and determinism


def test_two_finalises_give_identical_bytes(scene, tmp_path, clean_run) -> None:
    store = new_store(scene, tmp_path / "store.tiles")
    write(store, scene, range(len(scene.grid)))
    first = finalise(store, tmp_path / "a")
    second = finalise(store, tmp_path / "b")
    assert first == second == clean_run


def test_resume_after_half_the_tiles_is_byte_identical(scene, tmp_path, clean_run) -> None:
    path = tmp_path / "store.tiles"
    n = len(scene.grid)
    store = new_store(scene, path)
    write(store, scene, range(0, n, 2))
    del store  # "crash"

    resumed = new_store(scene, path)
    done = resumed.finished()
    assert done == set(range(0, n, 2))
    assert not resumed.is_complete()
    todo = [t.index for b in resumed.grid.batches(7, skip=done) for t in b]
    write(resumed, scene, reversed(todo))
    assert resumed.is_complete()
    assert finalise(resumed, tmp_path / "out") == clean_run


def test_write_order_and_concurrent_writers_do_not_change_bytes(scene, tmp_path, clean_run):
    order = list(range(len(scene.grid)))
    random.Random(3).shuffle(order)
    store = new_store(scene, tmp_path / "store.tiles")
    # two writers with their own store handles, as separate Dask workers would have
    handles = [store, TileStore.open(store.path, fingerprint=FP)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda k: write(handles[k % 2], scene, [order[k]]), range(len(order))))
    # a rewritten tile (a retried task) is harmless
    write(store, scene, order[:3])
    assert finalise(store, tmp_path / "out") == clean_run


def test_fingerprint_mismatch_is_clear_and_keeps_finished_work(scene, tmp_path) -> None:
    path = tmp_path / "store.tiles"
    store = new_store(scene, path)
    write(store, scene, range(10))
    before = {p.name: p.read_bytes() for p in (path / "tiles").iterdir()}

    with pytest.raises(StoreMismatchError, match=r"another job.*fingerprint.*10 finished"):
        new_store(scene, path, fingerprint="other-job")
    with pytest.raises(StoreMismatchError, match="different grid"):
        new_store(scene, path, grid=plan_tiles(*scene.grid.shape, 128, 16))
    with pytest.raises(StoreMismatchError, match="fingerprint"):
        TileStore.open(path, fingerprint="other-job")

    again = new_store(scene, path)
    assert again.finished() == set(range(10))
    assert {p.name: p.read_bytes() for p in (path / "tiles").iterdir()} == before

    wiped = new_store(scene, path, fingerprint="other-job", force=True)
    assert wiped.finished() == set() and wiped.fingerprint == "other-job"


def test_a_folder_that_is_not_a_store_is_not_touched(scene, tmp_path) -> None:
    path = tmp_path / "precious"
    path.mkdir()
    (path / "data.txt").write_text("keep me")
    with pytest.raises(StoreMismatchError, match="not a SPEX tile store"):
        new_store(scene, path)
    assert (path / "data.txt").read_text() == "keep me"
    a_file = tmp_path / "store.tiles"
    a_file.write_text("not a store")
    with pytest.raises(StoreMismatchError, match="not a SPEX tile store"):
        new_store(scene, a_file)
    assert a_file.read_text() == "not a store"


def test_finalise_refuses_missing_and_damaged_tiles(scene, tmp_path) -> None:
    store = new_store(scene, tmp_path / "store.tiles")
    write(store, scene, range(len(scene.grid) - 1))
    out = tmp_path / "out"
    with pytest.raises(IncompleteStoreError, match=r"1 of 90 tiles not finished"):
        store.finalise(out / "m.tif")
    write(store, scene, [len(scene.grid) - 1])
    tile_file = store.path / "tiles" / "000004.tile"
    data = bytearray(tile_file.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte, as blocks lost in a power cut would leave
    tile_file.write_bytes(bytes(data))
    with pytest.raises(IncompleteStoreError, match="1 damaged"):
        store.finalise(out / "m.tif")
    assert 4 not in store.finished()
    assert not out.exists() or not any(out.iterdir())
    write(store, scene, [4])  # the rerun computes it again
    assert store.verify() == []
    tile_file.write_bytes(tile_file.read_bytes()[:100])  # truncated
    assert store.verify() == [4] and 4 not in store.finished()


def test_wrong_tile_shapes_are_rejected(scene, tmp_path) -> None:
    store = new_store(scene, tmp_path / "store.tiles")
    t = scene.grid[0]
    with pytest.raises(ValueError, match="expected probability and valid of shape"):
        store.write_tile(t, np.zeros((10, 10), np.float32), np.ones((10, 10), bool))
    other = plan_tiles(*scene.grid.shape, 128, 16)[1]
    with pytest.raises(ValueError, match="not part of the grid"):
        store.write_tile(other, np.zeros((128, 128)), np.ones((128, 128), bool))
    assert store.finished() == set()


def test_write_batch_matches_tile_result_layout(scene, tmp_path) -> None:
    store = new_store(scene, tmp_path / "store.tiles")
    batch = scene.grid.batches(4)[0]
    probs = np.stack([scene.soft[t.slices] for t in batch])
    valid = np.stack([scene.valid[t.slices] for t in batch])
    store.write_batch(batch, probs, valid)
    assert store.finished() == {t.index for t in batch}
    p, v = store.read_tile(batch[2])
    assert np.array_equal(p, probs[2], equal_nan=True) and np.array_equal(v, valid[2])


# ------------------------------------------------------------------- outputs


def test_unwritable_output_folder_is_a_clear_error_without_partial_files(scene, tmp_path):
    store = new_store(scene, tmp_path / "store.tiles")
    write(store, scene, range(len(scene.grid)))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    bad = blocker / "outputs"
    with pytest.raises(OutputError, match=r"output folder .*not-a-folder/outputs is not writable"):
        store.finalise(bad / "m.tif")
    leftovers = [p.name for p in store.path.iterdir()]
    assert sorted(leftovers) == ["store.json", "tiles"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder", "store.tiles"]


def test_memory_is_bounded_by_tile_not_scene(scene, tmp_path) -> None:
    store = new_store(scene, tmp_path / "store.tiles")
    h, w = scene.grid.shape
    assert scene.grid.tile_height * scene.grid.tile_width < h * w / 40
    write(store, scene, range(len(scene.grid)))
    # Measured in a fresh interpreter: allocator state left by other tests (caches)
    # must not blur what finalise itself holds.
    script = f"""
import tracemalloc
from pipeline.stitching import TileStore
store = TileStore.open({str(store.path)!r})
store.finalise({str(tmp_path / "warm.tif")!r}, window=64, blocksize=256)  # imports, caches
tracemalloc.start()
store.finalise({str(tmp_path / "m.tif")!r}, {str(tmp_path / "p.tif")!r}, window=64,
               blocksize=256)
print(tracemalloc.get_traced_memory()[1])
"""
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    peak = int(run.stdout.split()[-1])
    # One float64 scene-sized array would be h*w*8 bytes (1.7 MB); with 64 px windows
    # finalise holds a few window- and tile-sized arrays only (measured ~0.27 MB).
    assert peak < h * w * 8 / 4, peak


# ---------------------------------------------------------- per-pixel stitching


def test_each_pixel_has_exactly_one_owner(scene) -> None:
    for grid in (scene.grid, plan_tiles(*scene.grid.shape, TILE, 0), plan_tiles(100, 70, 64, 0)):
        owners = np.zeros(grid.shape, dtype=np.int32)
        for t in grid:
            r0, r1 = owned_span(grid.row_offsets, t.grid_row, grid.tile_height, grid.height)
            c0, c1 = owned_span(grid.col_offsets, t.grid_col, grid.tile_width, grid.width)
            assert t.row <= r0 and r1 <= t.row + t.height and t.col <= c0
            owners[r0:r1, c0:c1] += 1
        assert (owners == 1).all()


@pytest.mark.parametrize("overlap", [OVERLAP, 0])
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_per_pixel_finalise_equals_blending(scene, tmp_path, kind, overlap) -> None:
    """First-tile-wins stitching of a per-pixel extractor gives the blended outputs (and
    the untiled ones), with or without overlapping tiles."""
    prob = getattr(scene, kind)
    grid = plan_tiles(*scene.grid.shape, TILE, overlap)
    store = new_store(scene, tmp_path / "store.tiles", grid=grid)
    write(store, scene, range(len(grid)), prob)
    outputs = {}
    for per_pixel in (False, True):
        out = tmp_path / f"per_pixel_{per_pixel}"
        m, p = store.finalise(out / "m.tif", out / "p.tif", window=96, per_pixel=per_pixel)
        with rasterio.open(m) as mask, rasterio.open(p) as probability:
            outputs[per_pixel] = (mask.read(1), probability.read(1))
    np.testing.assert_array_equal(outputs[True][0], outputs[False][0])
    np.testing.assert_array_equal(outputs[True][0], scene.untiled_mask(prob))
    np.testing.assert_array_equal(outputs[True][1], np.where(scene.valid, prob, np.nan))
    np.testing.assert_array_equal(outputs[True][1], outputs[False][1])


# ------------------------------------------------------------------- tile files


def test_tile_files_give_back_exactly_what_was_written() -> None:
    rng = np.random.default_rng(0)
    valid = rng.random((37, 53)) > 0.2
    binary = (rng.random((37, 53)) > 0.5).astype(np.float32)
    soft = rng.random((37, 53)).astype(np.float32)
    soft[0, :5] = [np.nan, -0.0, np.inf, 1.0, 0.0]
    signed_zero = binary.copy()
    signed_zero[3, 3] = -0.0  # equal to 0.0 but not the same bits: not stored as bits
    sizes = {}
    for name, prob in (("binary", binary), ("soft", soft), ("signed_zero", signed_zero)):
        data = encode_tile(prob, valid)
        sizes[name] = len(data)
        back, ok = decode_tile(data, prob.shape)
        assert back.dtype == np.float32 and back.flags.writeable
        assert np.array_equal(back.view(np.uint32), prob.view(np.uint32)), name
        assert np.array_equal(ok, valid)
    assert sizes["binary"] * 8 < sizes["soft"]  # 0/1 tiles are stored as bits
    assert sizes["signed_zero"] > sizes["binary"]


def test_damaged_tile_files_are_refused() -> None:
    prob, valid = np.ones((16, 16), np.float32), np.ones((16, 16), bool)
    data = encode_tile(prob, valid)
    with pytest.raises(DamagedTileError, match="shape"):
        decode_tile(data, (16, 17))
    for damaged in (data[:-1], data[:20], b"", data[:-2] + b"\x00\x00", b"x" * len(data)):
        with pytest.raises(DamagedTileError):
            decode_tile(damaged, (16, 16))
