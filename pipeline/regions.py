"""Region catalogs: what a scheduled regional mapping run covers, read from YAML.

A region file (``catalogs/regions/<name>.yaml``) names an area of interest, the targets
to map, the sensor, where scenes come from, where outputs go and when to run. It is data
written by people, so it is treated as untrusted input:

- ``yaml.safe_load`` only: no Python tags, no object construction, no ``eval``.
- Unknown keys are errors, so a typo (``tragets``) fails loudly instead of silently
  using a default.
- Every path is *relative to a declared root* (``data``, ``project``, ``out``; see
  :class:`Roots`), and the resolved path, symlinks followed, must stay inside that root:
  a catalog cannot read ``/etc`` or write outside the output tree with ``..``, an
  absolute path or a symlink.
- Every error is a :class:`~pipeline.errors.CatalogError` naming the file and the key.

Scene sources: a local folder/glob of files (GeoTIFF, band folders), Zarr stores, or a
static STAC catalog read with pystac; all three can be filtered by acquisition date, and
STAC items also by ``eo:cloud_cover``. Local files carry no metadata we can trust for the
date, so it is read from the file name (``YYYYMMDD`` or a bare year, e.g. NAIP
``m_..._20190904.tif`` or ``1985.tif``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pyproj import CRS
from pyproj.exceptions import CRSError

from pipeline.catalog_io import check_keys, read_catalog_yaml
from pipeline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_TILE
from pipeline.errors import CatalogError
from pipeline.scene_kind import is_zarr_store

REPO = Path(__file__).resolve().parents[1]
CATALOG_DIR = REPO / "catalogs" / "regions"
SOURCE_TYPES = ("local", "zarr", "stac")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: Smallest tile a region catalog may ask for (px): less gives a model too little context.
_MIN_TILE = 64


# ----------------------------------------------------------------------------- roots


@dataclass(frozen=True)
class Roots:
    """Named folders that catalog paths are relative to (and may not leave).

    Defaults: ``data`` = ``SPEX_DATA_ROOT`` (else ``SPEX_SHARED_DATA``, else
    ``../shared/data`` next to the project), ``project`` = the project folder, ``out`` =
    ``SPEX_OUT_ROOT`` (else ``<project>/out``). Deployments set the environment; tests pass
    their own.
    """

    folders: Mapping[str, Path]

    @classmethod
    def default(cls) -> Roots:
        data = os.environ.get("SPEX_DATA_ROOT") or os.environ.get("SPEX_SHARED_DATA")
        return cls(
            {
                "data": Path(data) if data else REPO.parent / "shared" / "data",
                "project": REPO,
                "out": Path(os.environ.get("SPEX_OUT_ROOT") or REPO / "out"),
            }
        )

    def resolve(self, root: str, relative: str, where: str) -> Path:
        """``relative`` under root ``root``; raises if it is absolute or escapes the root."""
        if root not in self.folders:
            raise CatalogError(
                f"{where}: unknown root {root!r}; declared roots: {', '.join(sorted(self.folders))}"
            )
        rel = Path(str(relative))
        if rel.is_absolute() or ".." in rel.parts:
            raise CatalogError(
                f"{where}: path {relative!r} must be relative to root {root!r} without '..'"
            )
        base = Path(self.folders[root]).resolve()
        return self.check_inside(root, base / rel, where)

    def check_inside(self, root: str, path: Path, where: str) -> Path:
        """``path`` with symlinks resolved, if it lies inside root ``root``."""
        base = Path(self.folders[root]).resolve()
        real = path.resolve()
        if real != base and base not in real.parents:
            raise CatalogError(
                f"{where}: {path} resolves to {real}, outside root {root!r} ({base})"
            )
        return real


# ------------------------------------------------------------------------------ parts


@dataclass(frozen=True)
class Aoi:
    """Area of interest: a GeoJSON Polygon/MultiPolygon in ``crs`` (any pyproj CRS)."""

    crs: str
    geometry: dict[str, Any]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = zip(*_points(self.geometry), strict=True)
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class SceneSource:
    """Where scenes come from, and which of them a run takes."""

    type: str
    root: str
    path: str | None = None
    glob: str | None = None
    asset: str | None = None
    start: date | None = None
    end: date | None = None
    max_cloud_cover: float | None = None


@dataclass(frozen=True)
class Schedule:
    """When the deployment runs: a five-field cron expression in ``timezone``."""

    cron: str
    timezone: str = "UTC"
    active: bool = False


@dataclass(frozen=True)
class ExtractionOptions:
    """Per-scene extraction settings of the region's runs."""

    model: str = DEFAULT_MODEL
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class Region:
    """One validated region catalog."""

    name: str
    title: str
    aoi: Aoi
    targets: tuple[str, ...]
    sensor: str | None
    source: SceneSource
    output: Path
    schedule: Schedule
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    resolution: float | None = None
    max_concurrent: int = 2
    roots: Roots = field(default_factory=Roots.default, compare=False)
    catalog_path: Path | None = None
    # How the region's scenes are stored (bands, encoding, ...): the `open:` mapping,
    # passed to the extract-scene flow as parameters of the same names.
    open_options: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class SceneRef:
    """A scene a run will process; ``path`` is absolute and inside its root."""

    id: str
    path: str
    acquired: date | None
    cloud_cover: float | None = None


@dataclass(frozen=True)
class SceneSelection:
    """The scenes a run takes, and those it left out with the reason."""

    scenes: list[SceneRef]
    skipped: list[tuple[str, str]]


# --------------------------------------------------------------------------- helpers


def _points(geometry: Mapping[str, Any]) -> Iterable[tuple[float, float]]:
    coords = geometry["coordinates"]
    polygons = [coords] if geometry["type"] == "Polygon" else coords
    for polygon in polygons:
        for ring in polygon:
            for point in ring:
                yield float(point[0]), float(point[1])


def _date(value: Any, where: str) -> date | None:
    if value is None or isinstance(value, date):
        return value.date() if isinstance(value, datetime) else value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise CatalogError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from exc


def _crs(value: Any, where: str) -> str:
    try:
        CRS.from_user_input(value)
    except (CRSError, TypeError) as exc:
        raise CatalogError(f"{where}: {value!r} is not a coordinate reference system") from exc
    return str(value)


def _ring_ok(ring: Any) -> bool:
    return (
        isinstance(ring, list)
        and len(ring) >= 4
        and all(
            isinstance(p, list | tuple)
            and len(p) >= 2
            and all(isinstance(v, int | float) and math.isfinite(v) for v in p[:2])
            for p in ring
        )
        and list(ring[0][:2]) == list(ring[-1][:2])
    )


def _geometry(raw: Any, where: str) -> dict[str, Any]:
    """A Polygon/MultiPolygon from a geometry, Feature or FeatureCollection."""
    if isinstance(raw, Mapping) and raw.get("type") == "Feature":
        return _geometry(raw.get("geometry"), where)
    if isinstance(raw, Mapping) and raw.get("type") == "FeatureCollection":
        parts: list[Any] = []
        for feature in raw.get("features") or []:
            g = _geometry(feature, where)
            parts.extend([g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"])
        if not parts:
            raise CatalogError(f"{where}: FeatureCollection has no polygon features")
        return {"type": "MultiPolygon", "coordinates": parts}
    if not isinstance(raw, Mapping) or raw.get("type") not in ("Polygon", "MultiPolygon"):
        raise CatalogError(f"{where}: expected a GeoJSON Polygon or MultiPolygon")
    coords = raw.get("coordinates")
    polygons = [coords] if raw["type"] == "Polygon" else coords
    if (
        not isinstance(polygons, list)
        or not polygons
        or not all(
            isinstance(poly, list) and poly and all(_ring_ok(r) for r in poly) for poly in polygons
        )
    ):
        raise CatalogError(
            f"{where}: polygon rings must be closed lists of >= 4 [x, y] number pairs"
        )
    return {"type": raw["type"], "coordinates": coords}


def _aoi(raw: Any, where: str) -> Aoi:
    check_keys(raw, where, allowed={"crs", "bbox", "geojson"}, needed={"crs"})
    crs = _crs(raw["crs"], f"{where}.crs")
    if ("bbox" in raw) == ("geojson" in raw):
        raise CatalogError(f"{where}: give exactly one of bbox or geojson")
    if "bbox" in raw:
        box = raw["bbox"]
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in box)
            or not (box[0] < box[2] and box[1] < box[3])
        ):
            raise CatalogError(f"{where}.bbox: expected [xmin, ymin, xmax, ymax] with min < max")
        x0, y0, x1, y1 = (float(v) for v in box)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        return Aoi(crs, {"type": "Polygon", "coordinates": [ring]})
    return Aoi(crs, _geometry(raw["geojson"], f"{where}.geojson"))


# Five-field cron: minute hour day-of-month month day-of-week (names allowed).
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_NAMES = {
    3: {m: i + 1 for i, m in enumerate(_MONTHS)},
    4: {d: i for i, d in enumerate(_DAYS)},
}


def validate_cron(expr: str, where: str = "cron") -> str:
    """Check a five-field cron expression (``*``, lists, ranges, steps, names)."""
    fields = str(expr).split()
    if len(fields) != 5:
        raise CatalogError(f"{where}: {expr!r} needs 5 fields (minute hour day month weekday)")
    for k, (text, (label, lo, hi)) in enumerate(zip(fields, _CRON_FIELDS, strict=True)):
        names = _CRON_NAMES.get(k, {})

        def value(
            token: str,
            label: str = label,
            lo: int = lo,
            hi: int = hi,
            names: dict[str, int] = names,
        ) -> int:
            v = names.get(token.lower()) if token.isalpha() else None
            if v is None:
                if not token.isdigit():
                    raise CatalogError(f"{where}: {label} {token!r} in {expr!r} is not a number")
                v = int(token)
            if not lo <= v <= hi:
                raise CatalogError(f"{where}: {label} {v} in {expr!r} is outside {lo}-{hi}")
            return v

        for part in text.split(","):
            body, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise CatalogError(f"{where}: bad step {step!r} in {expr!r}")
            if body == "*":
                continue
            first, _, last = body.partition("-")
            if last and value(first) > value(last):
                raise CatalogError(f"{where}: empty range {body!r} in {expr!r}")
            value(first)
    return " ".join(fields)


def _source(raw: Any, roots: Roots, where: str) -> SceneSource:
    check_keys(
        raw,
        where,
        allowed={"type", "root", "path", "glob", "asset", "start", "end", "max_cloud_cover"},
        needed={"type", "root"},
    )
    kind = raw["type"]
    if kind not in SOURCE_TYPES:
        raise CatalogError(f"{where}.type: {kind!r} is not one of {', '.join(SOURCE_TYPES)}")
    path, pattern = raw.get("path"), raw.get("glob")
    if (path is None) == (pattern is None):
        raise CatalogError(f"{where}: give exactly one of path or glob")
    if kind == "stac" and path is None:
        raise CatalogError(f"{where}: a STAC source needs path (its catalog.json)")
    rel = str(path if path is not None else pattern)
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise CatalogError(
            f"{where}: {rel!r} must be relative to root {raw['root']!r} without '..'"
        )
    # The non-glob prefix must exist under the root; matches are checked again later.
    prefix = Path(rel.split("*")[0].split("?")[0].split("[")[0] or ".")
    roots.resolve(raw["root"], str(prefix), f"{where}.{'path' if path else 'glob'}")
    cloud = raw.get("max_cloud_cover")
    if cloud is not None and (not isinstance(cloud, int | float) or not 0 <= cloud <= 100):
        raise CatalogError(f"{where}.max_cloud_cover: expected a percentage 0-100")
    start, end = _date(raw.get("start"), f"{where}.start"), _date(raw.get("end"), f"{where}.end")
    if start and end and start > end:
        raise CatalogError(f"{where}: start {start} is after end {end}")
    return SceneSource(
        kind,
        raw["root"],
        path,
        pattern,
        raw.get("asset"),
        start,
        end,
        None if cloud is None else float(cloud),
    )


def _int(raw: Mapping[str, Any], key: str, default: int, lo: int, where: str) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise CatalogError(f"{where}.{key}: expected an integer >= {lo}, got {value!r}")
    return value


# ---------------------------------------------------------------------------- loading


def region_path(name: str, catalog_dir: Path = CATALOG_DIR) -> Path:
    """The catalog file of region ``name`` (names cannot contain path separators)."""
    if not _NAME.match(name):
        raise CatalogError(f"region name {name!r} must be lowercase letters, digits, '-' or '_'")
    path = catalog_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_regions(catalog_dir)) or "none"
        raise CatalogError(f"no region catalog {path}; known regions: {known}")
    return path


def list_regions(catalog_dir: Path = CATALOG_DIR) -> list[str]:
    """Names of the region catalogs in ``catalog_dir``."""
    return sorted(p.stem for p in catalog_dir.glob("*.yaml")) if catalog_dir.is_dir() else []


def load_region(
    name_or_path: str | Path, roots: Roots | None = None, catalog_dir: Path = CATALOG_DIR
) -> Region:
    """Load and validate a region by name (from ``catalog_dir``) or from a YAML path."""
    from pipeline.sensors import load_sensor
    from pipeline.targets import load_target

    roots = roots or Roots.default()
    text_path = Path(name_or_path)
    path = (
        text_path
        if text_path.suffix in (".yaml", ".yml")
        else region_path(str(name_or_path), catalog_dir)
    )
    where = path.name
    raw = read_catalog_yaml(path, "region")
    check_keys(
        raw,
        where,
        allowed={
            "name",
            "title",
            "aoi",
            "targets",
            "sensor",
            "scenes",
            "output",
            "schedule",
            "extraction",
            "resolution",
            "max_concurrent",
            "open",
        },
        needed={"name", "aoi", "targets", "scenes", "output", "schedule"},
    )
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise CatalogError(f"{where}.name: {name!r} must be lowercase letters, digits, - or _")
    targets = raw["targets"]
    if not isinstance(targets, list) or not targets:
        raise CatalogError(f"{where}.targets: expected a non-empty list")
    try:
        targets = tuple(dict.fromkeys(load_target(str(t)).name for t in targets))
        sensor = raw.get("sensor")
        if sensor is not None:
            sensor = load_sensor(str(sensor)).name
    except CatalogError as exc:
        raise CatalogError(f"{where}: {exc}") from exc
    output = raw["output"]
    check_keys(output, f"{where}.output", allowed={"root", "path"}, needed={"root", "path"})
    schedule = raw["schedule"]
    check_keys(
        schedule, f"{where}.schedule", allowed={"cron", "timezone", "active"}, needed={"cron"}
    )
    extraction = raw.get("extraction") or {}
    check_keys(
        extraction, f"{where}.extraction", allowed={"model", "tile", "overlap", "batch_size"}
    )
    options = ExtractionOptions(
        model=str(extraction.get("model", DEFAULT_MODEL)),
        tile=_int(extraction, "tile", DEFAULT_TILE, _MIN_TILE, f"{where}.extraction"),
        overlap=_int(extraction, "overlap", DEFAULT_OVERLAP, 0, f"{where}.extraction"),
        batch_size=_int(extraction, "batch_size", DEFAULT_BATCH_SIZE, 1, f"{where}.extraction"),
    )
    resolution = raw.get("resolution")
    if resolution is not None and (not isinstance(resolution, int | float) or resolution <= 0):
        raise CatalogError(f"{where}.resolution: expected a positive number (AOI CRS units)")
    return Region(
        name=name,
        title=str(raw.get("title") or name),
        aoi=_aoi(raw["aoi"], f"{where}.aoi"),
        targets=targets,
        sensor=sensor,
        source=_source(raw["scenes"], roots, f"{where}.scenes"),
        output=roots.resolve(str(output["root"]), str(output["path"]), f"{where}.output.path"),
        schedule=Schedule(
            cron=validate_cron(schedule["cron"], f"{where}.schedule.cron"),
            timezone=str(schedule.get("timezone", "UTC")),
            active=bool(schedule.get("active", False)),
        ),
        extraction=options,
        resolution=None if resolution is None else float(resolution),
        max_concurrent=_int(raw, "max_concurrent", 2, 1, where),
        roots=roots,
        catalog_path=path,
        open_options=_open_options(raw.get("open"), f"{where}.open"),
    )


def _open_options(raw: Any, where: str) -> dict[str, Any]:
    """The ``open:`` mapping: scene options (extract-scene flow parameters of the same
    names), less ``sensor`` (its own key) and ``resolution`` (the mosaic's, here)."""
    from pipeline.scene import OPEN_OPTIONS

    if raw is None:
        return {}
    return dict(check_keys(raw, where, allowed=set(OPEN_OPTIONS) - {"sensor", "resolution"}))


# ---------------------------------------------------------------------------- scenes


_YMD = re.compile(r"(?<!\d)((?:19|20)\d{2})(\d{2})(\d{2})(?!\d)")
_YEAR = re.compile(r"(?<!\d)((?:19|20)\d{2})(?!\d)")


def date_from_name(name: str) -> date | None:
    """Acquisition date in a file name: ``YYYYMMDD``, else a bare year (1 January)."""
    for m in _YMD.finditer(name):
        try:
            return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            continue
    year = _YEAR.search(name)
    return date(int(year.group(1)), 1, 1) if year else None


def _scene_id(path: Path) -> str:
    return path.name.removesuffix(".zarr") if path.is_dir() else path.stem


def _local_candidates(region: Region) -> list[SceneRef]:
    src = region.source
    base = Path(region.roots.folders[src.root]).resolve()
    where = f"{region.name}.scenes"
    if src.path is not None:
        matches = [region.roots.resolve(src.root, src.path, where)]
        if not matches[0].exists():
            raise CatalogError(f"{where}.path: {matches[0]} does not exist")
    else:
        matches = sorted(base.glob(str(src.glob)))
    refs = []
    for match in matches:
        real = region.roots.check_inside(src.root, match, where)
        if src.type == "zarr" and not is_zarr_store(real):
            raise CatalogError(f"{where}: {real} is not a Zarr store")
        refs.append(SceneRef(_scene_id(real), str(real), date_from_name(real.name)))
    return refs


def _stac_candidates(region: Region) -> list[SceneRef]:
    import pystac

    src = region.source
    where = f"{region.name}.scenes"
    catalog_file = region.roots.resolve(src.root, str(src.path), where)
    try:
        catalog = pystac.Catalog.from_file(str(catalog_file))
        items = list(catalog.get_items(recursive=True))
    except Exception as exc:  # pystac raises several types for broken catalogs
        raise CatalogError(f"{where}: cannot read STAC catalog {catalog_file}: {exc}") from exc
    refs = []
    for item in items:
        asset = (
            item.assets.get(src.asset)
            if src.asset
            else next(
                (a for a in item.assets.values() if "data" in (a.roles or [])),
                next(iter(item.assets.values()), None),
            )
        )
        if asset is None:
            raise CatalogError(f"{where}: STAC item {item.id} has no asset {src.asset!r}")
        href = Path(asset.get_absolute_href() or asset.href)
        real = region.roots.check_inside(src.root, href, f"{where} item {item.id}")
        acquired = item.datetime or item.common_metadata.start_datetime
        cloud = item.properties.get("eo:cloud_cover")
        refs.append(
            SceneRef(
                item.id,
                str(real),
                acquired.date() if acquired else None,
                None if cloud is None else float(cloud),
            )
        )
    return refs


def _intersects(scene: SceneRef, aoi: Aoi) -> bool | None:
    """Whether the scene's footprint meets the AOI's bounds; None when unknown."""
    import rasterio
    from rasterio.warp import transform_bounds

    try:
        with rasterio.open(scene.path) as src:
            if src.crs is None:
                return None
            left, bottom, right, top = transform_bounds(src.crs, aoi.crs, *src.bounds)
    except Exception:  # unreadable here: let extraction report it clearly
        return None
    x0, y0, x1, y1 = aoi.bounds
    return not (right <= x0 or left >= x1 or top <= y0 or bottom >= y1)


def find_scenes(region: Region) -> SceneSelection:
    """The scenes of one run, oldest first, after date, cloud and footprint filters."""
    src = region.source
    refs = _stac_candidates(region) if src.type == "stac" else _local_candidates(region)
    scenes: list[SceneRef] = []
    skipped: list[tuple[str, str]] = []
    for ref in refs:
        if (src.start or src.end) and ref.acquired is None:
            skipped.append((ref.id, "no acquisition date, but the region filters by date"))
        elif src.start and ref.acquired and ref.acquired < src.start:
            skipped.append((ref.id, f"acquired {ref.acquired}, before {src.start}"))
        elif src.end and ref.acquired and ref.acquired > src.end:
            skipped.append((ref.id, f"acquired {ref.acquired}, after {src.end}"))
        elif (
            src.max_cloud_cover is not None
            and ref.cloud_cover is not None
            and ref.cloud_cover > src.max_cloud_cover
        ):
            skipped.append((ref.id, f"cloud cover {ref.cloud_cover:g}% > {src.max_cloud_cover:g}%"))
        elif _intersects(ref, region.aoi) is False:
            skipped.append((ref.id, "footprint does not meet the area of interest"))
        else:
            scenes.append(ref)
    ids = [s.id for s in scenes]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CatalogError(f"{region.name}: several scenes share the id(s) {', '.join(dupes)}")
    scenes.sort(key=lambda s: (s.acquired or date.min, s.id))
    return SceneSelection(scenes, skipped)
