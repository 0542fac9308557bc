"""Checks and summaries on an opened scene: required bands, valid share of a window,
decimated samples for scene-level statistics, and the ``spex info`` description.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from pipeline.bands import band_name
from pipeline.errors import MissingBandError, NoValidDataError, SceneError, SceneReadError
from pipeline.samples import DECIMATED_PIXELS, sample_step
from pipeline.scene import windows


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
    listed = ", ".join(f"{c} ({band_name(c)})" for c in missing)
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
            what += (
                f" (x {float(window.x.min()):.1f}..{float(window.x.max()):.1f}, "
                f"y {float(window.y.min()):.1f}..{float(window.y.max()):.1f})"
            )
        raise NoValidDataError(f"{what} holds no valid pixels: all of it is nodata")
    return float(valid.mean())


def decimated_sample(
    scene: xr.DataArray, max_pixels: int = DECIMATED_PIXELS
) -> tuple[xr.DataArray, int]:
    """Every step-th row and column of the scene (at most ~max_pixels pixels), computed.

    Scene-level statistics (percentile fallback, nodata share, one Otsu threshold for all
    tiles) come from this so that their memory does not grow with the scene; dask reads
    chunk by chunk (one at a time: the synchronous scheduler) and keeps only the strided
    pixels. Every chunk is read, so a corrupt one fails here (SceneReadError). Scenes
    read straight from raster files take :func:`pipeline.scene.windows.strided_sample`
    (same values, each block decoded once, the sample shared by later callers).
    """
    step = sample_step(scene.sizes["y"], scene.sizes["x"], max_pixels)
    sample = scene.isel(y=slice(None, None, step), x=slice(None, None, step))
    try:
        if windows.recipe_of(scene) is not None:
            return sample.copy(data=windows.strided_sample(scene, step)), step
        return sample.compute(scheduler="synchronous"), step
    except SceneError:
        raise
    except OSError as exc:  # netCDF/Zarr backends report corrupt files this way
        raise SceneReadError(f"cannot read the scene: {exc}") from exc


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
        "sensor_from": prov.get("sensor_from"),
        "encoding": scene.attrs.get("encoding") or prov.get("encoding"),
        "encoding_from": prov.get("encoding_from"),
        "level": (prov.get("level") or {}).get("level"),
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
        "scales": sorted({b.get("scale") for b in prov.get("bands", [])}, key=str),
        "offsets": sorted({b.get("offset") for b in prov.get("bands", [])}, key=str),
        "plausibility": prov.get("plausibility"),
        "skipped": prov.get("skipped", []),
        "sources": prov.get("sources", []),
    }
