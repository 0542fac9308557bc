"""Sensor catalogs: the one place that says what a product's bands are and mean.

Every fact about a sensor (band codes, native names, wavelengths, scale/offset to
reflectance, nodata, calibration) lives in ``catalogs/sensors/<name>.yaml``; this module
only loads and validates those files, so a new sensor is a new YAML file and no Python
change. Files are safe-loaded and checked eagerly: a malformed catalog fails with a
:class:`CatalogError` naming the file and the key, not with a KeyError deep inside a job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from pipeline.catalog_io import read_catalog_yaml
from pipeline.errors import CatalogError

#: Canonical band codes (Awesome Spectral Indices convention) and what they are called in
#: messages. This is the vocabulary catalogs may use, not a sensor fact.
CANONICAL_BANDS: dict[str, str] = {
    "A": "coastal aerosol",
    "B": "blue",
    "G": "green",
    "G1": "green 1",
    "Y": "yellow",
    "R": "red",
    "RE1": "red edge 1",
    "RE2": "red edge 2",
    "RE3": "red edge 3",
    "N": "near infrared",
    "N2": "narrow near infrared",
    "WV": "water vapour",
    "C": "cirrus",
    "S1": "shortwave infrared 1 (~1.6 um)",
    "S2": "shortwave infrared 2 (~2.2 um)",
    "T": "thermal infrared",
    "T1": "thermal infrared 1",
    "T2": "thermal infrared 2",
    "PAN": "panchromatic",
}

FALLBACK_METHODS = ("percentile",)
_SENSOR_KEYS = ("name", "title", "calibrated", "resolution_m", "bands")
_BAND_KEYS = ("code", "native", "wavelength_nm")


@dataclass(frozen=True)
class SensorBand:
    """One band of a sensor: ``reflectance = DN * scale + offset`` where DN != nodata.

    ``scale``/``offset`` are None for uncalibrated sensors (the scene opener then applies
    the sensor's declared fallback). ``resolution_m`` is the band's native ground
    sampling when the sensor mixes resolutions (Sentinel-2: 10/20/60 m).
    """

    code: str
    native: str
    wavelength_nm: float
    scale: float | None
    offset: float | None
    nodata: float | None
    resolution_m: float | None = None

    @property
    def long_name(self) -> str:
        """Readable name for messages, e.g. 'near infrared'."""
        return CANONICAL_BANDS.get(self.code, self.code)


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
class Sensor:
    """A sensor/product catalog entry; see ``catalogs/sensors/*.yaml``."""

    name: str
    title: str
    calibrated: bool
    resolution_m: tuple[float, ...]
    bands: tuple[SensorBand, ...]
    dtypes: tuple[str, ...] = ()
    fallback_method: str | None = None
    fallback_percentile: float | None = None
    baseline_offset: BaselineOffset | None = None
    autodetect: bool = False
    product_type: str | None = None
    platform: str = ""
    notes: str = ""
    path: str = ""
    # Band orders in which unlabelled files of this product are known to come, keyed by
    # band count (e.g. Landsat 7 stacks of bands 1-5 without band 7). Declared data, so a
    # 5-band file is never matched to 6 catalog bands by guesswork.
    file_layouts: tuple[tuple[int, tuple[str, ...]], ...] = ()
    # How the product names itself (a regex found in its band file names, folders or
    # metadata tags, e.g. the Sentinel-2 tile id and sensing time): the output name.
    product_name: str | None = None

    def layout_for(self, count: int) -> tuple[SensorBand, ...] | None:
        """The catalog bands of a declared ``count``-band file layout, or None."""
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

    def band(self, name: str) -> SensorBand:
        """The band whose native name or canonical code is ``name`` (case-insensitive)."""
        key = name.strip().lower()
        for b in self.bands:
            if b.native.lower() == key:
                return b
        for b in self.bands:
            if b.code.lower() == key:
                return b
        raise CatalogError(
            f"sensor {self.name!r} has no band {name!r}; its bands are "
            + ", ".join(f"{b.native} ({b.code})" for b in self.bands)
        )

    def has_band(self, name: str) -> bool:
        """Whether ``name`` is a native name or canonical code of this sensor."""
        try:
            self.band(name)
        except CatalogError:
            return False
        return True


def _catalog_dir() -> Path:
    return Path(str(files("catalogs").joinpath("sensors")))


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise CatalogError(f"{where}: missing required key {key!r}")
    return mapping[key]


def _number(value: Any, key: str, where: str, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"{where}: key {key!r} must be a number, got {value!r}")
    return float(value)


def _parse_band(raw: Any, defaults: dict[str, Any], calibrated: bool, where: str) -> SensorBand:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: each entry of 'bands' must be a mapping, got {raw!r}")
    for key in _BAND_KEYS:
        _require(raw, key, where)
    code = str(raw["code"])
    if code not in CANONICAL_BANDS:
        raise CatalogError(
            f"{where}: band code {code!r} is not a canonical code; use one of "
            + ", ".join(CANONICAL_BANDS)
        )
    where_band = f"{where} band {code}"
    scale = _number(raw.get("scale", defaults.get("scale")), "scale", where_band)
    offset = _number(raw.get("offset", defaults.get("offset")), "offset", where_band)
    if calibrated and scale is None:
        raise CatalogError(f"{where_band}: missing required key 'scale' (sensor is calibrated)")
    if calibrated and offset is None:
        offset = 0.0
    return SensorBand(
        code=code,
        native=str(raw["native"]),
        wavelength_nm=float(_number(raw["wavelength_nm"], "wavelength_nm", where_band)),
        scale=scale,
        offset=offset,
        nodata=_number(raw.get("nodata", defaults.get("nodata")), "nodata", where_band),
        resolution_m=_number(raw.get("resolution_m"), "resolution_m", where_band),
    )


def load_sensor_file(path: str | Path) -> Sensor:
    """Parse and validate one catalog file (public so malformed files can be tested)."""
    path = Path(path)
    where = str(path)
    raw = read_catalog_yaml(path, "sensor")
    for key in _SENSOR_KEYS:
        _require(raw, key, where)
    name = str(raw["name"])
    if name != path.stem:
        raise CatalogError(f"{where}: key 'name' is {name!r} but must equal the file name")
    calibrated = raw["calibrated"]
    if not isinstance(calibrated, bool):
        raise CatalogError(f"{where}: key 'calibrated' must be true or false")
    fallback_method = fallback_pct = None
    if not calibrated:
        fb = _require(raw, "fallback", where)
        if not isinstance(fb, dict) or fb.get("method") not in FALLBACK_METHODS:
            raise CatalogError(
                f"{where}: key 'fallback' must name a method in {FALLBACK_METHODS}, got {fb!r}"
            )
        fallback_method = str(fb["method"])
        fallback_pct = _number(_require(fb, "percentile", f"{where} fallback"), "percentile", where)
        if not 0 < float(fallback_pct) <= 100:
            raise CatalogError(f"{where}: fallback percentile must be in (0, 100]")
    bands_raw = raw["bands"]
    if not isinstance(bands_raw, list) or not bands_raw:
        raise CatalogError(f"{where}: key 'bands' must be a non-empty list")
    bands = tuple(_parse_band(b, raw, calibrated, where) for b in bands_raw)
    for attr in ("code", "native"):
        values = [getattr(b, attr).lower() for b in bands]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise CatalogError(f"{where}: duplicate band {attr} {', '.join(dupes)}")
    res = raw["resolution_m"]
    res = res if isinstance(res, list) else [res]
    baseline = None
    if raw.get("baseline_offset") is not None:
        bo = raw["baseline_offset"]
        w = f"{where} baseline_offset"
        if not isinstance(bo, dict):
            raise CatalogError(f"{w}: must be a mapping")
        baseline = BaselineOffset(
            from_baseline=str(_require(bo, "from_baseline", w)),
            dn_offset=float(_number(_require(bo, "dn_offset", w), "dn_offset", w)),
            since_sensing_date=(
                str(bo["since_sensing_date"]) if bo.get("since_sensing_date") else None
            ),
        )
    layouts = _parse_layouts(raw.get("file_layouts"), bands, where)
    product_name = raw.get("product_name")
    if product_name is not None:
        try:
            re.compile(str(product_name))
        except re.error as exc:
            raise CatalogError(f"{where}: key 'product_name' is not a valid regex: {exc}") from exc
    return Sensor(
        name=name,
        title=str(raw["title"]),
        calibrated=calibrated,
        resolution_m=tuple(float(_number(r, "resolution_m", where)) for r in res),
        bands=bands,
        dtypes=tuple(str(d) for d in raw.get("dtypes") or ()),
        fallback_method=fallback_method,
        fallback_percentile=fallback_pct,
        baseline_offset=baseline,
        autodetect=bool(raw.get("autodetect", False)),
        product_type=str(raw["product_type"]) if raw.get("product_type") else None,
        platform=str(raw.get("platform", "")),
        notes=" ".join(str(raw.get("notes", "")).split()),
        path=where,
        file_layouts=layouts,
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
    return sorted(p.stem for p in _catalog_dir().glob("*.yaml"))


@cache
def load_sensor(name: str) -> Sensor:
    """The catalog entry ``name``; an unknown name lists the known ones."""
    path = _catalog_dir() / f"{name}.yaml"
    if not name or "/" in name or "\\" in name or not path.is_file():
        raise CatalogError(f"unknown sensor {name!r}; known sensors: {', '.join(list_sensors())}")
    return load_sensor_file(path)


def all_sensors() -> list[Sensor]:
    """Every catalog entry, loaded and validated."""
    return [load_sensor(n) for n in list_sensors()]
