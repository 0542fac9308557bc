"""Open any scene lazily as one reflectance ``xarray.DataArray``.

Every later stage (indices, APG, tiling, models) sees the same thing whatever the source:
dims (band, y, x), band coordinate = canonical codes (B, G, R, N, S1, ...), float32
reflectance, NaN where the source is nodata, CRS and transform through rioxarray, and a
dask array underneath so that nothing reads a whole scene into memory. Sensor facts come
only from the catalogs (:mod:`pipeline.sensors`); this module decides how a file's bands
map onto a catalog entry and records every radiometric choice in the provenance.

Sources: one multi-band GeoTIFF/COG, a folder or list of single-band files (Sentinel-2
JP2s at 10/20/60 m, resampled lazily onto one grid through GDAL warped VRTs), a Zarr
store, or netCDF (one file per band or one file with a band dimension).

Uncalibrated 8-bit products use the catalog's declared fallback: ONE common scale for all
bands, 1 / (99.5th percentile of the valid values of all bands, from a decimated read),
offset 0. A common scale keeps every normalised-difference index equal to the index of the
DN. Values above the percentile are NOT clipped to 1.0: clipping would change the index of
the brightest 0.5 % of pixels and break that equality; values slightly above 1 are
"brighter than the scene's bright reference", which real reflectance products also show.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import dask.array as da
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

from pipeline.errors import MissingBandError, NoValidDataError, SceneError
from pipeline.sensors import CANONICAL_BANDS, Sensor, SensorBand, all_sensors, load_sensor

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf")
#: Pixels read at most by decimated statistics (percentile fallback, nodata share).
DECIMATED_PIXELS = 1_000_000
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


# --------------------------------------------------------------------------- sources


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
        src, crs=crs, transform=transform, width=width, height=height,
        resampling=_RESAMPLING[resampling],
    )
    return _open_da(vrt, chunks, path), True


def _read_raster_file(
    path: Path, chunks: int, resolution: float | None, resampling: str
) -> _Raw:
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
    paths: list[Path], chunks: int, resolution: float | None, resampling: str,
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
            "method": resampling, "to_m": grid[4], "resampled_bands": resampled,
            "grid": "finest source band" if resolution is None else f"{resolution:g} m",
        } if resampled else None,
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
            np.empty((ny, nx), np.uint8), dims=("y", "x"),
            coords={"x": x0 + resolution * (np.arange(nx) + 0.5),
                    "y": y1 - resolution * (np.arange(ny) + 0.5)},
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
        bands, dim=pd.Index(np.arange(len(bands)), name="band"),
        join="override", coords="minimal", compat="override",
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
        if resampled else None,
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
    return {"provenance": parsed, "sensor": attrs.get("sensor"),
            "native_bands": attrs.get("native_bands")}


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any(
        (path / m).exists() for m in (".zgroup", ".zarray", "zarr.json", ".zmetadata")
    )


def _read_source(
    source: PathLike | Sequence[PathLike], chunks: int, resolution: float | None,
    resampling: str,
) -> _Raw:
    if isinstance(source, str | Path):
        path = Path(source)
        _check_exists(path)
        if _is_zarr(path) or path.suffix == ".zarr":
            return _read_xr_sources([path], chunks, resolution, resampling, "zarr")
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir()
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


# --------------------------------------------------------------------------- bands


def _match_label(label: str | None, sensor: Sensor, kind: str) -> SensorBand | None:
    """The catalog band a file label names: exact native name or code, or for file names
    a native name standing as a token in the stem (T33UUU_20170216T102101_B08 -> B08)."""
    if label is None:
        return None
    key = label.strip().lower()
    for b in sensor.bands:
        if b.native.lower() == key:
            return b
    if kind != "filename":
        for b in sensor.bands:
            if b.code.lower() == key:
                return b
        return None
    best: tuple[int, int, SensorBand] | None = None
    for b in sensor.bands:
        pattern = rf"(?:^|[_\-.]){re.escape(b.native.lower())}(?=$|[_\-.])"
        for m in re.finditer(pattern, key):
            cand = (m.end(), len(b.native), b)
            if best is None or cand[:2] > best[:2]:
                best = cand
    return best[2] if best else None


def _where(raw: _Raw) -> str:
    """The source as a message names it: the file, or the folder of a file set."""
    if len(raw.paths) == 1:
        return raw.paths[0]
    return f"{len(raw.paths)} files in {Path(raw.paths[0]).parent}"


def _describe_count(sensor: Sensor) -> str:
    listed = ", ".join(f"{b.native}={b.code}" for b in sensor.bands)
    return f"{len(sensor.bands)} bands ({listed})"


def _resolve_bands(
    raw: _Raw, sensor: Sensor, bands: Sequence[str] | None
) -> tuple[list[SensorBand], list[int]]:
    """Catalog bands for the source's bands, and the indices of the source bands to keep."""
    count = raw.data.sizes["band"]
    where = _where(raw)
    if bands is not None:
        bands = list(bands)
        if len(bands) != count:
            raise SceneError(
                f"bands= names {len(bands)} bands but {where} has {count}; name every band "
                "of the file in file order"
            )
        out = []
        for name in bands:
            if not sensor.has_band(name):
                raise SceneError(
                    f"band {name!r} given in bands= is not a band of sensor {sensor.name} "
                    f"({', '.join(sensor.native_names)})"
                )
            out.append(sensor.band(name))
        chosen = out
        keep = list(range(count))
    elif raw.label_kind != "none":
        matched = [_match_label(lb, sensor, raw.label_kind) for lb in raw.labels]
        keep = [i for i, m in enumerate(matched) if m is not None]
        unmatched = [raw.labels[i] for i, m in enumerate(matched) if m is None]
        if unmatched and raw.from_folder and keep:
            raw.skipped.extend(f"{lb} (not a band of {sensor.name})" for lb in unmatched)
        elif unmatched and (keep or raw.label_kind == "filename"):
            raise SceneError(
                f"{where}: band(s) {', '.join(map(str, unmatched))} are not bands of sensor "
                f"{sensor.name} ({', '.join(sensor.native_names)}); pass bands=[...]"
            )
        if keep:
            chosen = [m for m in matched if m is not None]  # type: ignore[misc]
        else:
            chosen, keep = _by_count(count, sensor, where)
    else:
        chosen, keep = _by_count(count, sensor, where)
    codes = [b.code for b in chosen]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise SceneError(f"{where}: band(s) {', '.join(dupes)} appear more than once")
    return chosen, keep


def _by_count(count: int, sensor: Sensor, where: str) -> tuple[list[SensorBand], list[int]]:
    layout = sensor.layout_for(count)
    if layout is not None:
        return list(layout), list(range(count))
    if count != len(sensor.bands):
        raise SceneError(
            f"{where} has {count} bands but sensor {sensor.name} declares "
            f"{_describe_count(sensor)}; pass bands=[...] with the file's native band names "
            "in file order, or the right sensor="
        )
    return list(sensor.bands), list(range(count))


def _detect_sensor(raw: _Raw) -> Sensor:
    """The one catalog entry the source's band names and dtype fit, or a SceneError."""
    where = raw.paths[0] if len(raw.paths) == 1 else Path(raw.paths[0]).parent
    dtype = str(raw.data.dtype)
    known = ", ".join(s.name for s in all_sensors())
    if raw.label_kind == "none":
        raise SceneError(
            f"cannot tell the sensor of {where} ({raw.data.sizes['band']} unnamed {dtype} "
            f"bands); pass sensor= one of: {known}"
        )
    product = _product_type(raw)
    cands = []
    for s in all_sensors():
        if not s.autodetect or (s.dtypes and dtype not in s.dtypes):
            continue
        if product and s.product_type and s.product_type != product:
            continue
        if all(_match_label(lb, s, raw.label_kind) for lb in raw.labels):
            cands.append(s)
    if len(cands) > 1:
        exact = [s for s in cands if len(s.bands) == len(raw.labels)]
        cands = exact if len(exact) == 1 else cands
    if len(cands) == 1:
        return cands[0]
    names = ", ".join(str(lb) for lb in raw.labels)
    if cands:
        raise SceneError(
            f"cannot tell the sensor of {where}: bands {names} ({dtype}) fit "
            f"{', '.join(s.name for s in cands)}; pass sensor="
        )
    raise SceneError(
        f"cannot tell the sensor of {where}: bands {names} ({dtype}) fit no catalog entry; "
        f"pass sensor= one of: {known}"
    )


def _product_type(raw: _Raw) -> str | None:
    for key in ("PRODUCT_TYPE", "product_type"):
        if raw.tags.get(key):
            return raw.tags[key]
    for p in raw.paths:
        m = re.search(r"MSI(L1C|L2A)", p)
        if m:
            return {"L1C": "S2MSI1C", "L2A": "S2MSI2A"}[m.group(1)]
    return None


# --------------------------------------------------------------------------- radiometry


def _parse_baseline(text: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"N?(\d{1,2})[.]?(\d{2})", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _baseline_from_metadata(raw: _Raw) -> tuple[str, str] | None:
    """(baseline, where it came from) from tags, SAFE names or an MTD_MSIL*.xml."""
    for key in ("PROCESSING_BASELINE", "processing_baseline"):
        if raw.tags.get(key):
            return raw.tags[key], f"tag {key}"
    for p in raw.paths:
        m = re.search(r"_N(\d{2})(\d{2})_", p)
        if m:
            return f"{m.group(1)}.{m.group(2)}", f"SAFE name in {p}"
    for p in raw.paths:
        for parent in list(Path(p).resolve().parents)[:5]:
            for mtd in ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml"):
                f = parent / mtd
                if f.is_file():
                    text = f.read_text(errors="ignore")
                    m = re.search(r"<PROCESSING_BASELINE>\s*([\d.]+)\s*<", text)
                    if m:
                        return m.group(1), str(f)
    return None


def _sensing_date(raw: _Raw) -> tuple[date, str] | None:
    for key in ("SENSING_DATE", "SENSING_TIME", "DATATAKE_SENSING_START"):
        value = raw.tags.get(key)
        if value and re.match(r"\d{4}-\d{2}-\d{2}", value):
            return date.fromisoformat(value[:10]), f"tag {key}"
    # Sentinel-2 style (_20170216T102101) first, then a plain _YYYYMMDD field as NAIP
    # (m_4709963_se_14_1_20200831) and Landsat product ids carry it.
    for pattern in (r"_(\d{4})(\d{2})(\d{2})T\d{6}", r"_(\d{4})(\d{2})(\d{2})(?=[_.]|$)"):
        for p in raw.paths:
            m = re.search(pattern, Path(p).name)
            if m:
                try:
                    sensed = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
                except ValueError:  # eight digits that are not a date
                    continue
                return sensed, f"file name {Path(p).name}"
    return None


def _baseline_rule(raw: _Raw, sensor: Sensor, baseline: str | None) -> dict[str, Any]:
    """Whether the sensor's baseline DN offset applies, and why (for the provenance)."""
    rule = sensor.baseline_offset
    if rule is None:
        return {"applies": False, "reason": f"sensor {sensor.name} has no baseline rule",
                "given": baseline}
    threshold = _parse_baseline(rule.from_baseline)
    if baseline is not None:
        value, source = str(baseline), "baseline= parameter"
    else:
        found = _baseline_from_metadata(raw)
        value, source = found if found else (None, None)
    if value is not None:
        parsed = _parse_baseline(value)
        if parsed is None:
            raise SceneError(f"processing baseline {value!r} ({source}) is not like '04.00'")
        applies = parsed >= threshold
        return {"applies": applies, "baseline": f"{parsed[0]:02d}.{parsed[1]:02d}",
                "source": source, "dn_offset": rule.dn_offset if applies else 0.0}
    sensed = _sensing_date(raw)
    if sensed is not None and rule.since_sensing_date:
        applies = sensed[0] >= date.fromisoformat(rule.since_sensing_date)
        return {
            "applies": applies, "baseline": None,
            "source": f"sensing date {sensed[0].isoformat()} from {sensed[1]} "
                      f"({'on/after' if applies else 'before'} {rule.since_sensing_date}; "
                      "assumes the product was not reprocessed)",
            "dn_offset": rule.dn_offset if applies else 0.0,
        }
    raise SceneError(
        f"cannot tell the processing baseline of {raw.paths[0]} (no PROCESSING_BASELINE tag, "
        f"SAFE name, MTD xml or sensing date); pass baseline= (e.g. '04.00' applies the "
        f"{rule.dn_offset:g} DN offset of {sensor.name}, '02.04' does not)"
    )


def _per_band(value: float | Sequence[float], n: int, what: str) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise SceneError(f"{what}= has {len(values)} values for {n} bands")
    return values


def _nodata_values(raw_nd: float | None, band: SensorBand, dtype: np.dtype) -> list[float]:
    """Nodata values representable in ``dtype`` (file's own and catalog's)."""
    out = []
    for v in (raw_nd, band.nodata):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v in out:
            continue
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if not (info.min <= v <= info.max) or float(v) != int(v):
                continue
        out.append(float(v))
    return out


def _mask_block(block: np.ndarray, nodata: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """Native DN -> float32 with NaN where the band's nodata (or NaN) is."""
    out = block.astype(np.float32)
    for i, values in enumerate(nodata):
        for v in values:
            out[i][block[i] == np.asarray(v).astype(block.dtype)] = np.nan
    return out


def _decimated(data: da.Array, max_pixels: int = DECIMATED_PIXELS) -> tuple[np.ndarray, int]:
    """A strided (band, y, x) sample of at most ~max_pixels pixels, and its step."""
    _, h, w = data.shape
    step = max(1, math.ceil(math.sqrt(h * w / max_pixels)))
    return np.asarray(data[:, ::step, ::step].compute(scheduler="synchronous")), step


# --------------------------------------------------------------------------- public API


def open_scene(
    source: PathLike | Sequence[PathLike],
    *,
    sensor: str | Sensor | None = None,
    bands: Sequence[str] | None = None,
    scale: float | Sequence[float] | None = None,
    offset: float | Sequence[float] | None = None,
    chunks: int = 1024,
    resolution: float | None = None,
    baseline: str | None = None,
    resampling: str = "nearest",
) -> xr.DataArray:
    """Open a scene lazily as float32 reflectance with canonical band codes.

    ``bands`` names the file's bands (native names or canonical codes, file order) when
    the file does not; ``scale``/``offset`` override the catalog's radiometry (a number or
    one per band); ``resolution`` sets the output grid in CRS units (default: the finest
    band); ``baseline`` is the Sentinel-2 processing baseline when the product's metadata
    does not say it; ``resampling`` ('nearest' keeps measured values, or 'bilinear') is
    used only for bands not already on the output grid.
    """
    if resampling not in _RESAMPLING:
        raise SceneError(f"resampling must be one of {', '.join(_RESAMPLING)}, got {resampling!r}")
    raw = _read_source(source, chunks, resolution, resampling)
    if isinstance(source, str | Path) and Path(source).is_dir():
        raw.from_folder = True
    if raw.stored is not None and sensor is None and bands is None and scale is None:
        return _reopen_stored(raw)
    if isinstance(sensor, Sensor):
        sens = sensor
    elif sensor is not None:
        sens = load_sensor(sensor)
    else:
        sens = _detect_sensor(raw)
    chosen, keep = _resolve_bands(raw, sens, bands)
    if raw.from_folder and bands is None:
        # a folder has no band order of its own: use the catalog's (B8A after B08)
        order = sorted(range(len(keep)), key=lambda i: sens.bands.index(chosen[i]))
        chosen, keep = [chosen[i] for i in order], [keep[i] for i in order]
    data = raw.data if keep == list(range(raw.data.sizes["band"])) else raw.data.isel(band=keep)
    nodata = [raw.nodata[i] for i in keep]
    dtype = data.dtype
    nd = tuple(
        tuple(_nodata_values(nd_i, b, dtype)) for nd_i, b in zip(nodata, chosen, strict=True)
    )
    masked = da.map_blocks(_mask_block, data.data, nd, dtype=np.float32)

    n = len(chosen)
    base = _baseline_rule(raw, sens, baseline)
    radiometry: dict[str, Any]
    if scale is not None:
        scales = _per_band(scale, n, "scale")
        offsets = _per_band(offset if offset is not None else 0.0, n, "offset")
        radiometry = {"method": "explicit", "note": "scale/offset given by the caller"}
    elif offset is not None and sens.calibrated:
        scales = [float(b.scale) for b in chosen]  # type: ignore[arg-type]
        offsets = _per_band(offset, n, "offset")
        radiometry = {"method": "catalog scale, explicit offset"}
    elif offset is not None:
        raise SceneError(f"offset= without scale= is not defined for uncalibrated {sens.name}")
    elif sens.calibrated:
        scales = [float(b.scale) for b in chosen]  # type: ignore[arg-type]
        extra = float(base.get("dn_offset", 0.0))
        offsets = [float(b.offset or 0.0) + extra * s for b, s in zip(chosen, scales, strict=True)]
        radiometry = {"method": "catalog", "catalog": Path(sens.path).name}
    else:
        sample, step = _decimated(masked)
        valid = sample[np.isfinite(sample)]
        pct = float(sens.fallback_percentile or 99.5)
        if valid.size == 0:
            raise NoValidDataError(f"{raw.paths[0]} holds no valid pixels (all nodata)")
        ref = float(np.percentile(valid, pct))
        if ref <= 0:
            raise SceneError(
                f"{raw.paths[0]}: the {pct:g}th percentile of valid values is {ref:g}; "
                "cannot derive the fallback scale, pass scale="
            )
        scales, offsets = [1.0 / ref] * n, [0.0] * n
        radiometry = {
            "method": "percentile", "declared_by": Path(sens.path).name,
            "percentile": pct, "value": ref, "common_scale": 1.0 / ref,
            "sample_step": step, "sample_pixels": int(sample[0].size),
            "valid_values": int(valid.size), "clipped": False,
            "why": "sensor is uncalibrated; one common scale keeps normalised-difference "
                   "indices equal to those of the DN",
        }
    sc = np.asarray(scales, np.float32)[:, None, None]
    of = np.asarray(offsets, np.float32)[:, None, None]
    refl = masked * sc + of

    out = xr.DataArray(
        refl.astype(np.float32), dims=("band", "y", "x"),
        coords={"band": [b.code for b in chosen], "y": data.y, "x": data.x},
    )
    transform = raw.data.rio.transform()
    out = out.rio.write_crs(raw.data.rio.crs).rio.write_transform(transform)
    out = out.rio.write_nodata(np.nan, encoded=False)
    provenance = {
        "sources": raw.paths,
        "skipped": raw.skipped,
        "sensor": sens.name,
        "sensor_catalog": Path(sens.path).name,
        "bands": [
            {"code": b.code, "native": b.native, "wavelength_nm": b.wavelength_nm,
             "scale": s, "offset": o, "nodata": list(v)}
            for b, s, o, v in zip(chosen, scales, offsets, nd, strict=True)
        ],
        "radiometry": radiometry,
        "baseline": base,
        "resampling": raw.resampling,
        "band_names_from": "bands= parameter" if bands is not None else raw.label_kind,
    }
    sensed = _sensing_date(raw)
    if sensed is not None:
        provenance["sensing_date"] = sensed[0].isoformat()
    out.attrs.update(
        sensor=sens.name,
        native_bands=[b.native for b in chosen],
        provenance=json.dumps(provenance, sort_keys=True),
    )
    return out


def _reopen_stored(raw: _Raw) -> xr.DataArray:
    """A scene this module wrote (Zarr/netCDF/GeoTIFF): values are reflectance already."""
    stored = raw.stored or {}
    prov = stored["provenance"]
    by_code = {b["code"]: b.get("native") for b in prov.get("bands", [])}
    # the band coordinate wins: the stored scene may be a subset of the provenance's bands
    codes = [str(lb) for lb in raw.labels]
    if not all(c in CANONICAL_BANDS for c in codes):
        stored_native = stored.get("native_bands")
        if isinstance(stored_native, str):  # GeoTIFF tags hold the list as text
            stored_native = re.findall(r"[\w.-]+", stored_native)
        by_native = {n: c for c, n in by_code.items()}
        if isinstance(stored_native, list | tuple) and all(n in by_native for n in stored_native):
            codes = [by_native[n] for n in stored_native]
        else:
            codes = list(by_code)
    if len(codes) != raw.data.sizes["band"]:
        raise SceneError(
            f"{raw.paths[0]}: {raw.data.sizes['band']} stored bands but the stored "
            f"provenance names {len(codes)}; pass sensor= and bands= to open it as raw data"
        )
    masked = da.map_blocks(
        _mask_block, raw.data.data,
        tuple(tuple(v for v in [nd] if v is not None and not math.isnan(v)) for nd in raw.nodata),
        dtype=np.float32,
    )
    out = xr.DataArray(masked, dims=("band", "y", "x"),
                       coords={"band": codes, "y": raw.data.y, "x": raw.data.x})
    out = out.rio.write_crs(raw.data.rio.crs).rio.write_transform(raw.data.rio.transform())
    out = out.rio.write_nodata(np.nan, encoded=False)
    native = [str(by_code.get(c, c)) for c in codes]
    provenance = dict(prov)
    provenance["reopened_from"] = raw.paths
    out.attrs.update(
        sensor=stored.get("sensor") or prov.get("sensor"),
        native_bands=native,
        provenance=json.dumps(provenance, sort_keys=True, default=str),
    )
    return out


def require_bands(scene: xr.DataArray, codes: Sequence[str], purpose: str) -> None:
    """Raise MissingBandError unless every canonical code in ``codes`` is in the scene.

    The message names what is missing and what is there, so a user sees at once why e.g.
    NDBI cannot run on NAIP (no SWIR) instead of getting an index of invented bands.
    """
    have = [str(b) for b in scene["band"].values]
    missing = [c for c in codes if c not in have]
    if not missing:
        return
    word = "band" if len(missing) == 1 else "bands"
    listed = ", ".join(f"{c} ({CANONICAL_BANDS.get(c, c)})" for c in missing)
    sensor = scene.attrs.get("sensor")
    tail = f" (sensor {sensor})" if sensor else ""
    raise MissingBandError(
        f"{purpose} needs {word} {listed} but the scene has {', '.join(have)}{tail}"
    )


def check_valid(window: xr.DataArray | np.ndarray, *, label: str | None = None) -> float:
    """Share of pixels valid in every band; NoValidDataError when there is none.

    Meant for windows/tiles (small), so it computes its input.
    """
    values = np.asarray(window.values if isinstance(window, xr.DataArray) else window)
    if values.ndim == 2:
        values = values[None]
    valid = np.isfinite(values).all(axis=0)
    if values.size == 0 or not valid.any():
        what = label or "window"
        if isinstance(window, xr.DataArray) and "x" in window.dims and window.sizes["x"]:
            what += (f" (x {float(window.x.min()):.1f}..{float(window.x.max()):.1f}, "
                     f"y {float(window.y.min()):.1f}..{float(window.y.max()):.1f})")
        raise NoValidDataError(f"{what} holds no valid pixels: all of it is nodata")
    return float(valid.mean())


def decimated_sample(
    scene: xr.DataArray, max_pixels: int = DECIMATED_PIXELS
) -> tuple[xr.DataArray, int]:
    """Every step-th row and column of the scene (at most ~max_pixels pixels), computed.

    Scene-level statistics (percentile fallback, nodata share, one Otsu threshold for all
    tiles) come from this so that their memory does not grow with the scene; dask reads
    chunk by chunk (one at a time: the synchronous scheduler) and keeps only the strided
    pixels.
    """
    step = max(1, math.ceil(math.sqrt(scene.sizes["y"] * scene.sizes["x"] / max_pixels)))
    sample = scene.isel(y=slice(None, None, step), x=slice(None, None, step))
    return sample.compute(scheduler="synchronous"), step


def describe_scene(scene: xr.DataArray) -> dict[str, Any]:
    """JSON-friendly summary for ``spex info``; nodata share from a decimated read."""
    sample_da, step = decimated_sample(scene)
    sample = np.asarray(sample_da.values)
    nodata_share = float((~np.isfinite(sample).all(axis=0)).mean()) if sample.size else 1.0
    res = scene.rio.resolution()
    crs = scene.rio.crs
    try:
        prov = json.loads(scene.attrs.get("provenance", "{}"))
    except json.JSONDecodeError:
        prov = {}
    return {
        "sensor": scene.attrs.get("sensor"),
        "bands": [str(b) for b in scene["band"].values],
        "native_bands": list(scene.attrs.get("native_bands", [])),
        "width": int(scene.sizes["x"]),
        "height": int(scene.sizes["y"]),
        "crs": crs.to_string() if crs is not None else None,
        "resolution": [abs(float(res[0])), abs(float(res[1]))],
        "bounds": [float(v) for v in scene.rio.bounds()],
        "dtype": str(scene.dtype),
        "chunks": [int(c[0]) for c in scene.chunks] if scene.chunks else None,
        "nodata_share": round(nodata_share, 6),
        "nodata_sample_step": step,
        "radiometry": (prov.get("radiometry") or {}).get("method"),
        "sources": prov.get("sources", []),
    }


__all__ = [
    "DECIMATED_PIXELS",
    "check_valid",
    "decimated_sample",
    "describe_scene",
    "open_scene",
    "require_bands",
]
