"""Cloud-Optimized GeoTIFF outputs, written by streaming copy.

GDAL's COG driver only writes by *copy* (CreateCopy), so the pipeline first writes a
tiled GeoTIFF window by window (bounded memory) and converts it here with
``rasterio.shutil.copy(..., driver="COG")``, which streams blocks and builds overviews
through a temporary file instead of holding the raster in memory.

Why these choices:

* Provenance tags are attached through a tiny in-memory VRT wrapping the source, so the
  source file is never modified and the tags land in the COG's GDAL_METADATA tag.
* Deterministic bytes: no TIFF DateTime tag is ever set, keys are written sorted,
  ``NUM_THREADS`` defaults to 1, statistics are not computed and PAM sidecars
  (``.aux.xml``) are disabled; so the same input gives the same bytes.
* Overviews: ``mode`` for the class mask (keeps exactly the mask codes, and a
  zoomed-out view shows the majority class rather than whichever pixel nearest
  resampling happened to hit), ``average`` for probabilities. With
  ``overview_count=None`` GDAL adds levels until the smallest one fits in one block.
* Styling for QGIS and other desktop GIS (:class:`BandStyle`): the mask carries a colour
  table (target colour, grey "other"; TIFF colour maps hold no alpha, nodata is
  transparent as declared nodata) so it opens as a paletted layer, a band description,
  and its class names as band metadata (``CLASS_<value>``). GeoTIFF has no in-file place
  for category names, so :func:`write_class_names` also writes them to the ``.aux.xml``
  sidecar, from which GDAL and QGIS label the classes. The probability COG stays
  float32 in 0..1 with NaN declared as nodata, described as such.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree as ET

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.dtypes import _gdal_typename
from rasterio.errors import RasterioIOError

from pipeline.errors import OutputError
from pipeline.outputs.atomic import atomic_path

Kind = Literal["mask", "probability"]

DEFAULT_RESAMPLING: dict[str, str] = {"mask": "mode", "probability": "average"}
#: Internal tile size of the COGs written here (px; GDAL's COG driver default).
COG_BLOCKSIZE = 512


@dataclass(frozen=True)
class BandStyle:
    """How a desktop GIS should show band 1: description, classes and their colours.

    ``classes`` maps pixel values to names; ``colours`` maps pixel values to RGBA (a
    colour table is written when given; values not listed are transparent black).
    """

    description: str = ""
    classes: Mapping[int, str] = field(default_factory=dict)
    colours: Mapping[int, tuple[int, int, int, int]] = field(default_factory=dict)


# Options that keep GDAL from adding anything run-dependent next to or inside outputs.
GDAL_ENV: dict[str, str] = {"GDAL_PAM_ENABLED": "NO", "CHECK_DISK_FREE_SPACE": "FALSE"}


def _nodata_text(value: float) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else repr(value)


def _style_band(band: ET.Element, style: BandStyle) -> None:
    """Description, class names (band metadata and category names) and colour table."""
    if style.description:
        ET.SubElement(band, "Description").text = style.description
    if style.classes:
        md = ET.SubElement(band, "Metadata")
        for value in sorted(style.classes):
            ET.SubElement(md, "MDI", key=f"CLASS_{value}").text = style.classes[value]
    if style.colours:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        for value in range(max(style.colours) + 1):
            r, g, b, a = style.colours.get(value, (0, 0, 0, 0))
            ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4=str(a))
    if style.classes:
        names = ET.SubElement(band, "CategoryNames")
        for value in range(max(style.classes) + 1):
            ET.SubElement(names, "Category").text = style.classes.get(value, "")


def _tagged_vrt(
    src: rasterio.DatasetReader,
    tags: Mapping[str, str],
    nodata: float | None,
    style: BandStyle | None = None,
) -> str:
    """VRT XML that passes every band of ``src`` through and adds dataset tags (and the
    style of band 1)."""
    root = ET.Element("VRTDataset", rasterXSize=str(src.width), rasterYSize=str(src.height))
    if src.crs is not None:
        ET.SubElement(root, "SRS").text = src.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in src.transform.to_gdal()
    )
    if tags:
        md = ET.SubElement(root, "Metadata")
        for key in sorted(tags):
            ET.SubElement(md, "MDI", key=str(key)).text = str(tags[key])
    for b in range(1, src.count + 1):
        band = ET.SubElement(
            root, "VRTRasterBand", dataType=_gdal_typename(src.dtypes[b - 1]), band=str(b)
        )
        nd = nodata if nodata is not None else src.nodatavals[b - 1]
        if nd is not None:
            ET.SubElement(band, "NoDataValue").text = _nodata_text(nd)
        if style is not None and b == 1:
            _style_band(band, style)
        source = ET.SubElement(band, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(
            Path(src.name).resolve()
        )
        ET.SubElement(source, "SourceBand").text = str(b)
    return ET.tostring(root, encoding="unicode")


def to_cog(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    *,
    kind: Kind = "mask",
    tags: Mapping[str, str] | None = None,
    nodata: float | None = None,
    resampling: str | None = None,
    blocksize: int = COG_BLOCKSIZE,
    overview_count: int | None = None,
    level: int = 6,
    num_threads: int = 1,
    style: BandStyle | None = None,
) -> Path:
    """Convert the GeoTIFF ``src_path`` into a COG at ``dst_path`` (streaming).

    ``kind`` picks defaults: the mask gets mode overviews, the probability average
    overviews and the floating-point predictor. ``tags`` (str -> str) become GeoTIFF
    metadata tags. ``nodata`` overrides the source's nodata value. ``style`` describes
    band 1 for desktop GIS (see :class:`BandStyle`). Writes ``dst_path``
    directly; wrap the call in :func:`pipeline.outputs.atomic.atomic_path` for a final
    file.
    """
    if kind not in DEFAULT_RESAMPLING:
        raise ValueError(f"kind must be 'mask' or 'probability', got {kind!r}")
    if blocksize % 16:
        raise ValueError(f"COG block size must be a multiple of 16, got {blocksize}")
    options: dict[str, str] = {
        "COMPRESS": "DEFLATE",
        "LEVEL": str(level),
        "PREDICTOR": "YES" if kind == "probability" else "NO",
        "BLOCKSIZE": str(blocksize),
        "OVERVIEW_RESAMPLING": (resampling or DEFAULT_RESAMPLING[kind]).upper(),
        "OVERVIEWS": "IGNORE_EXISTING",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": str(num_threads),
        "STATISTICS": "NO",
    }
    if overview_count is not None:
        options["OVERVIEW_COUNT"] = str(overview_count)
    dst = Path(dst_path)
    try:
        with rasterio.Env(**GDAL_ENV), rasterio.open(src_path) as src:
            vrt = _tagged_vrt(src, dict(tags or {}), nodata, style)
            with rasterio.open(vrt) as wrapped:
                rasterio.shutil.copy(wrapped, dst, driver="COG", **options)
    except RasterioIOError as exc:
        raise OutputError(f"cannot write COG {dst} from {src_path}: {exc}") from exc
    return dst


def write_array_cog(
    array: np.ndarray,
    path: str | os.PathLike[str],
    *,
    crs: Any,
    transform: Affine,
    nodata: float | None = None,
    tags: Mapping[str, str] | None = None,
    blocksize: int = COG_BLOCKSIZE,
) -> Path:
    """Write a small in-memory 2-D array as a final COG at ``path`` (atomically).

    For results that already fit in memory (e.g. a whole-scene APG mask); whole-scene
    extraction streams through :class:`pipeline.stitching.TileStore` instead. uint8
    arrays are treated as masks, anything else as probabilities (float32).
    """
    if array.ndim != 2:
        raise ValueError(f"write_array_cog expects a 2-D array, got shape {array.shape}")
    kind: Kind = "mask" if array.dtype == np.uint8 else "probability"
    data = array if kind == "mask" else array.astype(np.float32)
    final = Path(path)
    with atomic_path(final) as tmp:
        work = Path(tempfile.mkdtemp(prefix=".spex-cog-", dir=final.parent))
        try:
            src = work / "src.tif"
            profile = {
                "driver": "GTiff",
                "height": data.shape[0],
                "width": data.shape[1],
                "count": 1,
                "dtype": data.dtype.name,
                "crs": crs,
                "transform": transform,
                "nodata": nodata,
                "tiled": True,
                "blockxsize": 256,
                "blockysize": 256,
            }
            with rasterio.Env(**GDAL_ENV), rasterio.open(src, "w", **profile) as dst:
                dst.write(data, 1)
            to_cog(src, tmp, kind=kind, tags=tags, nodata=nodata, blocksize=blocksize)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def pam_sidecar(path: str | os.PathLike[str]) -> Path:
    """GDAL's sidecar of ``path`` (``<name>.aux.xml``), where desktop GIS find class names."""
    path = Path(path)
    return path.with_name(path.name + ".aux.xml")


def write_class_names(path: str | os.PathLike[str], style: BandStyle) -> Path:
    """Write the class names of band 1 as GDAL category names into ``path``'s sidecar.

    GeoTIFF has no in-file place for category names; GDAL (and so QGIS, which labels a
    paletted layer's classes with them) reads them from ``<name>.aux.xml``. The COG
    keeps them too, as ``CLASS_<value>`` band metadata, for readers that skip sidecars.
    """
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    names = ET.SubElement(band, "CategoryNames")
    for value in range(max(style.classes) + 1):
        ET.SubElement(names, "Category").text = style.classes.get(value, "")
    ET.indent(root)
    sidecar = pam_sidecar(path)
    sidecar.write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")
    return sidecar


def validate_cog(path: str | os.PathLike[str]) -> tuple[bool, list[str], list[str]]:
    """``(is_valid, errors, warnings)`` from rio-cogeo's ``cog_validate`` (imported here:
    it pulls in morecantile and pydantic, which a job that writes COGs does not need)."""
    from rio_cogeo.cogeo import cog_validate

    with rasterio.Env(**GDAL_ENV):
        return cog_validate(str(path), quiet=True)


def assert_valid_cog(path: str | os.PathLike[str]) -> None:
    """Raise :class:`OutputError` listing the problems when ``path`` is not a valid COG."""
    ok, errors, _ = validate_cog(path)
    if not ok:
        raise OutputError(f"{path} is not a valid Cloud-Optimized GeoTIFF: {'; '.join(errors)}")
