"""Open any scene lazily as one reflectance ``xarray.DataArray``.

Every later stage (indices, APG, tiling, models) sees the same thing whatever the source:
dims (band, y, x), band coordinate = canonical codes (B, G, R, N, S1, ...), float32
reflectance, NaN where the source is nodata, CRS and transform through rioxarray, and a
dask array underneath so that nothing reads a whole scene into memory. Sensor facts come
only from the catalogs (:mod:`pipeline.sensors`); this package decides how a file's bands
map onto a catalog entry and records every radiometric choice in the provenance.

This module holds the recipe, :func:`open_scene`; the steps live in one module each:
:mod:`.sources` reads a source in its native dtype, :mod:`.bands` names its bands and
detects the sensor, :mod:`.radiometry` masks nodata and scales DN to reflectance, and
:mod:`.checks` holds the helpers later stages use on an opened scene.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from pipeline.errors import NoValidDataError, SceneError
from pipeline.scene.bands import _detect_sensor, _resolve_bands
from pipeline.scene.checks import (
    DECIMATED_PIXELS,
    check_valid,
    decimated_sample,
    describe_scene,
    require_bands,
)
from pipeline.scene.radiometry import (
    _baseline_rule,
    _decimated,
    _mask_block,
    _nodata_values,
    _per_band,
    _sensing_date,
)
from pipeline.scene.sources import _RESAMPLING, PathLike, _Raw, _read_source
from pipeline.sensors import CANONICAL_BANDS, Sensor, load_sensor


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
            "method": "percentile",
            "declared_by": Path(sens.path).name,
            "percentile": pct,
            "value": ref,
            "common_scale": 1.0 / ref,
            "sample_step": step,
            "sample_pixels": int(sample[0].size),
            "valid_values": int(valid.size),
            "clipped": False,
            "why": "sensor is uncalibrated; one common scale keeps normalised-difference "
            "indices equal to those of the DN",
        }
    sc = np.asarray(scales, np.float32)[:, None, None]
    of = np.asarray(offsets, np.float32)[:, None, None]
    refl = masked * sc + of

    out = xr.DataArray(
        refl.astype(np.float32),
        dims=("band", "y", "x"),
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
            {
                "code": b.code,
                "native": b.native,
                "wavelength_nm": b.wavelength_nm,
                "scale": s,
                "offset": o,
                "nodata": list(v),
            }
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
        _mask_block,
        raw.data.data,
        tuple(tuple(v for v in [nd] if v is not None and not math.isnan(v)) for nd in raw.nodata),
        dtype=np.float32,
    )
    out = xr.DataArray(
        masked, dims=("band", "y", "x"), coords={"band": codes, "y": raw.data.y, "x": raw.data.x}
    )
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


__all__ = [
    "DECIMATED_PIXELS",
    "check_valid",
    "decimated_sample",
    "describe_scene",
    "open_scene",
    "require_bands",
]
