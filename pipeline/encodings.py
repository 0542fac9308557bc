"""Encoding catalogs: how a product stores a sensor's bands as numbers.

A sensor (:mod:`pipeline.sensors`) says what the bands are; an encoding
(``catalogs/encodings/<name>.yaml``) says how a product writes them: the product levels it
serves, the data types it comes in, and the way back to reflectance:

* ``calibration: scale`` -- ``reflectance = DN * scale + offset`` (plus a processing-
  baseline DN offset rule where the provider has one, e.g. Sentinel-2 from 04.00);
* ``calibration: mtl`` -- per-band coefficients from the product's own metadata (Landsat
  Level-1 MTL files), with a declared ``fallback`` when the metadata is absent;
* ``calibration: percentile`` -- no calibration exists: the declared per-scene fallback.

``default_for`` says when an encoding is assumed without other evidence (e.g. integer
Sentinel-2 data are ESA digital numbers); it is catalog data so that what is assumed is
written down in one place and shown by ``spex encodings``. Whatever is chosen is checked
against the values (:mod:`pipeline.scene.radiometry`). Schema: ``catalogs/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.catalog_io import (
    catalog_dir,
    catalog_names,
    check_entry,
    check_keys,
    number,
    read_catalog_yaml,
    required,
)
from pipeline.errors import CatalogError
from pipeline.sensors import list_sensors

CALIBRATIONS = ("scale", "mtl", "percentile")
FALLBACK_METHODS = ("percentile",)
_KEYS = {
    "name",
    "title",
    "sensors",
    "levels",
    "dtypes",
    "calibration",
    "scale",
    "offset",
    "nodata",
    "baseline_offset",
    "fallback",
    "default_for",
    "notes",
}
_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class BaselineOffset:
    """A DN offset that applies from a processing baseline on (Sentinel-2 04.00: -1000).

    ``since_sensing_date`` lets the opener infer the baseline from the sensing date when a
    product carries no baseline metadata (all products sensed from that date on are
    generated with the new baseline).
    """

    from_baseline: str
    dn_offset: float
    since_sensing_date: str | None = None


@dataclass(frozen=True)
class DefaultRule:
    """When an encoding is assumed: sensor (or 'any'), data type and, optionally, level."""

    sensors: tuple[str, ...] | None  # None: any sensor
    dtypes: tuple[str, ...]
    levels: tuple[str, ...] = ()

    def matches(self, sensor: str, dtype: str, level: str | None) -> bool:
        if self.sensors is not None and sensor not in self.sensors:
            return False
        if dtype not in self.dtypes:
            return False
        return not self.levels or (level is not None and level in self.levels)


@dataclass(frozen=True)
class Encoding:
    """An encoding catalog entry; see ``catalogs/encodings/*.yaml``."""

    name: str
    title: str
    sensors: tuple[str, ...] | None  # None: any sensor
    levels: tuple[str, ...]
    dtypes: tuple[str, ...]
    calibration: str
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    baseline_offset: BaselineOffset | None = None
    fallback_percentile: float | None = None
    default_for: tuple[DefaultRule, ...] = ()
    notes: str = ""
    path: str = ""

    @property
    def calibrated(self) -> bool:
        """Whether values map to physical reflectance (not a per-scene fallback)."""
        return self.calibration != "percentile"

    def applies_to(self, sensor: str, dtype: str, level: str | None) -> bool:
        """Whether a ``dtype`` product of ``sensor`` at ``level`` can be in this encoding."""
        if self.sensors is not None and sensor not in self.sensors:
            return False
        if dtype not in self.dtypes:
            return False
        return level is None or not self.levels or level in self.levels

    def is_default(self, sensor: str, dtype: str, level: str | None) -> bool:
        return any(rule.matches(sensor, dtype, level) for rule in self.default_for)


def _sensor_list(value: Any, key: str, where: str) -> tuple[str, ...] | None:
    if value == "any":
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: key {key!r} must be 'any' or a list of sensor names")
    unknown = sorted(set(value) - set(list_sensors()))
    if unknown:
        raise CatalogError(f"{where}: {key} names unknown sensor(s) {', '.join(unknown)}")
    return tuple(value)


def _dtypes(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not set(map(str, value)) <= set(_DTYPES):
        raise CatalogError(f"{where}: key {key!r} must be a list of data types from {_DTYPES}")
    return tuple(str(v) for v in value)


def _levels(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise CatalogError(f"{where}: key {key!r} must be a list of level names")
    return tuple(str(v) for v in value)


def _default_rules(raw: Any, where: str) -> tuple[DefaultRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise CatalogError(f"{where}: key 'default_for' must be a list of mappings")
    rules = []
    for rule in raw:
        w = f"{where} default_for"
        check_keys(rule, w, allowed={"sensors", "dtypes", "levels"})
        rules.append(
            DefaultRule(
                sensors=_sensor_list(required(rule, "sensors", w), "sensors", w),
                dtypes=_dtypes(required(rule, "dtypes", w), "dtypes", w),
                levels=_levels(rule.get("levels"), "levels", w),
            )
        )
    return tuple(rules)


def load_encoding_file(path: str | Path) -> Encoding:
    """Parse and validate one encoding file (public so malformed files can be tested)."""
    path = Path(path)
    where = str(path)
    raw = read_catalog_yaml(path, "encoding")
    name = check_entry(raw, path, _KEYS)
    for key in ("title", "sensors", "dtypes", "calibration"):
        required(raw, key, where)
    calibration = raw["calibration"]
    if calibration not in CALIBRATIONS:
        raise CatalogError(f"{where}: key 'calibration' must be one of {CALIBRATIONS}")
    scale = number(raw.get("scale"), "scale", where)
    offset = number(raw.get("offset"), "offset", where)
    if calibration == "scale":
        scale = number(required(raw, "scale", where), "scale", where)
        if not scale or scale <= 0:
            raise CatalogError(f"{where}: key 'scale' must be > 0")
        offset = offset or 0.0
    percentile = None
    if calibration in ("mtl", "percentile"):
        fb = required(raw, "fallback", where)
        if not isinstance(fb, dict) or fb.get("method") not in FALLBACK_METHODS:
            raise CatalogError(
                f"{where}: key 'fallback' must name a method in {FALLBACK_METHODS}, got {fb!r}"
            )
        percentile = number(required(fb, "percentile", f"{where} fallback"), "percentile", where)
        if not percentile or not 0 < percentile <= 100:
            raise CatalogError(f"{where}: fallback percentile must be in (0, 100]")
    baseline = None
    if raw.get("baseline_offset") is not None:
        bo = raw["baseline_offset"]
        w = f"{where} baseline_offset"
        if not isinstance(bo, dict):
            raise CatalogError(f"{w}: must be a mapping")
        baseline = BaselineOffset(
            from_baseline=str(required(bo, "from_baseline", w)),
            dn_offset=float(number(required(bo, "dn_offset", w), "dn_offset", w) or 0.0),
            since_sensing_date=(
                str(bo["since_sensing_date"]) if bo.get("since_sensing_date") else None
            ),
        )
    return Encoding(
        name=name,
        title=str(raw["title"]),
        sensors=_sensor_list(raw["sensors"], "sensors", where),
        levels=_levels(raw.get("levels"), "levels", where),
        dtypes=_dtypes(raw["dtypes"], "dtypes", where),
        calibration=str(calibration),
        scale=scale,
        offset=offset,
        nodata=number(raw.get("nodata"), "nodata", where),
        baseline_offset=baseline,
        fallback_percentile=percentile,
        default_for=_default_rules(raw.get("default_for"), where),
        notes=" ".join(str(raw.get("notes", "")).split()),
        path=where,
    )


def select_encoding(sensor: str, dtype: str, level: str | None = None) -> Encoding:
    """The encoding catalog data select for a ``dtype`` product of ``sensor`` at ``level``
    (the one ``default_for`` entry that matches); CatalogError naming the candidates and
    --encoding otherwise."""
    fitting = [e for e in all_encodings() if e.applies_to(sensor, dtype, level)]
    defaults = [e for e in fitting if e.is_default(sensor, dtype, level)]
    if len(defaults) == 1:
        return defaults[0]
    names = ", ".join(e.name for e in (defaults or fitting)) or "none"
    raise CatalogError(
        f"no single encoding fits a {dtype} {sensor} product (level {level or 'not stated'}); "
        f"candidates: {names}; pass --encoding"
    )


def list_encodings() -> list[str]:
    """Names of all encoding catalogs, sorted."""
    return catalog_names("encodings")


@cache
def load_encoding(name: str) -> Encoding:
    """The catalog entry ``name``; an unknown name lists the known ones."""
    path = catalog_dir("encodings") / f"{name}.yaml"
    if not name or "/" in name or "\\" in name or not path.is_file():
        raise CatalogError(
            f"unknown encoding {name!r}; known encodings (--encoding): "
            f"{', '.join(list_encodings())}"
        )
    return load_encoding_file(path)


def all_encodings() -> list[Encoding]:
    """Every encoding entry, loaded and validated."""
    return [load_encoding(n) for n in list_encodings()]
