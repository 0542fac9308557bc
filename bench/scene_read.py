"""Reading a scene tile by tile, with and without the block reader's LRU, in one run.

Every tile of a row is cut from the same dask blocks, so without a cache each block is
decoded as many times as tiles touch it (GDAL's own block cache does not keep them once
warped VRTs read their JPEG 2000 sources in between). The ratio printed is the tile
loop's time without the LRU over its time with it, on the same opened scene, run
alternately ``--repeat`` times; also the number of block decodes of each.

    .venv/bin/python bench/scene_read.py [--data ../shared/data] [--tile 256] [--repeat 3]

Scene: ``s2-l1c-berlin/IMG_DATA`` (13 JPEG 2000 bands, 9 of them warped from 20/60 m onto
the 10 m grid), or the bundled Sentinel-2 sample when the shared data are absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import pipeline.scene.reader as reader
from pipeline.scene import open_scene
from pipeline.tiling import plan_tiles

REPO = Path(__file__).resolve().parents[1]


def _tile_loop(scene, tile: int, overlap: int) -> float:
    grid = plan_tiles(scene.sizes["y"], scene.sizes["x"], tile, overlap)
    start = time.perf_counter()
    for t in grid:
        np.asarray(scene[:, t.rows, t.cols].data.compute(scheduler="synchronous"))
    return time.perf_counter() - start


def _run(scene, tile: int, overlap: int, cache_bytes: int) -> tuple[float, int]:
    reader.CACHE_BYTES = cache_bytes
    with reader._blocks_lock:
        reader._blocks.clear()
        reader._blocks_bytes = 0
    decodes = 0
    original = reader._open_for

    def counting(source):
        nonlocal decodes
        decodes += 1
        return original(source)

    reader._open_for = counting
    try:
        seconds = _tile_loop(scene, tile, overlap)
    finally:
        reader._open_for = original
    return seconds, decodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folder = args.data / "s2-l1c-berlin" / "IMG_DATA"
    source = folder if folder.is_dir() else REPO / "samples" / "s2_l1c_berlin_20170216.tif"
    scene = open_scene(source)
    default = reader.CACHE_BYTES
    with_cache, without = [], []
    for _ in range(args.repeat):
        without.append(_run(scene, args.tile, args.overlap, 0))
        with_cache.append(_run(scene, args.tile, args.overlap, default))
    result = {
        "scene": str(source),
        "shape": list(scene.shape),
        "tile": args.tile,
        "overlap": args.overlap,
        "without_cache_s": round(statistics.median(t for t, _ in without), 3),
        "with_cache_s": round(statistics.median(t for t, _ in with_cache), 3),
        "block_decodes_without": without[0][1],
        "block_decodes_with": with_cache[0][1],
        "ratio_without_over_with": round(
            statistics.median(a[0] / b[0] for a, b in zip(without, with_cache, strict=True)), 2
        ),
        "cache_mb": default // 2**20,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
