"""Open any scene lazily as one reflectance ``xarray.DataArray``.

Every later stage (indices, APG, tiling, models) sees the same thing whatever the source:
dims (band, y, x), band coordinate = canonical codes (B, G, R, N, S1, ...), float32
reflectance, NaN where the source is nodata, CRS and transform through rioxarray, and a
dask array underneath so that nothing reads a whole scene into memory. Sensor facts come
only from the catalogs (:mod:`pipeline.sensors`); this package decides how a file's bands
map onto a catalog entry and records every radiometric choice in the provenance.

This module holds the recipe, :func:`open_scene`; the steps live in one module each:
:mod:`.sources` reads a source in its native dtype (through :mod:`.reader`, whose block
reads turn any driver error into an exception), :mod:`.metadata` gathers what the
product's metadata states, :mod:`.bands` names its bands and detects the sensor,
:mod:`.radiometry` picks the encoding, scales DN to reflectance and checks that the
result is plausible, and :mod:`.checks` holds the helpers later stages use on an opened
scene. Supported conventions are listed in the README ("Your own scenes").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from pipeline.bands import band_codes
from pipeline.errors import SceneError
from pipeline.scene import windows
from pipeline.scene.bands import detect_sensor, resolve_bands
from pipeline.scene.checks import (
    DECIMATED_PIXELS,
    check_valid,
    decimated_sample,
    describe_scene,
    require_bands,
)
from pipeline.scene.radiometry import (
    check_plausible,
    choose_encoding,
    choose_radiometry,
    mask_block,
    nodata_values,
    per_band,
    product_level,
)
from pipeline.scene.sources import _RESAMPLING, PathLike, _Raw, _read_source, check_path
from pipeline.sensors import Sensor, load_sensor

#: The keyword arguments of :func:`open_scene` that describe the input (what the
#: ``open:`` mapping of a data-set or region catalog and the CLI flags may set).
OPEN_OPTIONS = (
    "sensor",
    "bands",
    "encoding",
    "level",
    "scale",
    "offset",
    "nodata",
    "baseline",
    "resolution",
)


def open_scene(
    source: PathLike | Sequence[PathLike],
    *,
    sensor: str | Sensor | None = None,
    bands: Sequence[str] | None = None,
    encoding: str | None = None,
    level: str | None = None,
    scale: float | Sequence[float] | None = None,
    offset: float | Sequence[float] | None = None,
    nodata: float | None = None,
    baseline: str | None = None,
    chunks: int = 1024,
    resolution: float | None = None,
    resampling: str = "nearest",
) -> xr.DataArray:
    """Open a scene lazily as float32 reflectance with canonical band codes.

    ``sensor`` names the sensor catalog (detected from band names, platform metadata and
    product file names when unambiguous); ``bands`` names the file's bands (native names,
    aliases or canonical codes, in file order) when the file does not; ``encoding`` and
    ``level`` say how the product stores reflectance (else chosen from metadata, level,
    sensor and data type); ``scale``/``offset`` override everything (a number or one per
    band); ``nodata`` replaces the encoding's nodata value (the file's own is always
    honoured); ``baseline`` is the Sentinel-2 processing baseline when the metadata does
    not say it; ``resolution`` sets the output grid in CRS units (default: the finest
    band); ``resampling`` ('nearest' keeps measured values, or 'bilinear') is used only
    for bands not already on the output grid. Every choice is checked against the file
    (band names and count, data type, plausible reflectance) and recorded in the
    ``provenance`` attribute.
    """
    if resampling not in _RESAMPLING:
        raise SceneError(f"resampling must be one of {', '.join(_RESAMPLING)}, got {resampling!r}")
    if isinstance(sensor, str):
        sensor = load_sensor(sensor)  # an unknown name fails before any read
    raw = _read_source(source, chunks, resolution, resampling)
    if isinstance(source, str | Path) and Path(source).is_dir():
        raw.from_folder = True
    explicit = (sensor, bands, encoding, level, scale, offset, nodata)
    if raw.stored is not None and all(v is None for v in explicit):
        return _reopen_stored(raw)
    if sensor is None:
        sens, sensor_from = detect_sensor(raw)
    else:
        sens, sensor_from = sensor, "--sensor"
    chosen, keep = resolve_bands(raw, sens, bands)
    if raw.from_folder and bands is None:
        # a folder has no band order of its own: use the catalog's (B8A after B08)
        order = sorted(range(len(keep)), key=lambda i: sens.bands.index(chosen[i]))
        chosen, keep = [chosen[i] for i in order], [keep[i] for i in order]
    data = raw.data if keep == list(range(raw.data.sizes["band"])) else raw.data.isel(band=keep)
    dtype = np.dtype(data.dtype)
    lvl = product_level(raw, sens, level)
    enc, enc_from = choose_encoding(raw, sens, dtype.name, lvl["level"], encoding)
    enc_nodata = float(nodata) if nodata is not None else enc.nodata
    nd = tuple(tuple(nodata_values(raw.nodata[i], enc_nodata, dtype)) for i in keep)
    masked = da.map_blocks(mask_block, data.data, nd, dtype=np.float32)
    recipe = _recipe(raw, keep, nd)
    if recipe is not None:
        windows.register(masked, recipe)
    rad = choose_radiometry(
        raw, keep, chosen, masked, enc, scale=scale, offset=offset, baseline=baseline
    )
    sc = np.asarray(rad.scales, np.float32)[:, None, None]
    of = np.asarray(rad.offsets, np.float32)[:, None, None]
    refl = (masked * sc + of).astype(np.float32)
    if recipe is not None:
        windows.register(refl, recipe.scaled(sc, of))
    codes = [b.code for b in chosen]
    check = (
        check_plausible(refl, codes, masked, rad, raw.where, enc, sens.name, dtype.name)
        if rad.checked
        else {"checked": False, "why": f"{rad.info['method']} radiometry"}
    )

    out = xr.DataArray(
        refl,
        dims=("band", "y", "x"),
        coords={"band": codes, "y": data.y, "x": data.x},
    )
    out = out.rio.write_crs(raw.data.rio.crs).rio.write_transform(raw.data.rio.transform())
    out = out.rio.write_nodata(np.nan, encoded=False)
    provenance = {
        "sources": raw.paths,
        "skipped": raw.skipped,
        "sensor": sens.name,
        "sensor_catalog": Path(sens.path).name,
        "sensor_from": sensor_from,
        "encoding": enc.name,
        "encoding_from": enc_from,
        "level": lvl,
        "dtype": dtype.name,
        "bands": [
            {
                "code": b.code,
                "native": b.native,
                "wavelength_nm": b.wavelength_nm,
                "scale": s,
                "offset": o,
                "nodata": list(v),
            }
            for b, s, o, v in zip(chosen, rad.scales, rad.offsets, nd, strict=True)
        ],
        "radiometry": rad.info,
        "baseline": rad.baseline,
        "plausibility": check,
        "metadata": raw.facts.describe(),
        "resampling": raw.resampling,
        "band_names_from": "--bands" if bands is not None else raw.label_kind,
    }
    if raw.facts.sensed is not None:
        provenance["sensing_date"] = raw.facts.sensed[0].isoformat()
    out.attrs.update(
        sensor=sens.name,
        encoding=enc.name,
        native_bands=[b.native for b in chosen],
        provenance=json.dumps(provenance, sort_keys=True, default=str),
    )
    return out


def _recipe(
    raw: _Raw, keep: list[int], nodata: tuple[tuple[float, ...], ...]
) -> windows.PixelRecipe | None:
    """What :mod:`.windows` needs to read this scene directly, when it can."""
    if not raw.block_sources:
        return None
    every = list(range(raw.data.sizes["band"]))
    return windows.PixelRecipe(
        sources=raw.block_sources,
        height=int(raw.data.sizes["y"]),
        width=int(raw.data.sizes["x"]),
        block=raw.block_shape,
        nodata=nodata,
        mask=mask_block,
        keep=None if keep == every else tuple(keep),
    )


def _reopen_stored(raw: _Raw) -> xr.DataArray:
    """A scene this module wrote (Zarr/netCDF/GeoTIFF): values are reflectance already."""
    stored = raw.stored or {}
    prov = stored["provenance"]
    by_code = {b["code"]: b.get("native") for b in prov.get("bands", [])}
    # the band coordinate wins: the stored scene may be a subset of the provenance's bands
    codes = [str(lb) for lb in raw.labels]
    if not all(c in band_codes() for c in codes):
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
            f"provenance names {len(codes)}; pass --sensor and --bands to open it as raw data"
        )
    masked = da.map_blocks(
        mask_block,
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
    "OPEN_OPTIONS",
    "check_path",
    "check_valid",
    "decimated_sample",
    "describe_scene",
    "open_scene",
    "per_band",
    "require_bands",
]
