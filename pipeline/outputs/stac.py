"""STAC items for extraction outputs.

Analysts find our rasters through STAC: one item per scene and target, with the mask COG
(and the optional probability COG, Zarr store, quicklook and report) as assets, the
projection, raster and file extensions, and the provenance of the run (extractor and
its weights hash, thresholds, tiling, sensor entry, software version) as properties.

Validation runs offline: the core Item schema ships with pystac and is checked with
jsonschema; the extension fields are checked through pystac's typed extension accessors
(their JSON schemas live on the web, which these machines cannot reach).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac
import rasterio
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.validation import JsonSchemaSTACValidator
from rasterio.warp import transform_geom

from pipeline.errors import OutputError

MEDIA_TYPES = {
    ".tif": pystac.MediaType.COG,
    ".png": pystac.MediaType.PNG,
    ".json": pystac.MediaType.JSON,
    ".md": "text/markdown",
    ".zarr": "application/vnd+zarr",
    ".gpkg": "application/geopackage+sqlite3",
    ".parquet": "application/vnd.apache.parquet",
}


def _sha256_multihash(path: Path) -> str:
    """The file extension's checksum: a multihash (0x12 = sha2-256, 0x20 = 32 bytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "1220" + digest.hexdigest()


def _footprint(raster: Path) -> tuple[dict[str, Any], list[float], dict[str, Any]]:
    """WGS84 footprint polygon, bbox, and the raster's projection facts."""
    with rasterio.open(raster) as src:
        if src.crs is None:
            raise OutputError(f"{raster} has no CRS; cannot build a STAC footprint")
        left, bottom, right, top = src.bounds
        native = {
            "type": "Polygon",
            "coordinates": [
                [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
            ],
        }
        geometry = transform_geom(src.crs, "EPSG:4326", native, precision=7)
        epsg = src.crs.to_epsg()
        projection = {
            "code": f"EPSG:{epsg}" if epsg is not None else src.crs.to_string(),
            "shape": [src.height, src.width],
            "transform": list(src.transform)[:6],
            "bbox": [left, bottom, right, top],
            "resolution": abs(src.transform.a),
            "dtype": src.dtypes[0],
            "nodata": src.nodata,
        }
    ring = geometry["coordinates"][0]
    xs = [p[0] for p in ring]
    ys = [p[1] for p in ring]
    return geometry, [min(xs), min(ys), max(xs), max(ys)], projection


def build_item(
    item_id: str,
    mask_path: Path,
    *,
    acquired: datetime,
    assets: Mapping[str, Path],
    properties: Mapping[str, Any],
) -> pystac.Item:
    """A STAC item describing the mask COG and its sibling assets.

    ``assets`` maps asset keys ('mask', 'probability', 'zarr', 'quicklook', 'report',
    ...) to files next to the item; hrefs are written relative so the folder can move.
    ``properties`` carries the provenance (namespaced keys such as 'spex:extractor').
    """
    geometry, bbox, proj = _footprint(mask_path)
    item = pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=acquired,
        properties=dict(properties),
    )
    roles = {
        "mask": ["data"],
        "probability": ["data"],
        "zarr": ["data"],
        "quicklook": ["overview", "visual"],
        "report": ["metadata"],
        "report_md": ["metadata"],
    }
    for key, path in assets.items():
        path = Path(path)
        media_type = MEDIA_TYPES.get(path.suffix.lower())
        asset = pystac.Asset(
            href=f"./{path.name}",
            media_type=media_type,
            roles=roles.get(key, ["data"]),
            title=f"{item_id} {key}",
        )
        item.add_asset(key, asset)
        if path.is_file():
            file_ext = FileExtension.ext(asset, add_if_missing=True)
            file_ext.size = path.stat().st_size
            file_ext.checksum = _sha256_multihash(path)
        if path.suffix.lower() == ".tif":
            with rasterio.open(path) as src:
                RasterExtension.ext(asset, add_if_missing=True).bands = [
                    RasterBand.create(
                        nodata=src.nodata,
                        data_type=DataType(src.dtypes[0]),
                        spatial_resolution=abs(src.transform.a),
                    )
                ]
    proj_ext = ProjectionExtension.ext(item, add_if_missing=True)
    proj_ext.code = proj["code"]
    proj_ext.shape = proj["shape"]
    proj_ext.transform = proj["transform"]
    proj_ext.bbox = proj["bbox"]
    return item


def description_properties(report: Mapping[str, Any]) -> dict[str, Any]:
    """The item's summary of the tile descriptions (``spex:descriptions``): whether they
    were requested and, when checked, the statements true / false / unverifiable, the
    share true, descriptions passed, target named and repeats (see
    :func:`pipeline.truthfulness.summarise_checks`). The per-tile texts stay in the report."""
    summary: dict[str, Any] = {"requested": bool(report.get("descriptions_requested", True))}
    summary["count"] = len(report.get("descriptions") or [])
    if report.get("truthfulness"):
        summary |= dict(report["truthfulness"])
    return {"spex:descriptions": summary}


def validate_item(item: pystac.Item) -> None:
    """Validate against the bundled core schema and check the extension fields.

    Raises OutputError naming the first problem found.
    """
    payload = item.to_dict(include_self_link=False)
    try:
        JsonSchemaSTACValidator().validate_core(
            payload, pystac.STACObjectType.ITEM, pystac.get_stac_version()
        )
    except pystac.STACValidationError as error:
        raise OutputError(f"STAC item {item.id} is invalid: {error}") from error
    proj = ProjectionExtension.ext(item)
    if proj.code is None or proj.shape is None or len(proj.transform or []) < 6:
        raise OutputError(f"STAC item {item.id} lacks projection code, shape or transform")
    for key, asset in item.assets.items():
        if asset.href.startswith("./") and asset.media_type == pystac.MediaType.COG:
            bands = RasterExtension.ext(asset).bands
            if not bands or bands[0].data_type is None:
                raise OutputError(f"STAC asset {key} lacks raster band facts")
