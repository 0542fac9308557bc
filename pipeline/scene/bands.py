"""Map a source's bands onto a sensor: band-name resolution (native names, aliases,
canonical codes, case-insensitive), declared file layouts (by band count), and sensor
detection from band names, platform metadata and product file names.

A sensor is never guessed: when band names fit several sensors (``B4`` is red on
Sentinel-2 and near infrared on Landsat TM) and no metadata narrows them, the message lists
the candidates and asks for ``--sensor``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import SceneError
from pipeline.scene.sources import _Raw
from pipeline.sensors import Sensor, SensorBand, all_sensors


def _token_match(stem: str, sensor: Sensor) -> SensorBand | None:
    """The band whose name stands as a token in a file stem (T33UUU_..._B08 -> B08,
    LT05_..._SR_B4 -> B4, blue_band -> blue). Names without a letter (Landsat '4') are not
    used here: digits are everywhere in product ids. The longest, last match wins."""
    key = stem.lower()
    best: tuple[int, int, SensorBand] | None = None
    for b in sensor.bands:
        for name in b.names:
            if not re.search(r"[a-z]", name.lower()):
                continue
            pattern = rf"(?:^|[_\-.]){re.escape(name.lower())}(?=$|[_\-.])"
            for m in re.finditer(pattern, key):
                cand = (m.end(), len(name), b)
                if best is None or cand[:2] > best[:2]:
                    best = cand
    return best[2] if best else None


def match_label(
    label: str | None, alt: Sequence[str], sensor: Sensor, kind: str
) -> SensorBand | None:
    """The catalog band a source label names, or None."""
    if label is None:
        return None
    for name in (label, *alt):
        found = sensor.find_band(name)
        if found is not None:
            return found
    if kind == "filename":
        return _token_match(label, sensor)
    return None


def _describe_count(sensor: Sensor) -> str:
    listed = ", ".join(f"{b.native}={b.code}" for b in sensor.bands)
    return f"{len(sensor.bands)} bands ({listed})"


def resolve_bands(
    raw: _Raw, sensor: Sensor, bands: Sequence[str] | None
) -> tuple[list[SensorBand], list[int]]:
    """Catalog bands for the source's bands, and the indices of the source bands to keep.

    Thermal bands (not reflective) are dropped here and listed in ``raw.skipped``.
    """
    count = raw.data.sizes["band"]
    where = raw.where
    if bands is not None:
        bands = list(bands)
        if len(bands) != count:
            raise SceneError(
                f"--bands names {len(bands)} bands but {where} has {count}; name every band "
                "of the file in file order"
            )
        unknown = [name for name in bands if not sensor.has_band(name)]
        if unknown:
            raise SceneError(
                f"band(s) {', '.join(map(repr, unknown))} given in --bands are not bands of "
                f"sensor {sensor.name} ({', '.join(sensor.native_names)})"
            )
        chosen = [sensor.band(name) for name in bands]
        keep = list(range(count))
    elif raw.label_kind != "none":
        matched = [
            match_label(lb, alt, sensor, raw.label_kind)
            for lb, alt in zip(raw.labels, raw.alt_labels, strict=True)
        ]
        keep = [i for i, m in enumerate(matched) if m is not None]
        unmatched = [raw.labels[i] for i, m in enumerate(matched) if m is None]
        if unmatched and raw.from_folder and keep:
            raw.skipped.extend(f"{lb} (not a band of {sensor.name})" for lb in unmatched)
        elif unmatched and (keep or raw.label_kind in ("filename", "asset")):
            raise SceneError(
                f"{where}: band(s) {', '.join(map(str, unmatched))} are not bands of sensor "
                f"{sensor.name} ({', '.join(sensor.native_names)}); name the file's bands "
                "with --bands"
            )
        if keep:
            chosen = [m for m in matched if m is not None]
        else:
            _refuse_other_sensors_names(raw, sensor)
            chosen, keep = _by_count(count, sensor, where)
            raw.skipped.append(
                f"band names {', '.join(map(str, raw.labels))} are not {sensor.name} names: "
                "bands taken in the declared file order"
            )
    else:
        chosen, keep = _by_count(count, sensor, where)
    codes = [b.code for b in chosen]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise SceneError(f"{where}: band(s) {', '.join(dupes)} appear more than once")
    thermal = [b for b in chosen if not b.reflective]
    raw.skipped.extend(f"{b.native} ({b.long_name}: not a reflectance band)" for b in thermal)
    if thermal and len(thermal) == len(chosen):
        raise SceneError(f"{where} holds only thermal bands ({', '.join(codes)}); nothing to open")
    pairs = [(b, i) for b, i in zip(chosen, keep, strict=True) if b.reflective]
    return [b for b, _ in pairs], [i for _, i in pairs]


def _refuse_other_sensors_names(raw: _Raw, sensor: Sensor) -> None:
    """Band names that are another sensor's (B02..B12 given --sensor landsat-tm) mean the
    wrong --sensor: never map them by count onto this sensor's bands."""
    others = [s.name for s in _fit_by_labels(raw, all_sensors()) if s.name != sensor.name]
    if others:
        listed = ", ".join(str(lb) for lb in raw.labels[:14])
        raise SceneError(
            f"{raw.where}: its bands {listed} are named as bands of {', '.join(others)}, "
            f"not of --sensor {sensor.name}; pass the right --sensor, or --bands to rename "
            "them"
        )


def _by_count(count: int, sensor: Sensor, where: str) -> tuple[list[SensorBand], list[int]]:
    layout = sensor.layout_for(count)
    if layout is None:
        layouts = sorted({len(sensor.bands), *(n for n, _ in sensor.file_layouts)})
        raise SceneError(
            f"{where} has {count} unnamed bands but sensor {sensor.name} declares "
            f"{_describe_count(sensor)} (known unnamed layouts: "
            f"{', '.join(map(str, layouts))} bands); name the file's bands in file order "
            "with --bands, or choose the right --sensor"
        )
    return list(layout), list(range(count))


def _names(raw: _Raw) -> list[str]:
    """File and folder names that product naming patterns are matched against."""
    out = []
    for p in raw.paths:
        path = Path(p)
        out.append(path.name)
        out.extend(parent.name for parent in list(path.parents)[:3] if parent.name)
    return out


def _evidence(raw: _Raw, sensors: list[Sensor]) -> tuple[list[Sensor], str | None]:
    """Sensors named by platform metadata or product file names, and what named them."""
    platform = raw.facts.platform
    if platform is not None:
        named = [s for s in sensors if s.matches_platform(platform[0])]
        if named:
            return named, f"platform {platform[0]!r} ({platform[1]})"
    names = _names(raw)
    named = [s for s in sensors if any(s.matches_file_name(n) for n in names)]
    if named:
        return named, "product file name"
    return [], None


def _fit_by_labels(raw: _Raw, sensors: list[Sensor]) -> list[Sensor]:
    """Sensors that the band labels fit: all of them for a file's band descriptions; for
    file sets and STAC items (which may hold non-band files) the most labels, at least one."""
    scores = []
    for s in sensors:
        hits = sum(
            match_label(lb, alt, s, raw.label_kind) is not None
            for lb, alt in zip(raw.labels, raw.alt_labels, strict=True)
        )
        scores.append((hits, s))
    if raw.label_kind in ("description", "variable") or not raw.from_folder:
        return [s for hits, s in scores if hits == len(raw.labels)]
    best = max((hits for hits, _ in scores), default=0)
    return [s for hits, s in scores if hits == best and hits > 0]


#: Unnamed bands identify a sensor by their count alone only from this many on, and only
#: when one catalog declares that layout: 10-13 bands are Sentinel-2's and Landsat 8/9's
#: full stacks (a flood data set's 13-band L1C chips), while 3-8 bands are shared by too
#: many sensors and exports (RGB, RGBN, Landsat subsets) to guess. The radiometry check
#: still applies to whatever is chosen.
DISTINCTIVE_BAND_COUNT = 10


def detect_sensor(raw: _Raw) -> tuple[Sensor, str]:
    """The one sensor the source fits, and why; a SceneError naming --sensor otherwise."""
    sensors = all_sensors()
    known = ", ".join(s.name for s in sensors)
    named, why = _evidence(raw, sensors)
    if raw.label_kind == "none":
        if len(named) == 1:
            return named[0], str(why)
        count = int(raw.data.sizes["band"])
        by_count = [s for s in sensors if s.layout_for(count) is not None]
        if not named and count >= DISTINCTIVE_BAND_COUNT and len(by_count) == 1:
            return by_count[0], f"{count} bands (the one catalog with a {count}-band layout)"
        raise SceneError(
            f"cannot tell the sensor of {raw.where} ({raw.data.sizes['band']} unnamed "
            f"{raw.data.dtype} bands); pass --sensor, one of: {known}"
        )
    fitting = _fit_by_labels(raw, sensors)
    both = [s for s in fitting if s in named] if named else fitting
    if len(both) == 1:
        reason = f"band names and {why}" if named else "band names"
        return both[0], reason
    listed = ", ".join(str(lb) for lb in raw.labels[:14])
    if len(raw.labels) > 14:
        listed += ", ..."
    if both:
        raise SceneError(
            f"cannot tell the sensor of {raw.where}: bands {listed} fit "
            f"{', '.join(s.name for s in both)}; pass --sensor"
        )
    raise SceneError(
        f"cannot tell the sensor of {raw.where}: bands {listed} fit no sensor catalog"
        + (f" of the {why}" if why else "")
        + f"; pass --sensor (one of: {known}) and, if the names are not the sensor's, --bands"
    )
