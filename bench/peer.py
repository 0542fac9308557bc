"""The yardstick for the index path: what a competent analyst writes by hand in 25 lines.

NDWI = (green - nir) / (green + nir), one Otsu threshold from a 1/4 decimated read,
a block-windowed uint8 mask (1 water, 0 other, 255 nodata) into a tiled GeoTIFF, then a
COG copy. No tiles, overlaps, STAC, quicklook or report: ``bench/index_vs_peer.py`` times
``spex extract --model index`` against this script as whole processes, so the ratio says
what the pipeline's extra guarantees cost. Band numbers are 1-based, NAIP order by default.

Usage: ``python bench/peer.py SCENE OUT.tif [--green 2] [--nir 4]``
"""

import argparse
import os

import numpy as np
import rasterio
from rasterio.shutil import copy as rio_copy
from skimage.filters import threshold_otsu

parser = argparse.ArgumentParser()
parser.add_argument("scene")
parser.add_argument("out")
parser.add_argument("--green", type=int, default=2)
parser.add_argument("--nir", type=int, default=4)
args = parser.parse_args()


def ndwi(green: np.ndarray, nir: np.ndarray) -> np.ndarray:
    g, n = green.astype(np.float32), nir.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (g - n) / (g + n)


with rasterio.open(args.scene) as src:
    small = src.read([args.green, args.nir], out_shape=(2, src.height // 4, src.width // 4))
    index = ndwi(small[0], small[1])
    threshold = threshold_otsu(index[np.isfinite(index)])
    profile = dict(src.profile, count=1, dtype="uint8", nodata=255, tiled=True)
    profile.update(blockxsize=512, blockysize=512, compress="deflate", driver="GTiff")
    tmp = args.out + ".tmp.tif"
    with rasterio.open(tmp, "w", **profile) as dst:
        for _, window in dst.block_windows(1):
            block = ndwi(*src.read([args.green, args.nir], window=window))
            mask = np.where(np.isfinite(block), (block > threshold).astype(np.uint8), 255)
            dst.write(mask.astype(np.uint8), 1, window=window)
rio_copy(tmp, args.out, driver="COG", compress="deflate")
os.remove(tmp)
