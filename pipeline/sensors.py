"""Sensor catalogs: what an instrument's bands are and what people call them.

Every fact about a sensor's bands (canonical code, native name, the aliases providers and
tools use, wavelength, whether it measures reflectance) lives in
``catalogs/sensors/<name>.yaml``; how a product *stores* those bands (level, DN scale and
offset, processing-baseline rule, nodata, data type) is an encoding,
:mod:`pipeline.encodings`. Keeping the two apart is what lets one Sentinel-2 band set open
from ESA digital numbers, a float reflectance export or a STAC item alike.

A sensor file also says how to recognise the sensor's products: ``platforms`` (STAC
``platform``, MTL ``SPACECRAFT_ID``), ``file_patterns`` (regular expressions on file or
folder names, e.g. Landsat product ids) and ``levels`` (the product levels and the
metadata values or names that state them). Band names are matched case-insensitively
against the native name, the aliases and the canonical code. Files are safe-loaded and
checked eagerly: a malformed catalog fails with a :class:`CatalogError` naming the file
and the key. Schema: ``catalogs/README.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.bands import band_codes, band_name
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

_SENSOR_KEYS = ("name", "title", "resolution_m", "bands")
_BAND_KEYS = ("code", "native", "wavelength_nm")
_ALLOWED_KEYS = {
    "name",
    "title",
    "platform",
    "platforms",
    "resolution_m",
    "file_patterns",
    "levels",
    "notes",
    "file_layouts",
    "product_name",
    "bands",
}
_LEVEL_KEYS = {"product_types", "path_patterns", "label_patterns"}


def normalise_name(text: str) -> str:
    """Platform and level spellings compared loosely: 'LANDSAT_5' == 'landsat-5'."""
    return re.sub(r"[\s_]+", "-", text.strip().lower())


@dataclass(frozen=True)
class SensorBand:
    """One band of a sensor. ``reflective`` is False for thermal bands, which scenes drop:
    no reflectance encoding applies to them. ``resolution_m`` is the band's native ground
    sampling when the sensor mixes resolutions (Sentinel-2: 10/20/60 m)."""

    code: str
    native: str
    wavelength_nm: float
    aliases: tuple[str, ...] = ()
    reflective: bool = True
    resolution_m: float | None = None

    @property
    def long_name(self) -> str:
        """Readable name for messages, e.g. 'near infrared'."""
        return band_name(self.code)

    @property
    def names(self) -> tuple[str, ...]:
        """Native name first, then the aliases: every spelling a file may use."""
        return (self.native, *self.aliases)


@dataclass(frozen=True)
class LevelRule:
    """How a product states its level: metadata values (PRODUCT_TYPE, PROCESSING_LEVEL,
    STAC ``s2:product_type`` / ``processing:level`` / ``landsat:correction``), patterns
    on file or folder names, or patterns on band names (``SR_B4`` is Level-2)."""

    level: str
    product_types: tuple[str, ...] = ()
    path_patterns: tuple[str, ...] = ()
    label_patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sensor:
    """A sensor catalog entry; see ``catalogs/sensors/*.yaml``."""

    name: str
    title: str
    resolution_m: tuple[float, ...]
    bands: tuple[SensorBand, ...]
    platform: str = ""
    platforms: tuple[str, ...] = ()
    file_patterns: tuple[str, ...] = ()
    levels: tuple[LevelRule, ...] = ()
    notes: str = ""
    path: str = ""
    # Band orders in which unlabelled files of this sensor are known to come, keyed by
    # band count (e.g. Landsat stacks without the thermal band). Declared data, so a
    # 6-band file is never matched to 7 catalog bands by guesswork.
    file_layouts: tuple[tuple[int, tuple[str, ...]], ...] = ()
    # How the product names itself (a regex found in its band file names, folders or
    # metadata tags, e.g. the Sentinel-2 tile id and sensing time): the output name.
    product_name: str | None = None

    def layout_for(self, count: int) -> tuple[SensorBand, ...] | None:
        """The catalog bands of a ``count``-band file without band names, or None."""
        if count == len(self.bands):
            return self.bands
        for n, names in self.file_layouts:
            if n == count:
                return tuple(self.band(name) for name in names)
        return None

    @property
    def description(self) -> str:
        """One line for listings (``spex sensors``): the catalog's title."""
        return self.title

    @property
    def codes(self) -> tuple[str, ...]:
        """Canonical band codes in catalog order."""
        return tuple(b.code for b in self.bands)

    @property
    def native_names(self) -> tuple[str, ...]:
        """Native band names in catalog order."""
        return tuple(b.native for b in self.bands)

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(rule.level for rule in self.levels)

    def find_band(self, name: str) -> SensorBand | None:
        """The band a name means: native name or alias first, then canonical code."""
        key = name.strip().lower()
        for b in self.bands:
            if key in (n.lower() for n in b.names):
                return b
        for b in self.bands:
            if b.code.lower() == key:
                return b
        return None

    def band(self, name: str) -> SensorBand:
        """The band whose native name, alias or canonical code is ``name``."""
        found = self.find_band(name)
        if found is None:
            raise CatalogError(
                f"sensor {self.name!r} has no band {name!r}; its bands are "
                + ", ".join(f"{b.native} ({b.code})" for b in self.bands)
            )
        return found

    def has_band(self, name: str) -> bool:
        """Whether ``name`` is a native name, alias or canonical code of this sensor."""
        return self.find_band(name) is not None

    def matches_platform(self, platform: str | None) -> bool:
        return bool(platform) and normalise_name(str(platform)) in self.platforms

    def matches_file_name(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.file_patterns)

    def level_of(
        self, stated: list[str], paths: list[str], labels: list[str]
    ) -> tuple[str, str] | None:
        """(level, evidence) from metadata values, names and band labels, or None."""
        for rule in self.levels:
            wanted = {normalise_name(t) for t in (*rule.product_types, rule.level)}
            for value in stated:
                if normalise_name(value) in wanted:
                    return rule.level, f"metadata value {value!r}"
        for rule in self.levels:
            for p in paths:
                for pattern in rule.path_patterns:
                    if re.search(pattern, p):
                        return rule.level, f"name {Path(p).name}"
        for rule in self.levels:
            for pattern in rule.label_patterns:
                if labels and all(re.search(pattern, lb, re.IGNORECASE) for lb in labels):
                    return rule.level, f"band names ({', '.join(labels[:3])}, ...)"
        return None

    def canonical_level(self, level: str) -> str | None:
        """The catalog's spelling of a level a user typed ('l2a' -> 'L2A'), or None."""
        key = normalise_name(level).replace("level-", "l")
        for rule in self.levels:
            names = (rule.level, *rule.product_types)
            if key in {normalise_name(n) for n in names}:
                return rule.level
        return None


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise CatalogError(f"{where}: key {key!r} must be a list of strings")
    return tuple(str(v) for v in value)


def _patterns(value: Any, key: str, where: str) -> tuple[str, ...]:
    out = _strings(value, key, where)
    for p in out:
        try:
            re.compile(p)
        except re.error as exc:
            raise CatalogError(f"{where}: {key} pattern {p!r} is not a regex ({exc})") from exc
    return out


def _parse_band(raw: Any, where: str) -> SensorBand:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: each entry of 'bands' must be a mapping, got {raw!r}")
    for key in _BAND_KEYS:
        required(raw, key, where)
    code = str(raw["code"])
    if code not in band_codes():
        raise CatalogError(
            f"{where}: band code {code!r} is not a canonical code (catalogs/bands.yaml); "
            "use one of " + ", ".join(band_codes())
        )
    where_band = f"{where} band {code}"
    check_keys(raw, where_band, allowed={*_BAND_KEYS, "aliases", "reflective", "resolution_m"})
    reflective = raw.get("reflective", True)
    if not isinstance(reflective, bool):
        raise CatalogError(f"{where_band}: key 'reflective' must be true or false")
    return SensorBand(
        code=code,
        native=str(raw["native"]),
        wavelength_nm=float(number(raw["wavelength_nm"], "wavelength_nm", where_band) or 0),
        aliases=_strings(raw.get("aliases"), "aliases", where_band),
        reflective=reflective,
        resolution_m=number(raw.get("resolution_m"), "resolution_m", where_band),
    )


def _parse_levels(raw: Any, where: str) -> tuple[LevelRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: key 'levels' must map a level name to its rules")
    out = []
    for level, rules in raw.items():
        w = f"{where} level {level}"
        rules = check_keys(rules or {}, w, allowed=_LEVEL_KEYS)
        out.append(
            LevelRule(
                level=str(level),
                product_types=_strings(rules.get("product_types"), "product_types", w),
                path_patterns=_patterns(rules.get("path_patterns"), "path_patterns", w),
                label_patterns=_patterns(rules.get("label_patterns"), "label_patterns", w),
            )
        )
    return tuple(out)


def load_sensor_file(path: str | Path) -> Sensor:
    """Parse and validate one catalog file (public so malformed files can be tested)."""
    path = Path(path)
    where = str(path)
    raw = read_catalog_yaml(path, "sensor")
    for key in _SENSOR_KEYS:
        required(raw, key, where)
    hint = ""
    if set(raw) & {"scale", "offset", "nodata", "calibrated", "dtypes", "fallback"}:
        hint = " (radiometry belongs to an encoding: catalogs/encodings/)"
    name = check_entry(raw, path, _ALLOWED_KEYS, hint)
    bands_raw = raw["bands"]
    if not isinstance(bands_raw, list) or not bands_raw:
        raise CatalogError(f"{where}: key 'bands' must be a non-empty list")
    bands = tuple(_parse_band(b, where) for b in bands_raw)
    codes = [b.code.lower() for b in bands]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise CatalogError(f"{where}: duplicate band code {', '.join(dupes)}")
    spellings = [n.lower() for b in bands for n in b.names]
    dupes = sorted({s for s in spellings if spellings.count(s) > 1})
    if dupes:
        raise CatalogError(f"{where}: duplicate band native name or alias {', '.join(dupes)}")
    res = raw["resolution_m"]
    res = res if isinstance(res, list) else [res]
    product_name = raw.get("product_name")
    if product_name is not None:
        try:
            re.compile(str(product_name))
        except re.error as exc:
            raise CatalogError(f"{where}: key 'product_name' is not a valid regex: {exc}") from exc
    return Sensor(
        name=name,
        title=str(raw["title"]),
        resolution_m=tuple(float(number(r, "resolution_m", where) or 0) for r in res),
        bands=bands,
        platform=str(raw.get("platform", "")),
        platforms=tuple(map(normalise_name, _strings(raw.get("platforms"), "platforms", where))),
        file_patterns=_patterns(raw.get("file_patterns"), "file_patterns", where),
        levels=_parse_levels(raw.get("levels"), where),
        notes=" ".join(str(raw.get("notes", "")).split()),
        path=where,
        file_layouts=_parse_layouts(raw.get("file_layouts"), bands, where),
        product_name=str(product_name) if product_name is not None else None,
    )


def _parse_layouts(
    raw: Any, bands: tuple[SensorBand, ...], where: str
) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """Validate ``file_layouts``: a list of native-name lists, each naming known bands."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, list) and x for x in raw):
        raise CatalogError(f"{where}: key 'file_layouts' must be a list of band-name lists")
    natives = {b.native for b in bands}
    out = []
    for names in raw:
        unknown = [str(n) for n in names if str(n) not in natives]
        if unknown:
            raise CatalogError(f"{where}: file_layouts names unknown band(s) {', '.join(unknown)}")
        out.append((len(names), tuple(str(n) for n in names)))
    counts = [n for n, _ in out]
    if len(set(counts)) != len(counts) or len(bands) in counts:
        raise CatalogError(
            f"{where}: file_layouts must have one layout per band count, "
            "other than the full band count"
        )
    return tuple(out)


def list_sensors() -> list[str]:
    """Names of all sensor catalogs, sorted."""
    return catalog_names("sensors")


@cache
def load_sensor(name: str) -> Sensor:
    """The catalog entry ``name``; an unknown name lists the known ones."""
    path = catalog_dir("sensors") / f"{name}.yaml"
    if not name or "/" in name or "\\" in name or not path.is_file():
        is_encoding = name in catalog_names("encodings")
        hint = f" ({name} is an encoding: pass it with --encoding)" if is_encoding else ""
        raise CatalogError(
            f"unknown sensor {name!r}{hint}; known sensors (--sensor): {', '.join(list_sensors())}"
        )
    return load_sensor_file(path)


def all_sensors() -> list[Sensor]:
    """Every catalog entry, loaded and validated."""
    return [load_sensor(n) for n in list_sensors()]
