"""Real scenes the benchmarks share: the NAIP epochs, the bundled Sentinel-2 sample, and
mosaics of them.

The NAIP quarter quad of ``../shared/data/naip-north-dakota`` comes in ten epochs on one
grid; an n x n mosaic of them is a large scene of real pixels with a known size, which
is what throughput and memory figures need. The bundled Sentinel-2 sample is the scene
with the bands the default SPEX model reads (B, G, R, N, S1); mosaics of it feed the
model-path benchmarks. Large mosaics are GDAL VRTs (a few kilobytes that reference the
real files), so a gigapixel scene costs no disk.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import rasterio
from rasterio.dtypes import _gdal_typename
from rasterio.windows import Window

NAIP = "naip-north-dakota"
SCENE = "m_4709963_se_14_1_20200831.tif"
MOSAIC = 4  # 4 x 4 scenes = 16 x the area
REPO = Path(__file__).resolve().parents[1]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"


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
        descriptions, tags = first.descriptions, first.tags()
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
        if all(descriptions):  # band names, where the file has them
            dst.descriptions = descriptions
        dst.update_tags(**tags)
        for k in range(n * n):
            with rasterio.open(files[k % len(files)]) as src:
                if src.crs != profile["crs"] or src.res != first.res or src.count != dst.count:
                    raise ValueError(f"{src.name}: CRS, pixel size or band count differ")
                cell = src.read(window=Window(0, 0, w, h))
            dst.write(cell, window=Window((k % n) * w, (k // n) * h, w, h))
    return out


def build_vrt_mosaic(files: list[Path], out: Path, rows: int, cols: int) -> Path:
    """A rows x cols mosaic of ``files`` (cyclic, first file first) as a GDAL VRT.

    The same layout as :func:`build_mosaic` (cell k holds the first h x w pixels of file
    k % len(files), h x w the first file's size, on one grid from the first file's
    origin), but nothing is copied: every cell is a source window of a real file, read
    when the cell is read. Band names and tags are the first file's."""
    with rasterio.open(files[0]) as first:
        h, w, count, res = first.height, first.width, first.count, first.res
        crs, transform, dtype = first.crs, first.transform, first.dtypes[0]
        nodata, descriptions, tags = first.nodata, first.descriptions, first.tags()
    for f in set(files):
        with rasterio.open(f) as src:
            if src.crs != crs or src.res != res or src.count != count or src.height < h:
                raise ValueError(f"{f}: CRS, pixel size, band count or height differ")
    root = ET.Element("VRTDataset", rasterXSize=str(w * cols), rasterYSize=str(h * rows))
    ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in transform.to_gdal())
    if tags:
        md = ET.SubElement(root, "Metadata")
        for key in sorted(tags):
            ET.SubElement(md, "MDI", key=key).text = tags[key]
    for b in range(1, count + 1):
        band = ET.SubElement(root, "VRTRasterBand", dataType=_gdal_typename(dtype), band=str(b))
        if descriptions[b - 1]:
            ET.SubElement(band, "Description").text = descriptions[b - 1]
        if nodata is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(nodata))
        for k in range(rows * cols):
            source = ET.SubElement(band, "SimpleSource")
            name = ET.SubElement(source, "SourceFilename", relativeToVRT="0")
            name.text = str(Path(files[k % len(files)]).resolve())
            ET.SubElement(source, "SourceBand").text = str(b)
            ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
            x, y = (k % cols) * w, (k // cols) * h
            ET.SubElement(source, "DstRect", xOff=str(x), yOff=str(y), xSize=str(w), ySize=str(h))
    out.write_text(ET.tostring(root, encoding="unicode"))
    return out
