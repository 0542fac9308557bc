"""Read a scene's source lazily in its native dtype, before bands are named and scaled.

Sources: one multi-band GeoTIFF/COG/VRT/JP2, a folder or list of single-band files
(Sentinel-2 JP2s at 10/20/60 m, Landsat ``*_B4.TIF``, per-band COGs; resampled lazily
onto one grid), a local STAC item (JSON) whose assets are per-band files, a Zarr store, or
netCDF (one file per band or one file with a band dimension). What the metadata states
(:mod:`.metadata`) travels with the pixels; nothing here decides what the bands are.

Input checks that need no pixel: the path exists and is a regular file or folder (a FIFO
would block the reader forever), the raster has a CRS and a geotransform (a CRS alone
places nothing), and a one-pixel probe read succeeds.
"""

from __future__ import annotations

import json
import math
import re
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dask.array as da
import numpy as np
import pandas as pd
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from pyproj import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from pipeline.errors import SceneError
from pipeline.scene.metadata import (
    ProductFacts,
    facts_from_mtl,
    facts_from_names,
    facts_from_stac,
    facts_from_tags,
)
from pipeline.scene.reader import (
    READ_OPTIONS,
    RESAMPLING,
    Grid,
    RasterBlockSource,
    as_scene_array,
    lazy_raster,
)
from pipeline.scene_kind import is_zarr_store

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf")
_RESAMPLING = RESAMPLING
_REMOTE_SCHEMES = {"http", "https", "s3", "gs", "az", "abfs", "ftp"}

PathLike = str | Path


@dataclass
class _Raw:
    """A source read lazily in its native dtype, before bands are named and scaled."""

    data: xr.DataArray  # (band, y, x), dask-backed, CRS set, band coord = 0..n-1
    labels: list[str | None]  # per band: description / file stem / variable / asset key
    label_kind: str  # 'description', 'filename', 'variable', 'asset' or 'none'
    nodata: list[float | None]  # per band nodata declared by the file
    paths: list[str]
    tags: dict[str, str] = field(default_factory=dict)
    resampling: dict[str, Any] | None = None
    stored: dict[str, Any] | None = None  # attrs of a scene this module wrote before
    skipped: list[str] = field(default_factory=list)
    # a set of files (folder, STAC item) whose non-band members are skipped, not refused
    from_folder: bool = False
    # per band: further names (STAC eo:bands name and common name)
    alt_labels: list[tuple[str, ...]] = field(default_factory=list)
    # per band scale/offset stated by the metadata (GDAL band scale, STAC raster:bands)
    meta_scale: list[float | None] = field(default_factory=list)
    meta_offset: list[float | None] = field(default_factory=list)
    meta_source: str | None = None
    facts: ProductFacts = field(default_factory=ProductFacts)
    # the plain raster files under ``data`` (no warp, no JPEG 2000) and their block shape
    # (rows, cols), which :mod:`.windows` can read directly; empty otherwise
    block_sources: tuple[RasterBlockSource, ...] = ()
    block_shape: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.alt_labels = self.alt_labels or [()] * n
        self.meta_scale = self.meta_scale or [None] * n
        self.meta_offset = self.meta_offset or [None] * n

    @property
    def where(self) -> str:
        """The source as a message names it: the file, or the folder of a file set."""
        if len(self.paths) == 1:
            return self.paths[0]
        return f"{len(self.paths)} files in {Path(self.paths[0]).parent}"


def check_path(path: Path, what: str = "scene") -> None:
    """The path exists and is a regular file or a folder (FIFOs and devices block)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SceneError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise SceneError(f"cannot access {what} {path}: {exc.strerror or exc}") from exc
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
        )
        raise SceneError(f"{what} {path} is {kind}, not a regular file or folder")


def _open_rasterio(path: Path) -> rasterio.DatasetReader:
    """Open and probe one raster so that corrupt or unplaced files fail here, by path."""
    check_path(path)
    try:
        with rasterio.Env(**READ_OPTIONS), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except (RasterioError, OSError) as exc:
        raise SceneError(f"cannot read scene file {path}: {exc}") from exc
    try:
        with rasterio.Env(**READ_OPTIONS):
            src.read(1, window=Window(0, 0, 1, 1))
    except (RasterioError, OSError) as exc:
        src.close()
        raise SceneError(
            f"scene file {path} is corrupt or unreadable: {exc.__cause__ or exc}"
        ) from exc
    problem = _georeference_problem(src)
    if problem:
        src.close()
        raise SceneError(f"{path} {problem}")
    return src


def _georeference_problem(src: rasterio.DatasetReader) -> str | None:
    """Why a raster cannot be placed on the ground, or None."""
    if src.crs is None:
        return (
            "has no CRS (coordinate reference system); georeference it first "
            "(e.g. gdal_edit.py -a_srs EPSG:xxxx)"
        )
    t = src.transform
    if t.is_identity:
        gcps = src.gcps[0] if src.gcps else []
        how = "only ground control points" if gcps else "no geotransform"
        return (
            f"has a CRS but {how}: pixels have no map position; georeference it first "
            "(gdalwarp for GCPs, gdal_edit.py -a_ullr for corner coordinates)"
        )
    if t.b != 0 or t.d != 0:
        return "has a rotated geotransform; warp it north-up first (gdalwarp)"
    return None


def _chunk_spec(chunks: int) -> dict[str, int]:
    if not isinstance(chunks, int) or chunks < 16:
        raise SceneError(f"chunks must be an integer >= 16, got {chunks!r}")
    return {"band": -1, "y": chunks, "x": chunks}


def _grid_of(src: rasterio.DatasetReader) -> Grid:
    return Grid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height)


def _target_grid(srcs: Sequence[rasterio.DatasetReader], resolution: float | None) -> Grid:
    """The finest source grid, or the finest source's extent at ``resolution``."""
    finest = min(srcs, key=lambda s: abs(s.res[0]) * abs(s.res[1]))
    if resolution is None:
        return _grid_of(finest)
    left, bottom, right, top = finest.bounds
    width = max(1, round((right - left) / resolution))
    height = max(1, round((top - bottom) / resolution))
    transform = Affine(resolution, 0, left, 0, -resolution, top)
    return Grid(finest.crs.to_wkt(), tuple(transform)[:6], width, height)


def _lazy_on_grid(
    src: rasterio.DatasetReader, grid: Grid, chunks: int, resampling: str
) -> tuple[da.Array, bool, RasterBlockSource]:
    """Every band of ``src`` lazily on ``grid``; warped per block when its grid differs."""
    same = (
        CRS.from_user_input(src.crs) == CRS.from_wkt(grid.crs_wkt)
        and src.transform.almost_equals(grid.affine)
        and (src.width, src.height) == (grid.width, grid.height)
    )
    source = RasterBlockSource(
        path=str(src.name),
        indexes=tuple(range(1, src.count + 1)),
        dtype=str(src.dtypes[0]),
        warp_to=None if same else grid,
        resampling=resampling,
        keep=not same or src.driver == "JP2OpenJPEG",
    )
    return lazy_raster(source, grid.height, grid.width, chunks), not same, source


def _direct(sources: Sequence[RasterBlockSource]) -> tuple[RasterBlockSource, ...]:
    """The sources if all of them can be read window by window as they are (see
    :mod:`.windows`), else none."""
    plain = all(s.warp_to is None and not s.keep for s in sources)
    return tuple(sources) if plain else ()


def _metadata_scales(src: rasterio.DatasetReader) -> tuple[list, list]:
    """GDAL band scale/offset where the file states one (not the 1/0 default)."""
    scales, offsets = list(src.scales), list(src.offsets)
    if all(s == 1 for s in scales) and all(o == 0 for o in offsets):
        return [None] * src.count, [None] * src.count
    return [float(s) for s in scales], [float(o) for o in offsets]


def _read_raster_file(path: Path, chunks: int, resolution: float | None, resampling: str) -> _Raw:
    _chunk_spec(chunks)
    with _open_rasterio(path) as src:
        descriptions = [d.strip() if d else None for d in src.descriptions]
        tags = {k: str(v) for k, v in src.tags().items()}
        nodata = list(src.nodatavals)
        grid = _target_grid([src], resolution)
        data, warped, source = _lazy_on_grid(src, grid, chunks, resampling)
        native_res = src.res[0]
        scales, offsets = _metadata_scales(src)
        block = src.block_shapes[0]
    stored = _stored_scene_attrs(tags)
    kind = "description" if all(descriptions) else "none"
    return _Raw(
        data=as_scene_array(data, grid),
        labels=descriptions if kind != "none" else [None] * len(descriptions),
        label_kind=kind,
        nodata=nodata,
        paths=[str(path)],
        tags=tags,
        resampling=(
            {"method": resampling, "from_m": native_res, "to_m": abs(grid.transform[0])}
            if warped
            else None
        ),
        stored=stored,
        meta_scale=scales,
        meta_offset=offsets,
        meta_source="GDAL band scale/offset" if any(s is not None for s in scales) else None,
        block_sources=_direct([source]),
        block_shape=(int(block[0]), int(block[1])),
    )


def _read_raster_set(
    paths: list[Path],
    chunks: int,
    resolution: float | None,
    resampling: str,
    skip_multiband: bool,
) -> _Raw:
    """Single-band files (e.g. Sentinel-2 JP2s) onto one grid, the finest by default."""
    _chunk_spec(chunks)
    srcs: list[rasterio.DatasetReader] = []
    skipped: list[str] = []
    try:
        for p in paths:
            src = _open_rasterio(p)
            if src.count != 1:
                src.close()
                if skip_multiband:
                    skipped.append(f"{p} ({src.count} bands, not a single-band file)")
                    continue
                raise SceneError(
                    f"{p} has {src.count} bands; a list of files must hold one band per file"
                )
            srcs.append(src)
        if not srcs:
            raise SceneError(f"no single-band raster files among {[str(p) for p in paths]}")
        grid = _target_grid(srcs, resolution)
        arrays, resampled, scales, offsets, sources = [], [], [], [], []
        for src in srcs:
            arr, warped, source = _lazy_on_grid(src, grid, chunks, resampling)
            arrays.append(arr)
            sources.append(source)
            if warped:
                resampled.append(f"{Path(src.name).name} ({src.res[0]:g} m)")
            s, o = _metadata_scales(src)
            scales.append(s[0])
            offsets.append(o[0])
        nodata = [s.nodata for s in srcs]
        names = [str(Path(s.name)) for s in srcs]
        tags = {k: str(v) for k, v in srcs[0].tags().items()}
        block = srcs[0].block_shapes[0]
    finally:
        for s in srcs:
            s.close()
    data = da.concatenate(arrays, axis=0).rechunk({0: -1})
    return _Raw(
        data=as_scene_array(data, grid),
        labels=[Path(n).stem for n in names],
        label_kind="filename",
        nodata=nodata,
        paths=names,
        tags=tags,
        resampling=(
            {
                "method": resampling,
                "to_m": abs(grid.transform[0]),
                "resampled_bands": resampled,
                "grid": "finest source band" if resolution is None else f"{resolution:g} m",
            }
            if resampled
            else None
        ),
        skipped=skipped,
        meta_scale=scales,
        meta_offset=offsets,
        meta_source="GDAL band scale/offset" if any(s is not None for s in scales) else None,
        block_sources=_direct(sources),
        block_shape=(int(block[0]), int(block[1])),
    )


# ------------------------------------------------------------------ STAC items


def _is_remote(href: str) -> bool:
    return urlparse(href).scheme.lower() in _REMOTE_SCHEMES


def _asset_band(asset: dict[str, Any]) -> dict[str, Any] | None:
    """The single band object of an asset (STAC 1.0 eo:bands or 1.1 bands), or None."""
    for key in ("eo:bands", "bands"):
        bands = asset.get(key)
        if isinstance(bands, list) and len(bands) == 1 and isinstance(bands[0], dict):
            return bands[0]
    return None


def _asset_radiometry(asset: dict[str, Any]) -> tuple[float | None, float | None, Any]:
    """(scale, offset, nodata) of an asset: raster:bands (1.0) or raster:* fields (1.1)."""
    rb = asset.get("raster:bands")
    band = rb[0] if isinstance(rb, list) and len(rb) == 1 and isinstance(rb[0], dict) else {}
    b11 = _asset_band(asset) or {}
    scale = band.get("scale", b11.get("raster:scale", asset.get("raster:scale")))
    offset = band.get("offset", b11.get("raster:offset", asset.get("raster:offset")))
    nodata = band.get("nodata", b11.get("nodata", asset.get("nodata")))
    return (
        float(scale) if isinstance(scale, int | float) else None,
        float(offset) if isinstance(offset, int | float) else None,
        nodata,
    )


def _is_raster_asset(key: str, asset: dict[str, Any]) -> bool:
    roles = set(asset.get("roles") or [])
    if roles & {"thumbnail", "overview", "metadata", "visual"}:
        return False
    media = str(asset.get("type") or "")
    href = str(asset.get("href") or "")
    suffix = Path(urlparse(href).path).suffix.lower()
    return suffix in RASTER_SUFFIXES or "tiff" in media or "jp2" in media


def _asset_file(item_path: Path, key: str, asset: dict[str, Any]) -> Path:
    """The local file an asset's href names (relative hrefs from the item's folder)."""
    href = str(asset.get("href") or "")
    if urlparse(href).scheme.lower() == "file":
        href = urlparse(href).path
    if _is_remote(href):
        raise SceneError(
            f"asset {key!r} of STAC item {item_path} points to {href}; this pipeline reads "
            "local files only: download the assets and make their hrefs local paths "
            "(relative to the item file)"
        )
    return (item_path.parent / href).resolve() if not Path(href).is_absolute() else Path(href)


def _read_stac_item(path: Path, chunks: int, resolution: float | None, resampling: str) -> _Raw:
    """A local STAC item: its single-band raster assets are the bands (asset keys and
    eo:bands names label them; raster:bands scale/offset/nodata state the radiometry)."""
    try:
        item = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SceneError(f"cannot read STAC item {path}: {exc}") from exc
    if not isinstance(item, dict) or item.get("type") != "Feature" or "assets" not in item:
        raise SceneError(f"{path} is JSON but not a STAC item (type Feature with assets)")
    chosen: list[tuple[str, dict[str, Any], Path]] = []
    skipped: list[str] = []
    with_bands = any(_asset_band(a) for a in item["assets"].values() if isinstance(a, dict))
    multiband = None if with_bands else _multiband_asset(item["assets"])
    if multiband is not None:
        return _read_stac_multiband(path, item, *multiband, chunks, resolution, resampling)
    for key, asset in item["assets"].items():
        if not isinstance(asset, dict) or not _is_raster_asset(key, asset):
            roles = ", ".join(asset.get("roles") or []) if isinstance(asset, dict) else ""
            skipped.append(f"asset {key} (not a raster band{': ' + roles if roles else ''})")
            continue
        if with_bands and _asset_band(asset) is None:
            skipped.append(f"asset {key} (not a single spectral band)")
            continue
        chosen.append((key, asset, _asset_file(path, key, asset)))
    if not chosen:
        raise SceneError(f"STAC item {path} has no raster asset (GeoTIFF, COG or JP2) to read")
    raw = _read_raster_set([f for _, _, f in chosen], chunks, resolution, resampling, False)
    raw.labels = [key for key, _, _ in chosen]
    raw.label_kind = "asset"
    raw.from_folder = True
    raw.skipped.extend(skipped)
    raw.alt_labels = []
    scales, offsets = [], []
    for i, (_, asset, _) in enumerate(chosen):
        band = _asset_band(asset) or {}
        names = (band.get("name"), band.get("common_name"), band.get("eo:common_name"))
        raw.alt_labels.append(tuple(str(n) for n in names if n))
        scale, offset, nodata = _asset_radiometry(asset)
        scales.append(scale)
        offsets.append(offset if scale is not None else None)
        if nodata is not None and nodata != "nan":
            raw.nodata[i] = float(nodata)
    if any(s is not None for s in scales):
        raw.meta_scale, raw.meta_offset = scales, offsets
        raw.meta_source = f"STAC raster:bands in {path.name}"
    facts_from_stac(item.get("properties") or {}, path.name, raw.facts)
    raw.paths = [str(path), *raw.paths]
    return raw


def _multiband_asset(assets: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The one raster asset of an item that names no single-band assets: a multi-band
    file such as NAIP on Planetary Computer (an ``image`` asset holding red, green,
    blue, NIR), or None when there are several."""
    found = [
        (key, a) for key, a in assets.items() if isinstance(a, dict) and _is_raster_asset(key, a)
    ]
    return found[0] if len(found) == 1 else None


def _read_stac_multiband(
    path: Path,
    item: dict[str, Any],
    key: str,
    asset: dict[str, Any],
    chunks: int,
    resolution: float | None,
    resampling: str,
) -> _Raw:
    """A STAC item whose bands are the bands of one file: ``eo:bands`` names them (name
    and common name), ``raster:bands`` gives each band's scale, offset and nodata."""
    file = _asset_file(path, key, asset)
    raw = _read_raster_file(file, chunks, resolution, resampling)
    bands = asset.get("eo:bands") or asset.get("bands") or []
    if bands and len(bands) != raw.data.sizes["band"]:
        raise SceneError(
            f"asset {key!r} of STAC item {path} lists {len(bands)} bands but {file} has "
            f"{raw.data.sizes['band']}"
        )
    names = [
        tuple(str(n) for n in (b.get("name"), b.get("common_name"), b.get("eo:common_name")) if n)
        for b in bands
        if isinstance(b, dict)
    ]
    if bands and all(names):  # otherwise the file's own band descriptions name the bands
        raw.labels = [n[0] for n in names]
        raw.label_kind = "asset"
        raw.alt_labels = [n[1:] for n in names]
    rb = asset.get("raster:bands")
    if isinstance(rb, list) and len(rb) == len(bands):
        scales = [b.get("scale") if isinstance(b, dict) else None for b in rb]
        if any(isinstance(v, int | float) for v in scales):
            raw.meta_scale = [float(v) if isinstance(v, int | float) else None for v in scales]
            raw.meta_offset = [
                float(b.get("offset", 0.0)) if isinstance(b, dict) else None for b in rb
            ]
            raw.meta_source = f"STAC raster:bands in {path.name}"
    facts_from_stac(item.get("properties") or {}, path.name, raw.facts)
    raw.paths = [str(path), *raw.paths]
    return raw


# ------------------------------------------------------------------ netCDF and Zarr


def _crs_from_attrs(var: xr.DataArray, ds: xr.Dataset) -> CRS | None:
    if ds.rio.crs is not None:
        return ds.rio.crs
    if var.rio.crs is not None:
        return var.rio.crs
    for holder in (var.attrs, ds.attrs):
        value = holder.get("crs") or holder.get("spatial_ref")
        if isinstance(value, str) and value.strip():
            text = re.sub(r"^\+init=", "", value.strip())
            try:
                return CRS.from_user_input(text)
            except Exception:  # pyproj raises several types; the message is what matters
                continue
    return None


def _open_xr_dataset(path: Path, engine_order: Sequence[str]) -> xr.Dataset:
    errors = []
    for engine in engine_order:
        try:
            return xr.open_dataset(
                path, engine=engine, chunks={}, decode_coords="all", mask_and_scale=False
            )
        except Exception as exc:  # each engine raises its own types; report them all
            errors.append(f"{engine}: {exc}")
    raise SceneError(f"cannot read scene file {path}: " + "; ".join(errors))


def _dataset_bands(ds: xr.Dataset, path: Path) -> list[tuple[xr.DataArray, str | None]]:
    """Split a Dataset into (y, x) band arrays with a label each (or None)."""
    out: list[tuple[xr.DataArray, str | None]] = []
    for name, var in ds.data_vars.items():
        if not {"y", "x"} <= set(var.dims):
            continue
        crs = _crs_from_attrs(var, ds)
        if crs is None:
            raise SceneError(f"{path} has no CRS (no grid mapping or crs attribute on {name})")
        extra = [d for d in var.dims if d not in ("y", "x")]
        if len(extra) > 1:
            raise SceneError(f"{path}: variable {name} has dims {var.dims}; expected (band, y, x)")
        natives = var.attrs.get("native_bands")
        if extra:
            dim = extra[0]
            values: list[str | None] = [str(v) for v in var[dim].values]
            if isinstance(natives, list | tuple) and len(natives) == var.sizes[dim]:
                values = [str(v) for v in natives]
            elif var[dim].dtype.kind not in "OUS":
                values = [None] * var.sizes[dim]
            for i, label in enumerate(values):
                band = var.isel({dim: i}, drop=True)
                out.append((band.rio.write_crs(crs), label))
        else:
            label = None if str(name).startswith("__xarray") else str(name)
            out.append((var.rio.write_crs(crs), label))
    if not out:
        raise SceneError(f"{path} holds no raster variable with (y, x) dimensions")
    return out


def _clean_band(arr: xr.DataArray) -> xr.DataArray:
    """Drop legacy grid attributes: the coordinates, not 'transform'/'res', define the grid."""
    drop = [c for c in arr.coords if c not in ("y", "x", "spatial_ref")]
    arr = arr.drop_vars(drop)
    arr.attrs = {}
    return arr


def _regrid_like(arr: xr.DataArray, ref: xr.DataArray, resampling: str) -> xr.DataArray:
    """Lazily put ``arr`` on ``ref``'s x/y coordinates (NaN outside its extent)."""
    if arr.sizes == ref.sizes and np.allclose(arr.x, ref.x) and np.allclose(arr.y, ref.y):
        return arr.assign_coords(x=ref.x, y=ref.y)
    if resampling == "bilinear":
        return arr.astype(np.float64).interp(x=ref.x, y=ref.y, method="linear")
    step = max(abs(float(arr.x[1] - arr.x[0])), abs(float(arr.y[1] - arr.y[0])))
    return arr.reindex(x=ref.x, y=ref.y, method="nearest", tolerance=step / 2 + 1e-6)


def _cf_scale(attrs: dict[str, Any]) -> tuple[float | None, float | None]:
    """CF ``scale_factor``/``add_offset`` of a variable read without mask_and_scale."""
    scale, offset = attrs.get("scale_factor"), attrs.get("add_offset", 0.0)
    if not isinstance(scale, int | float | np.number) or (float(scale) == 1.0 and not offset):
        return None, None
    return float(scale), float(offset) if isinstance(offset, int | float | np.number) else 0.0


def _read_xr_sources(
    paths: list[Path], chunks: int, resolution: float | None, resampling: str, kind: str
) -> _Raw:
    """netCDF files or a Zarr store: variables/files become bands on the finest grid."""
    items: list[tuple[xr.DataArray, str | None, Path, dict[str, Any]]] = []
    for p in paths:
        check_path(p)
        engines = ("zarr",) if kind == "zarr" else ("scipy", "netcdf4", "h5netcdf")
        ds = _open_xr_dataset(p, engines)
        for arr, label in _dataset_bands(ds, p):
            items.append((arr, label, p, {**ds.attrs, **arr.attrs}))
    crs = items[0][0].rio.crs
    for arr, _, p, _ in items:
        if CRS.from_user_input(arr.rio.crs) != CRS.from_user_input(crs):
            raise SceneError(f"{p} has CRS {arr.rio.crs}, unlike {items[0][2]} ({crs})")

    def step(a: xr.DataArray) -> float:
        return abs(float(a.x[1] - a.x[0])) if a.sizes["x"] > 1 else math.inf

    finest = min((it[0] for it in items), key=step)
    ref = finest
    if resolution is not None:
        x0 = float(finest.x.min()) - step(finest) / 2
        y1 = float(finest.y.max()) + step(finest) / 2
        nx = max(1, round(finest.sizes["x"] * step(finest) / resolution))
        ny = max(1, round(finest.sizes["y"] * step(finest) / resolution))
        ref = xr.DataArray(
            np.empty((ny, nx), np.uint8),
            dims=("y", "x"),
            coords={
                "x": x0 + resolution * (np.arange(nx) + 0.5),
                "y": y1 - resolution * (np.arange(ny) + 0.5),
            },
        )
    bands, nodata, resampled, scales, offsets = [], [], [], [], []
    labels: list[str | None] = []
    label_kinds: set[str] = set()
    for arr, label, p, attrs in items:
        fill = attrs.get("_FillValue", attrs.get("nodata", arr.encoding.get("_FillValue")))
        nodata.append(float(fill) if isinstance(fill, int | float | np.number) else None)
        s, o = _cf_scale(attrs)
        scales.append(s)
        offsets.append(o)
        clean = _clean_band(arr)
        regridded = _regrid_like(clean, ref, resampling)
        if regridded is not clean and step(clean) != step(ref):
            resampled.append(f"{label or p.name} ({step(clean):g} m)")
        bands.append(regridded.drop_vars(["spatial_ref", "band"], errors="ignore"))
        labels.append(label if label is not None else p.stem)
        label_kinds.add("variable" if label is not None else "filename")
    data = xr.concat(
        bands,
        dim=pd.Index(np.arange(len(bands)), name="band"),
        join="override",
        coords="minimal",
        compat="override",
    )
    data = data.transpose("band", "y", "x").chunk(_chunk_spec(chunks))
    data = data.rio.write_crs(crs).rio.set_spatial_dims(x_dim="x", y_dim="y")
    data = data.rio.write_transform(data.rio.transform(recalc=True))
    data.attrs = {}
    stored = _stored_scene_attrs(items[0][3])
    raw = _Raw(
        data=data,
        labels=labels,
        # a stem may hold other tokens (blue_band -> blue): token matching for any stem
        label_kind="filename" if "filename" in label_kinds else "variable",
        nodata=nodata,
        paths=[str(p) for p in paths],
        resampling={"method": resampling, "to_m": step(ref), "resampled_bands": resampled}
        if resampled
        else None,
        stored=stored,
        meta_scale=scales,
        meta_offset=offsets,
        meta_source="CF scale_factor/add_offset" if any(s is not None for s in scales) else None,
    )
    for key in ("platform", "instrument", "mission"):
        value = items[0][3].get(key)
        if isinstance(value, str) and value.strip() and raw.facts.platform is None:
            raw.facts.platform = (value.strip(), f"attribute {key} of {items[0][2].name}")
    return raw


def _stored_scene_attrs(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """Attributes of a scene written by this module (already reflectance), else None."""
    prov = attrs.get("provenance")
    if not isinstance(prov, str):
        return None
    try:
        parsed = json.loads(prov)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or "radiometry" not in parsed:
        return None
    return {
        "provenance": parsed,
        "sensor": attrs.get("sensor"),
        "native_bands": attrs.get("native_bands"),
    }


def _dispatch(
    source: PathLike | Sequence[PathLike], chunks: int, resolution: float | None, resampling: str
) -> _Raw:
    if isinstance(source, str | Path):
        path = Path(source)
        check_path(path)
        if is_zarr_store(path) or path.suffix == ".zarr":
            return _read_xr_sources([path], chunks, resolution, resampling, "zarr")
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES + NETCDF_SUFFIXES
            )
            if not files:
                raise SceneError(f"no raster files (*.tif, *.jp2, *.nc) in folder {path}")
            if all(p.suffix.lower() in NETCDF_SUFFIXES for p in files):
                return _read_xr_sources(files, chunks, resolution, resampling, "netcdf")
            rasters = [p for p in files if p.suffix.lower() in RASTER_SUFFIXES]
            if len(rasters) == 1:
                return _read_raster_file(rasters[0], chunks, resolution, resampling)
            raw = _read_raster_set(rasters, chunks, resolution, resampling, True)
            raw.from_folder = True
            return raw
        if path.suffix.lower() == ".json":
            return _read_stac_item(path, chunks, resolution, resampling)
        if path.suffix.lower() in NETCDF_SUFFIXES:
            return _read_xr_sources([path], chunks, resolution, resampling, "netcdf")
        return _read_raster_file(path, chunks, resolution, resampling)
    paths = [Path(p) for p in source]
    if not paths:
        raise SceneError("empty list of scene files")
    for p in paths:
        check_path(p)
    if all(p.suffix.lower() in NETCDF_SUFFIXES for p in paths):
        return _read_xr_sources(paths, chunks, resolution, resampling, "netcdf")
    if len(paths) == 1:
        return _read_raster_file(paths[0], chunks, resolution, resampling)
    return _read_raster_set(paths, chunks, resolution, resampling, False)


def _read_source(
    source: PathLike | Sequence[PathLike],
    chunks: int,
    resolution: float | None,
    resampling: str,
) -> _Raw:
    """The raw source and what its metadata states (tags, MTL, names)."""
    raw = _dispatch(source, chunks, resolution, resampling)
    facts_from_tags(raw.tags, raw.facts)
    if raw.stored is None:
        facts_from_mtl(raw.paths, raw.facts)
    facts_from_names(raw.paths, raw.facts)
    return raw
