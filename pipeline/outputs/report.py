"""Scene-level region report: what was extracted, where, and how large, in words and numbers.

The analyst's question after an extraction job is rarely "show me the pixels" but "how
much water is there, and where are the big bodies?". This module answers it from the
finished uint8 mask (:mod:`pipeline.mask_codes`) alone, so it works the same for
every extractor (spectral index, MVPNet, SPEX) and can be rerun on an old output.

Choices, and why:

- **Regions and their attributes come from the APG** (:func:`pipeline.apg.extract_regions`,
  8-connectivity, area-descending order with scan-order ties, paper size classes and 3x3
  locations), applied to the *scene* frame: area ratio over the scene's H x W, centroid
  normalised by the scene size. A report therefore speaks the same vocabulary as the
  per-tile prompts the model saw, just at scene scale.
- **Areas in m2.** Projected CRS: pixel count x |det(transform)| x (CRS unit in metres)^2,
  i.e. planar area on the map grid (what QGIS's field calculator gives on that layer).
  Geographic CRS: a degree cell shrinks towards the poles, so each grid row gets its own
  cell area, measured as a geodesic polygon on the CRS's own ellipsoid (``pyproj.Geod``),
  and a region's area is the sum over its rows. Pixel count x "pixel area" would be
  meaningless there.
- **Bounded memory.** Connected-component labelling needs the whole mask in memory. Up to
  ``max_pixels`` (4 M by default: ~4 MB of uint8 plus ~32 MB of labels) the mask is read at
  full resolution; above it, the smallest power-of-two decimation that fits is read with
  nearest resampling. Power-of-two factors are exactly the COG's overview levels, so GDAL
  serves the read from an overview instead of touching every full-resolution block. The
  report states the analysis resolution ("analysed at 20 m from the 10 m mask") and
  scales areas by the analysed pixel size; small regions may merge or vanish there.
- **Deterministic output.** Floats are rounded at fixed decimals (map coordinates to the
  millimetre in projected CRSs, lon/lat to ~1 cm, areas to 0.01 m2), JSON keys are sorted
  and no clock or absolute path is recorded, so the same mask gives the same bytes, which
  makes reports diffable and cacheable.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.enums import Resampling

from pipeline.apg import MAX_REGIONS, RegionAttributes, extract_regions, label_regions
from pipeline.errors import OutputError, SceneError, SpexInputError
from pipeline.geodesy import crs_unit, row_cell_areas
from pipeline.markdown import markdown_table as _table
from pipeline.mask_codes import MASK_NODATA, MASK_OTHER, MASK_TARGET
from pipeline.outputs.descriptions import checked_markdown, summarise_descriptions
from pipeline.outputs.narrative import scene_distribution, scene_narrative
from pipeline.targets import load_target

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "REPORT_VERSION",
    "build_report",
    "report_to_json",
    "report_to_markdown",
    "write_report",
]

#: Version of the report layout; bump when keys change meaning. 2: the scene narrative,
#: the 3 x 3 distribution, checked descriptions and the truthfulness summary.
REPORT_VERSION = 2
#: Largest mask (pixels) analysed at full resolution; larger masks are decimated.
DEFAULT_MAX_PIXELS = 4_000_000

# Rounding, fixed so the report bytes never depend on float noise.
_AREA_DECIMALS = 2  # m2
_SHARE_DECIMALS = 6  # fractions
_NORM_DECIMALS = 4  # normalised scene coordinates
_LONLAT_DECIMALS = 7  # ~1 cm
_PROJECTED_DECIMALS = 3  # mm in metre CRSs
_GEOGRAPHIC_DECIMALS = 8  # map coordinates in degrees
_SIGNIFICANT = 10  # provenance floats and resolutions

# --------------------------------------------------------------------------- helpers


def _sig(value: float) -> float:
    """A float cut to ``_SIGNIFICANT`` significant digits (stable text, no float noise)."""
    return float(f"{value:.{_SIGNIFICANT}g}")


def _jsonable(value: Any) -> Any:
    """Plain JSON types for provenance and descriptions (numpy, tuples, paths, NaN -> None).

    Refuses what JSON cannot hold faithfully rather than ``str()``-ing it silently, so a
    provenance dict that would not round-trip is caught where it is built.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return _sig(f) if math.isfinite(f) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    raise SpexInputError(f"report value of type {type(value).__name__} is not JSON-serialisable")


def _crs_label(crs: CRS) -> str:
    """``EPSG:32633`` when the CRS (or, for a BOUNDCRS carrying TOWGS84, its source CRS)
    has an EPSG code, else the CRS name; the JSON adds the WKT when there is no code."""
    epsg = crs.to_epsg()
    if epsg is None and crs.is_bound and crs.source_crs is not None:
        epsg = crs.source_crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def _resolution(transform: Affine) -> tuple[float, float]:
    """Pixel size along columns and rows (positive, rotation-aware)."""
    return math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)


def _fmt_res(res: tuple[float, float], unit: str) -> str:
    x, y = (f"{v:.4g}" for v in res)
    return f"{x} {unit}" if x == y else f"{x} x {y} {unit}"


def _decimation(height: int, width: int, max_pixels: int) -> int:
    """Smallest power-of-two factor whose decimated grid holds at most ``max_pixels``."""
    if max_pixels < 1:
        raise SpexInputError(f"max_pixels must be >= 1, got {max_pixels}")
    factor = 1
    while math.ceil(height / factor) * math.ceil(width / factor) > max_pixels:
        factor *= 2
    return factor


# --------------------------------------------------------------------------- reading


def _read_mask(path: Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any], CRS, Affine, int]:
    """The mask (maybe decimated), facts about the file, its CRS, analysed transform, factor."""
    try:
        src = rasterio.open(path)
    except (rasterio.errors.RasterioIOError, OSError) as exc:
        raise SceneError(f"cannot open mask {path}: {exc}") from exc
    with src:
        if src.crs is None:
            raise SceneError(f"mask {path} has no CRS; a report needs map coordinates")
        if src.transform.is_identity:
            raise SceneError(f"mask {path} has no geotransform; a report needs map coordinates")
        if src.count < 1 or src.dtypes[0] != "uint8":
            raise SceneError(
                f"mask {path} must be a single-band uint8 raster ({MASK_TARGET} target, "
                f"{MASK_OTHER} other, {MASK_NODATA} nodata); got {src.count} band(s) of "
                f"{src.dtypes[0] if src.count else '-'}"
            )
        height, width = src.height, src.width
        factor = _decimation(height, width, max_pixels)
        out_h, out_w = math.ceil(height / factor), math.ceil(width / factor)
        if factor == 1:
            mask = src.read(1)
        else:
            mask = src.read(1, out_shape=(out_h, out_w), resampling=Resampling.nearest)
        transform = src.transform @ Affine.scale(width / out_w, height / out_h)
        crs = CRS.from_user_input(src.crs.to_wkt())
        facts = {
            "shape": [height, width],
            "transform": [_sig(v) for v in tuple(src.transform)[:6]],
            "nodata": None if src.nodata is None else _jsonable(src.nodata),
            "overviews": [int(v) for v in src.overviews(1)],
            "resolution": [_sig(v) for v in _resolution(src.transform)],
        }
    return np.ascontiguousarray(mask), facts, crs, transform, factor


# --------------------------------------------------------------------------- descriptions


def _normalise_descriptions(
    descriptions: Iterable[Mapping[str, Any]] | None,
) -> list[dict[str, Any]]:
    """Per-tile texts in one shape, sorted by tile position so the order is reproducible.

    Accepts ``tile_id``/``row_off``/``col_off``/``text`` (and the aliases ``tile``/``id``,
    ``row``/``col``), keeps optional ``height``/``width``; tiles without text are dropped
    because an empty entry tells the reader nothing.
    """
    out: list[dict[str, Any]] = []
    for i, item in enumerate(descriptions or ()):
        if not isinstance(item, Mapping):
            raise SpexInputError(f"description {i} must be a mapping, got {type(item).__name__}")
        text = item.get("text")
        if text is None or not str(text).strip():
            continue

        def pick(*keys: str, _item: Mapping[str, Any] = item) -> Any:
            for k in keys:
                if k in _item and _item[k] is not None:
                    return _item[k]
            return None

        tile_id, row, col = (
            pick("tile_id", "tile", "id"),
            pick("row_off", "row"),
            pick("col_off", "col"),
        )
        if row is None or col is None:
            raise SpexInputError(f"description {i} needs row_off and col_off (pixel offsets)")
        entry: dict[str, Any] = {
            "tile_id": str(tile_id) if tile_id is not None else f"y{int(row)}_x{int(col)}",
            "row_off": int(row),
            "col_off": int(col),
            "text": str(text).strip(),
        }
        for key in ("height", "width"):
            if item.get(key) is not None:
                entry[key] = int(item[key])
        for key in ("check", "facts"):  # pipeline.outputs.descriptions.check_descriptions
            if item.get(key) is not None:
                entry[key] = _jsonable(item[key])
        out.append(entry)
    out.sort(key=lambda d: (d["row_off"], d["col_off"], d["tile_id"]))
    return out


# --------------------------------------------------------------------------- report


def _region_entry(
    rank: int,
    region: RegionAttributes,
    *,
    transform: Affine,
    shape: tuple[int, int],
    area_m2: float,
    target_area: float,
    to_lonlat: Transformer,
    map_decimals: int,
    full_shape: tuple[int, int],
) -> dict[str, Any]:
    height, width = shape
    sy, sx = full_shape[0] / height, full_shape[1] / width  # analysed -> full-res pixels
    cx, cy = region.centroid
    # centroid: mean of pixel centres, in analysed pixel coordinates -> map -> lon/lat
    mx, my = transform @ (cx * width, cy * height)
    lon, lat = to_lonlat.transform(mx, my)
    (x0n, y0n), _, (x1n, y1n), _ = region.bbox
    c0, c1 = round(x0n * width), round(x1n * width)
    r0, r1 = round(y0n * height), round(y1n * height)
    corners = [transform @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    bbox_map = (min(xs), min(ys), max(xs), max(ys))
    bbox_ll = to_lonlat.transform_bounds(*bbox_map, densify_pts=21)
    return {
        "rank": rank,
        "area_m2": round(area_m2, _AREA_DECIMALS),
        "area_px_analysed": int(region.area_px or 0),
        "share_of_target": round(area_m2 / target_area, _SHARE_DECIMALS) if target_area else None,
        "area_ratio": round(float(region.area_ratio or 0.0), _SHARE_DECIMALS),
        "size_class": region.size,
        "location": region.location,
        "centroid_normalised": [round(cx, _NORM_DECIMALS), round(cy, _NORM_DECIMALS)],
        "centroid_map": [round(mx, map_decimals), round(my, map_decimals)],
        "centroid_lonlat": [round(lon, _LONLAT_DECIMALS), round(lat, _LONLAT_DECIMALS)],
        "bbox_map": [round(v, map_decimals) for v in bbox_map],
        "bbox_lonlat": [round(v, _LONLAT_DECIMALS) for v in bbox_ll],
        # window (row0, col0, row1, col1) in the full-resolution mask
        "bbox_pixels": [
            math.floor(r0 * sy + 1e-9),
            math.floor(c0 * sx + 1e-9),
            min(math.ceil(r1 * sy - 1e-9), full_shape[0]),
            min(math.ceil(c1 * sx - 1e-9), full_shape[1]),
        ],
    }


def build_report(
    mask_path: str | os.PathLike[str],
    *,
    target: str,
    scene_name: str,
    provenance: Mapping[str, Any],
    descriptions: Iterable[Mapping[str, Any]] | None = None,
    max_regions: int = MAX_REGIONS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mask_name: str | None = None,
    descriptions_requested: bool = True,
) -> dict[str, Any]:
    """Scene-level report of the regions in a finished mask (JSON-ready, deterministic).

    ``mask_path``: uint8 GeoTIFF/COG in the mask codes of :mod:`pipeline.mask_codes` (any
    value other than target and other counts as nodata), with CRS and transform.
    ``target`` names a target of ``catalogs/targets.yaml``. ``provenance`` is copied in
    (floats cut to 10 significant digits). ``descriptions``: per-tile texts from the
    extractor, see
    :func:`_normalise_descriptions`, optionally with their ``check`` against the final
    mask (:mod:`pipeline.outputs.descriptions`), summarised in ``truthfulness``;
    ``descriptions_requested`` False records that none was asked for (``--no-describe``).
    The ``narrative`` is a paragraph in words from the mask alone
    (:mod:`pipeline.outputs.narrative`). ``max_pixels``: the largest mask analysed at full
    resolution (see the module docstring). ``mask_name`` overrides the file name recorded
    (the job may build the report from a temporary name).
    """
    t = load_target(target)
    if max_regions < 0:
        raise SpexInputError(f"max_regions must be >= 0, got {max_regions}")
    path = Path(mask_path)
    mask, facts, crs, transform, factor = _read_mask(path, max_pixels)
    height, width = mask.shape
    unit, _ = crs_unit(crs)
    map_decimals = _GEOGRAPHIC_DECIMALS if crs.is_geographic else _PROJECTED_DECIMALS

    crs_label = _crs_label(crs)
    row_area, method = row_cell_areas(crs, transform, height, width, label=crs_label)
    is_target = mask == MASK_TARGET
    valid = is_target | (mask == MASK_OTHER)
    target_area = float(np.count_nonzero(is_target, axis=1) @ row_area)
    valid_area = float(np.count_nonzero(valid, axis=1) @ row_area)
    scene_area = float(row_area.sum() * width)
    nodata_area = max(scene_area - valid_area, 0.0)

    regions, n_total = extract_regions(mask, max_regions=max_regions)
    uniform = bool(np.all(row_area == row_area[0])) if height else True
    labels = None
    if regions and not uniform:
        labels, _ = label_regions(is_target)  # the labels extract_regions used
    distribution = scene_distribution(is_target, row_area)
    del is_target, valid

    to_lonlat = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    entries = []
    for rank, region in enumerate(regions, start=1):
        if labels is None:
            area = float(region.area_px or 0) * float(row_area[0]) if height else 0.0
        else:
            (_, y0n), _, (_, y1n), _ = region.bbox
            r0, r1 = round(y0n * height), round(y1n * height)
            rows = np.count_nonzero(labels[r0:r1] == region.label, axis=1)
            area = float(rows @ row_area[r0:r1])
        entries.append(
            _region_entry(
                rank,
                region,
                transform=transform,
                shape=(height, width),
                area_m2=area,
                target_area=target_area,
                to_lonlat=to_lonlat,
                map_decimals=map_decimals,
                full_shape=(facts["shape"][0], facts["shape"][1]),
            )
        )

    native_res = _resolution(Affine(*facts["transform"]))
    analysed_res = _resolution(transform)
    if factor == 1:
        note = f"analysed at full resolution ({_fmt_res(native_res, unit)})"
    else:
        note = (
            f"analysed at {_fmt_res(analysed_res, unit)} from the {_fmt_res(native_res, unit)} "
            f"mask (decimation {factor}, nearest); areas scaled to the analysed pixel size"
        )
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "scene": scene_name,
        "target": t.name,
        "category": t.category,
        "index": t.index,
        "mask": {
            "file": mask_name or path.name,
            "crs": crs_label,
            "crs_name": crs.name,
            **({} if crs_label.startswith("EPSG:") else {"crs_wkt": crs.to_wkt()}),
            "units": unit,
            **facts,
        },
        "analysis": {
            "full_resolution": factor == 1,
            "decimation": factor,
            "shape": [height, width],
            "resolution": [_sig(v) for v in analysed_res],
            "max_pixels": int(max_pixels),
            "area_method": method,
            "connectivity": 8,
            "note": note,
        },
        "totals": {
            "regions": int(n_total),
            "regions_listed": len(entries),
            "target_area_m2": round(target_area, _AREA_DECIMALS),
            "valid_area_m2": round(valid_area, _AREA_DECIMALS),
            "nodata_area_m2": round(nodata_area, _AREA_DECIMALS),
            "scene_area_m2": round(scene_area, _AREA_DECIMALS),
            "target_share_of_valid": (
                round(target_area / valid_area, _SHARE_DECIMALS) if valid_area else None
            ),
            "nodata_share": round(nodata_area / scene_area, _SHARE_DECIMALS)
            if scene_area
            else None,
        },
        "regions": entries,
        "distribution": distribution,
        "provenance": _jsonable(dict(provenance)),
        "descriptions_requested": bool(descriptions_requested),
        "descriptions": _normalise_descriptions(descriptions),
    }
    report["truthfulness"] = summarise_descriptions(report["descriptions"])
    report["narrative"] = scene_narrative(report)
    return report


# --------------------------------------------------------------------------- writers


def report_to_json(report: Mapping[str, Any]) -> str:
    """The report as JSON text: sorted keys, 2-space indent, UTF-8, trailing newline."""
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        rows: list[tuple[str, Any]] = []
        for k in sorted(value):
            rows.extend(_flatten(f"{prefix}.{k}" if prefix else str(k), value[k]))
        return rows
    return [(prefix, value)]


def report_to_markdown(report: Mapping[str, Any]) -> str:
    """A readable Markdown page: title, summary, regions, provenance, descriptions."""
    tot, mask, ana = report["totals"], report["mask"], report["analysis"]
    unit = mask["units"]
    dec = 8 if unit == "deg" else 1
    lines = [
        f"# {str(report['category']).capitalize()} regions in {report['scene']}",
        "",
        f"Target **{report['target']}** ({report['index']}), mask `{mask['file']}` "
        f"({mask['shape'][0]} x {mask['shape'][1]} px, {mask['crs']}). {ana['note'].capitalize()}.",
        "",
        "## The scene in words",
        "",
        report["narrative"],
        "",
        *_descriptions_markdown(report),
        "## Summary",
        "",
        *_table(
            ["quantity", "value"],
            [
                ["connected regions", f"{tot['regions']:,}"],
                [
                    "target area",
                    f"{tot['target_area_m2']:,.0f} m2 ({tot['target_area_m2'] / 1e6:,.3f} km2)",
                ],
                ["share of valid area", _pct(tot["target_share_of_valid"])],
                ["valid area", f"{tot['valid_area_m2']:,.0f} m2"],
                ["nodata share", _pct(tot["nodata_share"])],
                ["scene area", f"{tot['scene_area_m2']:,.0f} m2"],
                ["area method", ana["area_method"]],
            ],
        ),
        "",
        f"## Largest regions ({tot['regions_listed']} of {tot['regions']:,})",
        "",
    ]
    if report["regions"]:
        lines += _table(
            [
                "#",
                "area (m2)",
                "area (ha)",
                "share of target",
                "size class",
                "location",
                f"centroid x, y ({unit})",
                "centroid lon, lat",
                f"bbox xmin, ymin, xmax, ymax ({unit})",
            ],
            [
                [
                    r["rank"],
                    f"{r['area_m2']:,.0f}",
                    f"{r['area_m2'] / 1e4:,.2f}",
                    _pct(r["share_of_target"]),
                    r["size_class"],
                    r["location"],
                    ", ".join(f"{v:.{dec}f}" for v in r["centroid_map"]),
                    ", ".join(f"{v:.5f}" for v in r["centroid_lonlat"]),
                    ", ".join(f"{v:.{dec}f}" for v in r["bbox_map"]),
                ]
                for r in report["regions"]
            ],
        )
    else:
        lines.append(f"No {report['category']} region was extracted.")
    lines += ["", "## Provenance", ""]
    prov = _flatten("", report["provenance"])
    if prov and prov != [("", {})]:
        lines += _table(
            ["key", "value"],
            [[f"`{k}`", json.dumps(v, sort_keys=True, ensure_ascii=False)] for k, v in prov],
        )
    else:
        lines.append("No provenance recorded.")
    return "\n".join(lines).rstrip("\n") + "\n"


def _descriptions_markdown(report: Mapping[str, Any]) -> list[str]:
    """The tile descriptions, right after the narrative: checked ones with their verdict
    per sentence (a failed description is flagged, never shown as plain fact)."""
    lines = ["## Descriptions of the tiles", ""]
    if not report.get("descriptions_requested", True):
        return [*lines, "Descriptions were not requested (`--no-describe`).", ""]
    if not report["descriptions"]:
        return [*lines, "The extractor produced no descriptions.", ""]
    truth = report.get("truthfulness")
    if truth:
        share = truth["share_true"]
        lines += [
            "Each description was generated by the model for one tile and then checked "
            "against that tile's window of the final mask: "
            f"**{truth['statements_true']} of "
            f"{truth['statements_true'] + truth['statements_false']} checkable statements "
            f"are true ({_pct(share)})**, {truth['statements_unverifiable']} could not be "
            f"checked; {truth['descriptions_passed']} of {truth['descriptions']} "
            "descriptions pass. Statements marked false are not facts.",
            "",
        ]
    for d in report["descriptions"]:
        where = f"row {d['row_off']}, column {d['col_off']}"
        if "height" in d and "width" in d:
            where = (
                f"rows {d['row_off']}-{d['row_off'] + d['height'] - 1}, "
                f"columns {d['col_off']}-{d['col_off'] + d['width'] - 1}"
            )
        head = f"### Tile {d['tile_id']} ({where})"
        if d.get("check"):
            lines += [head, "", *checked_markdown(d), ""]
        else:
            lines += [
                head,
                "",
                *(f"> {line}" if line else ">" for line in d["text"].splitlines()),
                "",
            ]
    return lines


def write_report(
    report: Mapping[str, Any],
    json_path: str | os.PathLike[str],
    md_path: str | os.PathLike[str],
) -> tuple[Path, Path]:
    """Write the JSON and Markdown renderings to the given paths (UTF-8, ``\\n`` newlines).

    The caller decides where (the job passes temporary names and renames them atomically);
    the bytes depend only on ``report``.
    """
    out = []
    for path, text in (
        (Path(json_path), report_to_json(report)),
        (Path(md_path), report_to_markdown(report)),
    ):
        try:
            path.write_text(text, encoding="utf-8", newline="\n")
        except OSError as exc:
            raise OutputError(f"cannot write report {path}: {exc.strerror or exc}") from exc
        out.append(path)
    return out[0], out[1]
