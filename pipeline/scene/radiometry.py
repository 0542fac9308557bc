"""Radiometry: DN -> reflectance (catalog or explicit scale/offset, the Sentinel-2
processing-baseline DN offset, the percentile fallback), nodata masking, sensing date.

Uncalibrated 8-bit products use the catalog's declared fallback: ONE common scale for all
bands, 1 / (99.5th percentile of the valid values of all bands, from a decimated read),
offset 0. A common scale keeps every normalised-difference index equal to the index of the
DN. Values above the percentile are NOT clipped to 1.0: clipping would change the index of
the brightest 0.5 % of pixels and break that equality; values slightly above 1 are
"brighter than the scene's bright reference", which real reflectance products also show.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from pipeline.errors import SceneError
from pipeline.scene.checks import DECIMATED_PIXELS
from pipeline.scene.sources import _Raw
from pipeline.sensors import Sensor, SensorBand


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
        return {
            "applies": False,
            "reason": f"sensor {sensor.name} has no baseline rule",
            "given": baseline,
        }
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
        return {
            "applies": applies,
            "baseline": f"{parsed[0]:02d}.{parsed[1]:02d}",
            "source": source,
            "dn_offset": rule.dn_offset if applies else 0.0,
        }
    sensed = _sensing_date(raw)
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
