"""Read a scene's source lazily in its native dtype, before bands are named and scaled.

Sources: one multi-band GeoTIFF/COG, a folder or list of single-band files (Sentinel-2
JP2s at 10/20/60 m, resampled lazily onto one grid through GDAL warped VRTs), a Zarr
store, or netCDF (one file per band or one file with a band dimension).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.errors import SceneError

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf")
_RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear}

PathLike = str | Path


@dataclass
class _Raw:
    """A source read lazily in its native dtype, before bands are named and scaled."""

    data: xr.DataArray  # (band, y, x), dask-backed, CRS set, band coord = 0..n-1
    labels: list[str | None]  # per band: description / file stem / variable name
    label_kind: str  # 'description', 'filename', 'variable' or 'none'
    nodata: list[float | None]  # per band nodata declared by the file
    paths: list[str]
    tags: dict[str, str] = field(default_factory=dict)
    resampling: dict[str, Any] | None = None
    stored: dict[str, Any] | None = None  # attrs of a scene this module wrote before
    skipped: list[str] = field(default_factory=list)
    from_folder: bool = False


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise SceneError(f"scene not found: {path}")


def _open_rasterio(path: Path) -> rasterio.DatasetReader:
    """Open and probe one raster so that corrupt files fail here, naming the path."""
    _check_exists(path)
    try:
        src = rasterio.open(path)
    except (RasterioError, OSError) as exc:
        raise SceneError(f"cannot read scene file {path}: {exc}") from exc
    try:
        src.read(1, window=Window(0, 0, 1, 1))
    except (RasterioError, OSError) as exc:
        src.close()
        raise SceneError(f"scene file {path} is corrupt or unreadable: {exc}") from exc
    if src.crs is None:
        src.close()
        raise SceneError(
            f"{path} has no CRS (coordinate reference system); georeference it first "
            "(e.g. gdal_edit.py -a_srs EPSG:xxxx)"
        )
    return src


def _chunk_spec(chunks: int) -> dict[str, int]:
    if not isinstance(chunks, int) or chunks < 16:
        raise SceneError(f"chunks must be an integer >= 16, got {chunks!r}")
    return {"band": -1, "y": chunks, "x": chunks}


def _open_da(obj: Any, chunks: int, path: Path) -> xr.DataArray:
    try:
        arr = rioxarray.open_rasterio(
            obj, chunks=_chunk_spec(chunks), lock=False, mask_and_scale=False
        )
    except (RasterioError, OSError, ValueError) as exc:
        raise SceneError(f"cannot read scene file {path}: {exc}") from exc
    assert isinstance(arr, xr.DataArray)
    arr.attrs = {}
    return arr.assign_coords(band=np.arange(arr.sizes["band"]))


def _target_grid(
    srcs: Sequence[rasterio.DatasetReader], resolution: float | None
) -> tuple[CRS, Affine, int, int, float]:
    """The finest source grid, or the finest source's extent at ``resolution``."""
    finest = min(srcs, key=lambda s: abs(s.res[0]) * abs(s.res[1]))
    if resolution is None:
        return finest.crs, finest.transform, finest.width, finest.height, finest.res[0]
    left, bottom, right, top = finest.bounds
    width = max(1, round((right - left) / resolution))
    height = max(1, round((top - bottom) / resolution))
    return finest.crs, Affine(resolution, 0, left, 0, -resolution, top), width, height, resolution


def _warp_or_open(
    src: rasterio.DatasetReader,
    grid: tuple[CRS, Affine, int, int, float],
    chunks: int,
    resampling: str,
) -> tuple[xr.DataArray, bool]:
    """Open ``src`` lazily on ``grid``; a warped VRT when its own grid differs."""
    crs, transform, width, height, _ = grid
    path = Path(src.name)
    same = (
        src.crs == crs
        and src.transform.almost_equals(transform)
        and (src.width, src.height) == (width, height)
    )
    if same:
        return _open_da(path, chunks, path), False
    vrt = WarpedVRT(
        src,
        crs=crs,
        transform=transform,
        width=width,
        height=height,
        resampling=_RESAMPLING[resampling],
    )
    return _open_da(vrt, chunks, path), True


def _read_raster_file(path: Path, chunks: int, resolution: float | None, resampling: str) -> _Raw:
    with _open_rasterio(path) as src:
        descriptions = [d.strip() if d else None for d in src.descriptions]
        tags = {k: str(v) for k, v in src.tags().items()}
        nodata = [src.nodata] * src.count
        grid = _target_grid([src], resolution)
        data, warped = _warp_or_open(src, grid, chunks, resampling)
        native_res = src.res[0]
    stored = _stored_scene_attrs(tags)
    kind = "description" if all(descriptions) else "none"
    return _Raw(
        data=data,
        labels=descriptions if kind != "none" else [None] * len(descriptions),
        label_kind=kind,
        nodata=nodata,
        paths=[str(path)],
        tags=tags,
        resampling=(
            {"method": resampling, "from_m": native_res, "to_m": grid[4]} if warped else None
        ),
        stored=stored,
    )


def _read_raster_set(
    paths: list[Path],
    chunks: int,
    resolution: float | None,
    resampling: str,
    skip_multiband: bool,
) -> _Raw:
    """Single-band files (e.g. Sentinel-2 JP2s) onto one grid, the finest by default."""
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
        arrays, resampled = [], []
        for src in srcs:
            arr, warped = _warp_or_open(src, grid, chunks, resampling)
            arrays.append(arr)
            if warped:
                resampled.append(f"{Path(src.name).name} ({src.res[0]:g} m)")
        nodata = [s.nodata for s in srcs]
        names = [str(Path(s.name)) for s in srcs]
    finally:
        for s in srcs:
            s.close()
    data = xr.concat(arrays, dim="band", join="override", coords="minimal", compat="override")
    data = data.assign_coords(band=np.arange(len(arrays))).chunk(_chunk_spec(chunks))
    return _Raw(
        data=data,
        labels=[Path(n).stem for n in names],
        label_kind="filename",
        nodata=nodata,
        paths=names,
        resampling={
            "method": resampling,
            "to_m": grid[4],
            "resampled_bands": resampled,
            "grid": "finest source band" if resolution is None else f"{resolution:g} m",
        }
        if resampled
        else None,
        skipped=skipped,
    )


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
            values = [str(v) for v in var[dim].values]
            if isinstance(natives, list | tuple) and len(natives) == var.sizes[dim]:
                values = [str(v) for v in natives]
            elif var[dim].dtype.kind not in "OUS":
                values = [None] * var.sizes[dim]  # type: ignore[list-item]
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


def _read_xr_sources(
    paths: list[Path], chunks: int, resolution: float | None, resampling: str, kind: str
) -> _Raw:
    """netCDF files or a Zarr store: variables/files become bands on the finest grid."""
    items: list[tuple[xr.DataArray, str | None, Path, dict[str, Any]]] = []
    for p in paths:
        _check_exists(p)
        engines = ("zarr",) if kind == "zarr" else ("scipy", "netcdf4", "h5netcdf")
        ds = _open_xr_dataset(p, engines)
        for arr, label in _dataset_bands(ds, p):
            items.append((arr, label, p, dict(arr.attrs)))
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
    bands, labels, nodata, resampled = [], [], [], []
    label_kinds: set[str] = set()
    for arr, label, p, attrs in items:
        fill = attrs.get("_FillValue", attrs.get("nodata", arr.encoding.get("_FillValue")))
        nodata.append(float(fill) if isinstance(fill, int | float | np.number) else None)
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
    return _Raw(
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
    )


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


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any(
        (path / m).exists() for m in (".zgroup", ".zarray", "zarr.json", ".zmetadata")
    )


def _read_source(
    source: PathLike | Sequence[PathLike],
    chunks: int,
    resolution: float | None,
    resampling: str,
) -> _Raw:
    if isinstance(source, str | Path):
        path = Path(source)
        _check_exists(path)
        if _is_zarr(path) or path.suffix == ".zarr":
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
            return _read_raster_set(rasters, chunks, resolution, resampling, True)
        if path.suffix.lower() in NETCDF_SUFFIXES:
            return _read_xr_sources([path], chunks, resolution, resampling, "netcdf")
        return _read_raster_file(path, chunks, resolution, resampling)
    paths = [Path(p) for p in source]
    if not paths:
        raise SceneError("empty list of scene files")
    if all(p.suffix.lower() in NETCDF_SUFFIXES for p in paths):
        return _read_xr_sources(paths, chunks, resolution, resampling, "netcdf")
    if len(paths) == 1:
        return _read_raster_file(paths[0], chunks, resolution, resampling)
    return _read_raster_set(paths, chunks, resolution, resampling, False)
