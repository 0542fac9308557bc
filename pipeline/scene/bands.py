"""Map a source's bands onto a catalog sensor: band-name resolution, declared file
layouts (by band count) and sensor auto-detection from band names, dtype and product type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import SceneError
from pipeline.scene.sources import _Raw
from pipeline.sensors import Sensor, SensorBand, all_sensors


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
