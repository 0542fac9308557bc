"""Real scenes the benchmarks share: the NAIP epochs and mosaics of them.

The NAIP quarter quad of ``../shared/data/naip-north-dakota`` comes in ten epochs on one
grid; an n x n mosaic of them is a large scene of real pixels with a known size, which
is what throughput and memory figures need.
"""

from __future__ import annotations

from pathlib import Path

import rasterio
from rasterio.windows import Window

NAIP = "naip-north-dakota"
SCENE = "m_4709963_se_14_1_20200831.tif"
MOSAIC = 4  # 4 x 4 scenes = 16 x the area


def naip_epochs(data: Path) -> list[Path]:
    """The NAIP epochs, the benchmark scene first, then the others in date order."""
    files = sorted((data / NAIP).glob("m_*.tif"))
    if not files:
        raise SystemExit(f"no NAIP scenes in {data / NAIP}; pass --data")
    first = data / NAIP / SCENE
    return [first, *(f for f in files if f != first)]


def build_mosaic(files: list[Path], out: Path, n: int = MOSAIC) -> Path:
    """An n x n mosaic of the NAIP epochs (cyclic, first file first) as a tiled GeoTIFF.

    The epochs cover the same quarter quad with the same pixel size and CRS (their
    origins differ by a pixel or less, and some have one more row). Cell k of the mosaic
    (row k // n, column k % n) holds the first h x w pixels of epoch k, where h x w is
    the first file's size, on one consistent grid that starts at the first file's origin.
    Every pixel is real; only the first cell sits at its true place on the ground, which
    does not matter to a throughput and memory benchmark. Written cell by cell (bounded
    memory), deflate-compressed and tiled like the NAIP files themselves.
    """
    with rasterio.open(files[0]) as first:
        profile = first.profile
        h, w = first.height, first.width
    profile.update(
        height=h * n,
        width=w * n,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        bigtiff="IF_SAFER",
    )
    with rasterio.open(out, "w", **profile) as dst:
        for k in range(n * n):
            with rasterio.open(files[k % len(files)]) as src:
                if src.crs != profile["crs"] or src.res != first.res or src.count != dst.count:
                    raise ValueError(f"{src.name}: CRS, pixel size or band count differ")
                cell = src.read(window=Window(0, 0, w, h))
            dst.write(cell, window=Window((k % n) * w, (k // n) * h, w, h))
    return out
