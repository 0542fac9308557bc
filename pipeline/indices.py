"""Normalised-difference spectral indices (NDVI, NDWI, MNDWI, NDBI, NDMI).

Every index here is ``(a - b) / (a + b)`` with ``a`` and ``b`` canonical band codes read
from ``catalogs/indices.yaml``, so the band choice lives in one data file and not in
Python. The arithmetic works on numpy arrays, dask arrays and xarray DataArrays alike:
dask-backed input stays lazy (nothing is computed until the caller asks), because whole
scenes never fit in memory.

Numerical contract, because downstream Otsu thresholds and masks depend on it:

- NaN in either band gives NaN out (nodata propagates, it never becomes "not water");
- ``a + b == 0`` gives NaN (the ratio is undefined there, not 0);
- no ``RuntimeWarning`` leaks out (the division is masked rather than silenced after
  the fact), so callers may run under ``warnings.simplefilter("error")``;
- integer input is promoted to floating point before subtracting (uint8 DN would wrap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from pipeline.bands import band_codes, band_short
from pipeline.catalog_io import check_keys, read_catalog_yaml
from pipeline.errors import CatalogError, MissingBandError

__all__ = [
    "IndexDef",
    "compute_index",
    "index_from_stack",
    "index_names",
    "load_index",
    "load_index_catalog",
    "missing_bands",
    "normalized_difference",
    "require_bands",
]


@dataclass(frozen=True)
class IndexDef:
    """One catalog entry: ``name = (a - b) / (a + b)``."""

    name: str
    a: str
    b: str
    reference: str = ""

    @property
    def bands(self) -> tuple[str, str]:
        return (self.a, self.b)

    @property
    def formula(self) -> str:
        return f"({self.a} - {self.b}) / ({self.a} + {self.b})"


@cache
def load_index_catalog() -> dict[str, IndexDef]:
    """Read ``catalogs/indices.yaml`` once; malformed entries raise :class:`CatalogError`."""
    resource = files("catalogs").joinpath("indices.yaml")
    raw = read_catalog_yaml(resource, "index")
    catalog: dict[str, IndexDef] = {}
    for name, entry in raw.items():
        where = f"index {name!r} in {resource}"
        check_keys(entry, where, allowed={"a", "b", "reference"}, needed=("a", "b"))
        a, b = str(entry["a"]), str(entry["b"])
        if a == b:
            raise CatalogError(f"{where} uses band {a!r} twice")
        unknown = [c for c in (a, b) if c not in band_codes()]
        if unknown:
            raise CatalogError(
                f"{where}: {', '.join(unknown)} is not a canonical band code (catalogs/bands.yaml)"
            )
        catalog[str(name)] = IndexDef(str(name), a, b, str(entry.get("reference", "")))
    return catalog


def index_names() -> list[str]:
    """Names of the indices the catalog defines, in catalog order."""
    return list(load_index_catalog())


def load_index(name: str) -> IndexDef:
    """The catalog entry for ``name`` (case-insensitive); unknown names list valid ones."""
    catalog = load_index_catalog()
    key = name.upper()
    if key not in catalog:
        raise CatalogError(f"unknown spectral index {name!r}; known: {', '.join(catalog)}")
    return catalog[key]


def missing_bands(name: str, available: Sequence[str]) -> list[str]:
    """Bands that index ``name`` needs and ``available`` lacks (empty when computable)."""
    have = set(available)
    return [code for code in load_index(name).bands if code not in have]


def require_bands(name: str, available: Sequence[str], *, sensor: str | None = None) -> IndexDef:
    """Return the index definition, or refuse with a message naming the absent band(s).

    Refusing (rather than substituting a similar band) matters: an NDBI computed without
    SWIR does not measure built-up surfaces, and a silent swap would look plausible.
    """
    definition = load_index(name)
    absent = missing_bands(definition.name, available)
    if absent:
        who = f"sensor {sensor}" if sensor else "this scene"
        needs = ", ".join(f"{c} ({band_short(c)})" for c in absent)
        raise MissingBandError(
            f"{definition.name} needs {needs}, which {who} does not have "
            f"(available bands: {', '.join(available) or 'none'})"
        )
    return definition


def _nd_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b) on numpy blocks; NaN where a + b == 0, no warnings raised."""
    a = np.asarray(a)
    b = np.asarray(b)
    dtype = np.result_type(a.dtype, b.dtype, np.float32)
    a = a.astype(dtype, copy=False)
    b = b.astype(dtype, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        num = a - b
        den = a + b
    out = np.full(np.broadcast_shapes(a.shape, b.shape), np.nan, dtype=dtype)
    # `where=` skips the division entirely where den == 0, so 0/0 never happens; NaN in
    # den compares unequal to 0 and NaN / x gives NaN without raising "invalid".
    with np.errstate(invalid="ignore", over="ignore"):
        np.divide(num, den, out=out, where=den != 0)
    return out


def _result_dtype(a: Any, b: Any) -> np.dtype:
    return np.result_type(np.dtype(a.dtype), np.dtype(b.dtype), np.float32)


def normalized_difference(a: Any, b: Any) -> Any:
    """``(a - b) / (a + b)`` for numpy, dask or xarray inputs, keeping the input's kind.

    xarray in -> xarray out (coordinates kept, lazy if dask-backed); dask in -> dask out
    (lazy, one task per block); anything else is treated as a numpy array.
    """
    if isinstance(a, xr.DataArray) or isinstance(b, xr.DataArray):
        return xr.apply_ufunc(
            _nd_numpy,
            a,
            b,
            dask="parallelized",
            output_dtypes=[_result_dtype(a, b)],
            keep_attrs=False,
        )
    if isinstance(a, da.Array) or isinstance(b, da.Array):
        a_d, b_d = da.asarray(a), da.asarray(b)
        dtype = _result_dtype(a_d, b_d)
        a_d, b_d = da.broadcast_arrays(a_d, b_d)  # same shape and chunks, still lazy
        meta = np.empty((0,) * a_d.ndim, dtype=dtype)  # so dask skips its probe call
        return da.map_blocks(_nd_numpy, a_d, b_d, dtype=dtype, meta=meta)
    return _nd_numpy(a, b)


def _sensor_of(scene: xr.DataArray, sensor: str | None) -> str | None:
    if sensor:
        return sensor
    value = scene.attrs.get("sensor")
    return str(value) if value else None


def compute_index(
    name: str, scene: xr.DataArray, *, band_dim: str = "band", sensor: str | None = None
) -> xr.DataArray:
    """Index ``name`` of a scene DataArray whose ``band_dim`` coordinate holds band codes.

    Returns a DataArray without the band dimension, spatial coordinates (and the
    rioxarray ``spatial_ref``) kept, named after the index. Lazy input stays lazy.
    Raises :class:`MissingBandError` when the scene lacks a band the index needs.
    """
    if band_dim not in scene.dims:
        raise MissingBandError(f"scene has no {band_dim!r} dimension (dims: {scene.dims})")
    available = [str(v) for v in scene[band_dim].values]
    definition = require_bands(name, available, sensor=_sensor_of(scene, sensor))
    a = scene.sel({band_dim: definition.a}, drop=True)
    b = scene.sel({band_dim: definition.b}, drop=True)
    out = normalized_difference(a, b)
    out.name = definition.name
    out.attrs = {"long_name": definition.name, "formula": definition.formula}
    if definition.reference:
        out.attrs["reference"] = definition.reference
    return out


def index_from_stack(
    name: str,
    pixels: Any,
    bands: Sequence[str] | Mapping[str, int],
    *,
    sensor: str | None = None,
) -> Any:
    """Index ``name`` from a band-first stack (numpy or dask, shape ``(band, ...)``).

    ``bands`` names the stack's bands in order (or maps code -> position). This is the
    entry point for tiles handed over as plain arrays, e.g. by the APG.
    """
    position = dict(bands) if isinstance(bands, Mapping) else {c: i for i, c in enumerate(bands)}
    definition = require_bands(name, list(position), sensor=sensor)
    if pixels.ndim < 1 or max(position.values()) >= pixels.shape[0]:
        raise MissingBandError(
            f"stack has {pixels.shape[0] if pixels.ndim else 0} bands but band names "
            f"{list(position)} were given"
        )
    return normalized_difference(pixels[position[definition.a]], pixels[position[definition.b]])
