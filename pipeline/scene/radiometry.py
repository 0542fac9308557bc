"""Radiometry: which encoding a product is in, DN -> reflectance, nodata masking, and the
check that the result is plausible reflectance.

Order of authority, each recorded in the provenance: ``--scale``/``--offset`` given by the
user; scale/offset stated by the file's metadata (STAC ``raster:bands``, GDAL band
scale/offset, CF ``scale_factor``); the encoding (``--encoding``, or the one that the
product level, sensor and data type select in ``catalogs/encodings``) with its
processing-baseline rule (Sentinel-2 -1000 DN from 04.00) or MTL calibration (Landsat
Level-1); the declared per-scene fallback where no calibration exists.

Uncalibrated products use ONE common scale for all bands, 1 / (99.5th percentile of the
valid values of all bands, from a decimated read), offset 0, so that every normalised-
difference index equals the index of the DN. Values above the percentile are NOT clipped.

Plausibility: a wrong scale is the error users meet most (reflectance x 10000 stored as
float and read as 0..1; x 1000 read as x 10000), and a model fed values 10^4 off gives
confident nonsense, so after scaling the 99th percentile of the visible and NIR bands must
lie in :data:`PLAUSIBLE_P99`, and the 1st percentile above :data:`PLAUSIBLE_P1_MIN`.
Otherwise the scene is refused with the observed range and the scale that would fit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from pipeline.encodings import Encoding, all_encodings, load_encoding, select_encoding
from pipeline.errors import CatalogError, NoValidDataError, SceneError
from pipeline.samples import DECIMATED_PIXELS, sample_step
from pipeline.scene import windows
from pipeline.scene.sources import _Raw
from pipeline.sensors import Sensor, SensorBand

#: Range of the 99th percentile of visible + NIR reflectance over a scene's valid pixels.
#: Measured on every calibrated real scene in ../shared/data after correct scaling: 0.21
#: (s2-xrspatial) to 0.80 (hazy Landsat-5 1986); snow and cloud reach ~1.2. A scale off by
#: 10x lands outside (the Aberystwyth x 1000 scene read as x 10000: 0.064). A scene that
#: is nearly all open water can fall below 0.1: --scale states its scale explicitly.
PLAUSIBLE_P99 = (0.1, 2.0)
#: Reflectance below this at the 1st percentile means a wrong (negative) offset.
PLAUSIBLE_P1_MIN = -0.1
#: Bands whose values the check looks at (canonical codes), when present.
CHECK_BANDS = ("B", "G", "R", "N")
#: The check reads this many windows of at most CHECK_WINDOW px, spread over the scene.
CHECK_GRID, CHECK_WINDOW = 4, 256


def parse_baseline(text: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"N?(\d{1,2})[.]?(\d{2})", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


# ------------------------------------------------------------------ level and encoding


def product_level(raw: _Raw, sensor: Sensor, level: str | None) -> dict[str, Any]:
    """The product level: ``--level``, else what metadata or names state, else unknown."""
    if level is not None:
        canonical = sensor.canonical_level(level)
        if canonical is None:
            known = ", ".join(sensor.level_names) or "none (the sensor declares no levels)"
            raise SceneError(
                f"--level {level!r} is not a product level of sensor {sensor.name}; "
                f"its levels: {known}"
            )
        return {"level": canonical, "source": "--level"}
    stated = [value for value, _ in raw.facts.levels]
    labels = [str(lb) for lb in raw.labels if lb]
    found = sensor.level_of(stated, raw.paths, labels)
    if found is None:
        return {"level": None, "source": "not stated by the metadata"}
    return {"level": found[0], "source": found[1]}


def choose_encoding(
    raw: _Raw, sensor: Sensor, dtype: str, level: str | None, encoding: str | None
) -> tuple[Encoding, str]:
    """The encoding (explicit, or the one catalog data select) and why."""
    if encoding is not None:
        enc = load_encoding(encoding)
        if enc.sensors is not None and sensor.name not in enc.sensors:
            raise SceneError(
                f"--encoding {enc.name} is for sensor(s) {', '.join(enc.sensors)}, "
                f"not {sensor.name}; see `spex encodings`"
            )
        if dtype not in enc.dtypes:
            raise SceneError(
                f"--encoding {enc.name} stores {', '.join(enc.dtypes)}, but {raw.where} holds "
                f"{dtype}; choose another --encoding (see `spex encodings`)"
            )
        if level is not None and enc.levels and level not in enc.levels:
            raise SceneError(
                f"--encoding {enc.name} serves level(s) {', '.join(enc.levels)}, not {level}"
            )
        return enc, "--encoding"
    try:
        enc = select_encoding(sensor.name, dtype, level)
    except CatalogError:
        pass
    else:
        return enc, f"default for {sensor.name} {dtype}" + (f" {level}" if level else "")
    fitting = [e for e in all_encodings() if e.applies_to(sensor.name, dtype, level)]
    defaults = [e for e in fitting if e.is_default(sensor.name, dtype, level)]
    names = ", ".join(e.name for e in (defaults or fitting))
    hint = ""
    if level is None and sensor.levels:
        hint = f" or state the product level with --level ({', '.join(sensor.level_names)})"
    raise SceneError(
        f"cannot tell how {raw.where} encodes reflectance ({sensor.name}, {dtype}, level "
        f"{level or 'not stated'}): it may be {names}; pass --encoding{hint}"
    )


# ------------------------------------------------------------------ baseline rule


def baseline_rule(raw: _Raw, encoding: Encoding, baseline: str | None) -> dict[str, Any]:
    """Whether the encoding's baseline DN offset applies, and why (for the provenance)."""
    rule = encoding.baseline_offset
    if rule is None:
        return {
            "applies": False,
            "reason": f"encoding {encoding.name} has no baseline rule",
            "given": baseline,
        }
    threshold = parse_baseline(rule.from_baseline)
    if threshold is None:
        raise CatalogError(
            f"{encoding.path}: baseline_offset.from_baseline {rule.from_baseline!r} is not "
            "like '04.00'"
        )
    value: str | None = None
    source: str | None = None
    if baseline is not None:
        value, source = str(baseline), "--baseline"
    elif raw.facts.baseline:
        value, source = raw.facts.baseline
    if value is not None:
        parsed = parse_baseline(value)
        if parsed is None:
            raise SceneError(
                f"processing baseline {value!r} ({source}) is not like '04.00'; "
                "pass --baseline with the product's baseline"
            )
        applies = parsed >= threshold
        return {
            "applies": applies,
            "baseline": f"{parsed[0]:02d}.{parsed[1]:02d}",
            "source": source,
            "dn_offset": rule.dn_offset if applies else 0.0,
        }
    sensed = raw.facts.sensed
    if sensed is not None and rule.since_sensing_date:
        applies = sensed[0] >= date.fromisoformat(rule.since_sensing_date)
        return {
            "applies": applies,
            "baseline": None,
            "source": f"sensing date {sensed[0].isoformat()} from {sensed[1]} "
            f"({'on/after' if applies else 'before'} {rule.since_sensing_date}; "
            "assumes the product was not reprocessed)",
            "dn_offset": rule.dn_offset if applies else 0.0,
        }
    raise SceneError(
        f"cannot tell the processing baseline of {raw.where} (no PROCESSING_BASELINE tag, "
        f"SAFE name, MTD xml, STAC property or sensing date); pass --baseline (e.g. "
        f"--baseline 04.00 applies the {rule.dn_offset:g} DN offset of {encoding.name}, "
        "--baseline 02.14 does not), or --encoding reflectance-x10000 when the provider "
        "already removed the offset (Earth Engine *_HARMONIZED exports)"
    )


# ------------------------------------------------------------------ scale and offset


@dataclass
class Radiometry:
    """Per-band scale/offset to reflectance and how they were chosen."""

    scales: list[float]
    offsets: list[float]
    info: dict[str, Any]
    baseline: dict[str, Any] = field(default_factory=dict)
    checked: bool = True  # whether the plausibility check applies


def per_band(value: float | Sequence[float], n: int, what: str) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise SceneError(f"--{what} has {len(values)} values for {n} bands; give 1 or {n}")
    return values


def _mtl_coefficients(
    raw: _Raw, chosen: list[SensorBand]
) -> tuple[list[float], list[float], dict[str, Any]] | None:
    """Landsat Level-1 TOA reflectance from the MTL: (M*DN + A) / sin(sun elevation)."""
    mtl = raw.facts.mtl
    if not mtl or "SUN_ELEVATION" not in mtl:
        return None
    sun = float(mtl["SUN_ELEVATION"])
    sin = math.sin(math.radians(sun))
    scales, offsets = [], []
    for b in chosen:
        number = re.sub(r"\D", "", b.native)
        mult = mtl.get(f"REFLECTANCE_MULT_BAND_{number}")
        add = mtl.get(f"REFLECTANCE_ADD_BAND_{number}")
        if mult is None or add is None:
            return None
        scales.append(float(mult) / sin)
        offsets.append(float(add) / sin)
    info = {
        "method": "mtl",
        "mtl": raw.facts.mtl_path,
        "sun_elevation": sun,
        "formula": "(REFLECTANCE_MULT_BAND_n * DN + REFLECTANCE_ADD_BAND_n) / sin(SUN_ELEVATION)",
    }
    return scales, offsets, info


def percentile_fallback(
    masked: da.Array, percentile: float, where: str, declared_by: str
) -> tuple[list[float], list[float], dict[str, Any]]:
    """One common scale 1 / (percentile of the valid values), from a decimated read."""
    sample, step = _decimated(masked)
    valid = sample[np.isfinite(sample)]
    if valid.size == 0:
        raise NoValidDataError(f"{where} holds no valid pixels (all nodata)")
    ref = float(np.percentile(valid, percentile))
    if ref <= 0:
        raise SceneError(
            f"{where}: the {percentile:g}th percentile of valid values is {ref:g}; "
            "cannot derive the fallback scale, pass --scale"
        )
    n = masked.shape[0]
    info = {
        "method": "percentile",
        "declared_by": declared_by,
        "percentile": percentile,
        "value": ref,
        "common_scale": 1.0 / ref,
        "sample_step": step,
        "sample_pixels": int(sample[0].size),
        "valid_values": int(valid.size),
        "clipped": False,
        "why": "no calibration is available; one common scale keeps normalised-difference "
        "indices equal to those of the DN",
    }
    return [1.0 / ref] * n, [0.0] * n, info


def choose_radiometry(
    raw: _Raw,
    keep: list[int],
    chosen: list[SensorBand],
    masked: da.Array,
    encoding: Encoding,
    *,
    scale: float | Sequence[float] | None,
    offset: float | Sequence[float] | None,
    baseline: str | None,
) -> Radiometry:
    """Scales and offsets for the kept bands, by the order of authority above."""
    n = len(chosen)
    base = baseline_rule(raw, encoding, baseline) if encoding.calibration == "scale" else {}
    if scale is not None:
        offs = per_band(offset if offset is not None else 0.0, n, "offset")
        return Radiometry(
            per_band(scale, n, "scale"),
            offs,
            {"method": "explicit", "note": "--scale/--offset given by the user"},
            base,
            checked=False,
        )
    meta = [s for s in (raw.meta_scale[i] for i in keep) if s is not None]
    if offset is None and len(meta) == len(keep):
        offs = [raw.meta_offset[i] or 0.0 for i in keep]
        stated = {"method": "metadata", "source": raw.meta_source}
        why = {"applies": False, "reason": f"scale/offset stated by {raw.meta_source}"}
        return Radiometry([float(s) for s in meta], offs, stated, why)
    if offset is not None and encoding.calibration != "scale":
        raise SceneError(
            f"--offset without --scale is not defined for encoding {encoding.name} "
            f"({encoding.calibration} calibration); pass --scale too"
        )
    if encoding.calibration == "scale":
        scales = [float(encoding.scale or 1.0)] * n
        if offset is not None:
            return Radiometry(
                scales,
                per_band(offset, n, "offset"),
                {"method": "encoding scale, explicit offset", "encoding": encoding.name},
                base,
            )
        extra = float(base.get("dn_offset", 0.0))
        offsets = [float(encoding.offset or 0.0) + extra * s for s in scales]
        return Radiometry(scales, offsets, {"method": "encoding", "encoding": encoding.name}, base)
    if encoding.calibration == "mtl":
        found = _mtl_coefficients(raw, chosen)
        if found is not None:
            return Radiometry(found[0], found[1], found[2], base)
    pct = float(encoding.fallback_percentile or 99.5)
    scales, offsets, info = percentile_fallback(masked, pct, raw.where, Path(encoding.path).name)
    if encoding.calibration == "mtl":
        info["why"] = (
            "no MTL file with REFLECTANCE_MULT/ADD coefficients next to the data; " + info["why"]
        )
    return Radiometry(scales, offsets, info, base, checked=False)


# ------------------------------------------------------------------ plausibility


def _check_sample(data: da.Array, idx: list[int], rows: int, cols: int) -> np.ndarray:
    """Values of bands ``idx`` in CHECK_GRID x CHECK_GRID windows spread over the scene
    (deterministic), as (len(idx), n): read directly where :mod:`.windows` can."""
    spots = []
    for i in range(CHECK_GRID):
        for j in range(CHECK_GRID):
            h, w = min(CHECK_WINDOW, rows), min(CHECK_WINDOW, cols)
            r0 = (rows - h) * i // max(1, CHECK_GRID - 1)
            c0 = (cols - w) * j // max(1, CHECK_GRID - 1)
            spots.append((slice(r0, r0 + h), slice(c0, c0 + w)))
    if windows.recipe_of(data) is not None:
        parts = [windows.read_window(data, r, c)[idx].reshape(len(idx), -1) for r, c in spots]
        return np.concatenate(parts, axis=1)
    sub = data[idx]
    lazy = [sub[:, r, c].reshape(len(idx), -1) for r, c in spots]
    # identical windows on small scenes are read once each, which is cheap
    return np.asarray(da.concatenate(lazy, axis=1).compute(scheduler="synchronous"))


def check_plausible(
    refl: da.Array,
    codes: list[str],
    masked: da.Array,
    radiometry: Radiometry,
    where: str,
    encoding: Encoding,
    sensor: str,
    masked_dtype: str,
) -> dict[str, Any]:
    """Refuse reflectance that cannot be reflectance; the observed figures otherwise."""
    idx = [i for i, c in enumerate(codes) if c in CHECK_BANDS] or list(range(len(codes)))
    rows, cols = refl.shape[1], refl.shape[2]
    values = _check_sample(refl, idx, rows, cols)
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        return {"checked": False, "why": "no valid pixel in the sampled windows"}
    p1, p99 = (float(v) for v in np.percentile(valid, [1, 99]))
    result = {
        "checked": True,
        "bands": [codes[i] for i in idx],
        "p1": round(p1, 5),
        "p99": round(p99, 5),
        "plausible_p99": list(PLAUSIBLE_P99),
        "sample_values": int(valid.size),
    }
    low, high = PLAUSIBLE_P99
    if low <= p99 <= high and p1 >= PLAUSIBLE_P1_MIN:
        return result
    dn = _check_sample(masked, idx, rows, cols)
    dn = dn[np.isfinite(dn)]
    dn_p99 = float(np.percentile(dn, 99)) if dn.size else math.nan
    how = _describe_radiometry(radiometry, encoding)
    problem = (
        f"99th percentile {p99:.4g} (plausible {low:g}..{high:g})"
        if not low <= p99 <= high
        else f"1st percentile {p1:.4g} (below {PLAUSIBLE_P1_MIN:g}: a wrong offset)"
    )
    raise SceneError(
        f"{where} does not look like reflectance after {how}: visible/NIR values "
        f"{p1:.4g}..{p99:.4g} (1st..99th percentile), {problem}. "
        + _suggestion(dn_p99, sensor, str(masked_dtype))
    )


def _describe_radiometry(radiometry: Radiometry, encoding: Encoding) -> str:
    method = radiometry.info.get("method")
    scales = sorted(set(radiometry.scales))
    scale = f"{scales[0]:g}" if len(scales) == 1 else f"{min(scales):g}..{max(scales):g}"
    if method == "metadata":
        return f"the scale {scale} stated by {radiometry.info.get('source')}"
    if method == "mtl":
        return f"the MTL calibration ({radiometry.info.get('mtl')})"
    return f"encoding {encoding.name} (scale {scale})"


def _suggestion(dn_p99: float, sensor: str, dtype: str) -> str:
    """The power-of-ten scale that would put the 99th percentile near 0.4, and the
    encodings of that scale that fit the sensor and data type."""
    if not math.isfinite(dn_p99) or dn_p99 <= 0:
        return "Pass --scale/--offset, or the right --encoding (see `spex encodings`)."
    fit = 10.0 ** round(math.log10(0.4 / dn_p99))
    named = [
        e.name
        for e in all_encodings()
        if e.calibration == "scale"
        and e.scale is not None
        and math.isclose(e.scale, fit, rel_tol=1e-9)
        and (e.offset or 0.0) == 0.0
        and e.baseline_offset is None
        and e.applies_to(sensor, dtype, None)
    ]
    alt = f" or --encoding {' / '.join(named)}" if named else ""
    return (
        f"The raw values' 99th percentile is {dn_p99:.5g}: a scale of {fit:g} would put it "
        f"at {dn_p99 * fit:.3g}; pass --scale {fit:g}{alt}. If the values are uncalibrated "
        "digital numbers, pass --encoding uncalibrated-dn."
    )


# ------------------------------------------------------------------ nodata and sampling


def nodata_values(file_nd: float | None, encoding_nd: float | None, dtype: np.dtype) -> list[float]:
    """Nodata values representable in ``dtype`` (the file's own and the encoding's)."""
    out: list[float] = []
    for v in (file_nd, encoding_nd):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v in out:
            continue
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if not (info.min <= v <= info.max) or float(v) != int(v):
                continue
        out.append(float(v))
    return out


def mask_block(block: np.ndarray, nodata: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """Native DN -> float32 with NaN where the band's nodata (or NaN) is."""
    out = block.astype(np.float32)
    for i, values in enumerate(nodata):
        for v in values:
            out[i][block[i] == np.asarray(v).astype(block.dtype)] = np.nan
    return out


def _decimated(data: da.Array, max_pixels: int = DECIMATED_PIXELS) -> tuple[np.ndarray, int]:
    """A strided (band, y, x) sample of at most ~max_pixels pixels, and its step."""
    _, h, w = data.shape
    step = sample_step(h, w, max_pixels)
    return windows.strided_sample(data, step), step
