"""What one regional run produced: the run report and the run's STAC collection.

Layout of a region's output folder (``region.output``)::

    scenes/                      per-scene extraction outputs, shared by all runs, so a
                                 weekly run only computes scenes it has not seen
    runs/<run_id>/
        <region>_<target>_mosaic.tif
        run_report.json / .md    area per target, change against the previous run,
                                 scenes used / skipped / failed
        stac/collection.json     every scene item and mosaic item of the run

Run ids sort by time (``YYYYmmddTHHMMSSZ``), so "the previous run" is simply the latest
run folder with a complete report whose id sorts before this one. A failed scene is
named in the report, in the mosaic's tags and in the collection's properties: an analyst
looking at any of them learns what the map is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pystac
from pystac.validation import JsonSchemaSTACValidator
from rasterio.warp import transform_bounds

from pipeline import __version__
from pipeline.errors import OutputError
from pipeline.locking import output_lock
from pipeline.markdown import markdown_table
from pipeline.mosaic import MosaicResult, compare_masks, mosaic_masks
from pipeline.outputs.atomic import atomic_write_text
from pipeline.outputs.stac import build_item
from pipeline.regions import Region, SceneRef, SceneSelection

RUN_REPORT = "run_report.json"
RUN_REPORT_MD = "run_report.md"
COLLECTION_DIR = "stac"


@dataclass(frozen=True)
class SceneOutcome:
    """How the extraction of one scene and target ended."""

    scene: SceneRef
    target: str
    outputs: Mapping[str, str | None] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.outputs is not None


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by time."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def scenes_dir(region: Region) -> Path:
    return region.output / "scenes"


def run_dir(region: Region, run_id: str) -> Path:
    return region.output / "runs" / run_id


def mosaic_path(region: Region, run_id: str, target: str) -> Path:
    return run_dir(region, run_id) / f"{region.name}_{target}_mosaic.tif"


def previous_run(region: Region, run_id: str) -> tuple[str, dict[str, Any]] | None:
    """The latest earlier run of this region with a complete report, if any."""
    runs = region.output / "runs"
    if not runs.is_dir():
        return None
    for folder in sorted((p for p in runs.iterdir() if p.is_dir()), reverse=True):
        report = folder / RUN_REPORT
        if folder.name < run_id and report.is_file():
            try:
                return folder.name, json.loads(report.read_text())
            except ValueError:
                continue  # a damaged report is not a baseline
    return None


def _r(value: float) -> float:
    return round(float(value), 2)


def _change(
    target: str, mosaic: MosaicResult, region: Region, previous: tuple[str, dict[str, Any]] | None
) -> dict[str, Any] | None:
    if previous is None:
        return None
    prev_id, prev = previous
    before = prev.get("targets", {}).get(target)
    if before is None:
        return {"previous_run": prev_id, "note": f"{target} was not mapped in that run"}
    prev_area = float(before["area_m2"])
    change: dict[str, Any] = {
        "previous_run": prev_id,
        "previous_area_m2": _r(prev_area),
        "delta_m2": _r(mosaic.stats.target_m2 - prev_area),
        "delta_percent": None
        if prev_area == 0
        else round(100.0 * (mosaic.stats.target_m2 - prev_area) / prev_area, 3),
    }
    prev_mosaic = run_dir(region, prev_id) / Path(before["mosaic"]).name
    pixels = compare_masks(prev_mosaic, mosaic.path) if prev_mosaic.is_file() else None
    if pixels is not None:
        change |= {k: _r(v) for k, v in pixels.items()}
    change["compared"] = "pixels and areas" if pixels is not None else "areas only"
    return change


def build_run_report(
    region: Region,
    run_id: str,
    selection: SceneSelection,
    outcomes: Sequence[SceneOutcome],
    mosaics: Mapping[str, MosaicResult],
    previous: tuple[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    """The run report as a JSON-ready dict (deterministic: no clock, no absolute paths)."""
    failed = [
        {"scene": o.scene.id, "target": o.target, "error": o.error} for o in outcomes if not o.ok
    ]
    targets: dict[str, Any] = {}
    for target, mosaic in mosaics.items():
        stats = mosaic.stats
        targets[target] = {
            "mosaic": mosaic.path.name,
            "area_m2": _r(stats.target_m2),
            "observed_m2": _r(stats.observed_m2),
            "nodata_m2": _r(stats.nodata_m2),
            "share_of_observed": None
            if stats.observed_m2 == 0
            else round(stats.target_m2 / stats.observed_m2, 6),
            "scenes_used": mosaic.scenes,
            "missing_scenes": mosaic.missing,
            "per_scene": [
                {"scene": s, "area_m2": _r(v["target_m2"]), "observed_m2": _r(v["observed_m2"])}
                for s, v in mosaic.stats.per_scene.items()
            ],
            "change": _change(target, mosaic, region, previous),
        }
    aoi_m2 = next(iter(mosaics.values())).stats.aoi_m2 if mosaics else None
    return {
        "report": "spex-regional-run",
        "software": f"spex-pipeline {__version__}",
        "region": region.name,
        "title": region.title,
        "run_id": run_id,
        "previous_run": previous[0] if previous else None,
        "aoi": {
            "crs": region.aoi.crs,
            "bounds": list(region.aoi.bounds),
            "area_m2": None if aoi_m2 is None else _r(aoi_m2),
        },
        "scenes": {
            "selected": [
                {"scene": s.id, "acquired": s.acquired.isoformat() if s.acquired else None}
                for s in selection.scenes
            ],
            "skipped": [{"scene": s, "reason": r} for s, r in selection.skipped],
            "failed": failed,
        },
        "status": "complete" if not failed else "partial" if mosaics else "failed",
        "targets": targets,
    }


def report_markdown(report: Mapping[str, Any]) -> str:
    """A short human summary of the run report (also the flow's artifact)."""
    lines = [f"# {report['title']}: run {report['run_id']}", ""]
    lines.append(f"Status: **{report['status']}**; previous run: {report['previous_run']}.")

    def km2(v: float | None) -> str:
        return "-" if v is None else f"{v / 1e6:.4f}"

    rows = []
    for target, t in report["targets"].items():
        ch = t["change"] or {}
        change = (ch.get(k) for k in ("delta_m2", "gained_m2", "lost_m2"))
        rows.append([target, km2(t["area_m2"]), km2(t["observed_m2"]), *map(km2, change)])
    header = ["target", "area (km2)", "observed (km2)", "change (km2)", "gained", "lost"]
    lines += ["", *markdown_table(header, rows)]
    failed = report["scenes"]["failed"]
    if failed:
        lines += ["", "## Missing scenes", ""]
        lines += [f"- {f['scene']} ({f['target']}): {f['error']}" for f in failed]
    used = report["scenes"]["selected"]
    lines += ["", f"Scenes selected: {len(used)}; skipped: {len(report['scenes']['skipped'])}."]
    return "\n".join(lines) + "\n"


def write_run_report(folder: Path, report: Mapping[str, Any]) -> Path:
    """Write ``run_report.json`` (last, so its presence means the run is complete) and .md."""
    atomic_write_text(folder / RUN_REPORT_MD, report_markdown(report))
    return atomic_write_text(folder / RUN_REPORT, json.dumps(report, indent=2, sort_keys=True))


def _absolute_assets(item: pystac.Item, base: Path) -> pystac.Item:
    for asset in item.assets.values():
        href = Path(asset.href)
        asset.href = str(href if href.is_absolute() else (base / href).resolve())
    return item


def _day(d: date | None) -> datetime | None:
    return None if d is None else datetime(d.year, d.month, d.day, tzinfo=UTC)


def build_collection(
    region: Region,
    run_id: str,
    outcomes: Sequence[SceneOutcome],
    mosaics: Mapping[str, MosaicResult],
    out_folder: Path,
) -> Path:
    """Write the run's STAC collection (self-contained, relative hrefs); returns its path."""
    items: list[pystac.Item] = []
    for o in outcomes:
        if not o.ok or not o.outputs or not o.outputs.get("stac"):
            continue
        stac_file = Path(str(o.outputs["stac"]))
        item = _absolute_assets(pystac.Item.from_file(str(stac_file)), stac_file.parent)
        item.clear_links()
        if o.scene.acquired:  # the catalog knows the date; file mtimes do not
            item.datetime = _day(o.scene.acquired)
        item.properties["spex:scene"] = o.scene.id
        items.append(item)
    newest = max((o.scene.acquired for o in outcomes if o.ok and o.scene.acquired), default=None)
    missing = sorted({o.scene.id for o in outcomes if not o.ok})
    for target, mosaic in mosaics.items():
        item = build_item(
            f"{region.name}_{target}_mosaic_{run_id}",
            mosaic.path,
            acquired=_day(newest) or datetime.now(UTC),
            assets={"mask": mosaic.path},
            properties={
                "spex:target": target,
                "spex:region": region.name,
                "spex:run_id": run_id,
                "spex:scenes": mosaic.scenes,
                "spex:missing_scenes": mosaic.missing,
            },
        )
        items.append(_absolute_assets(item, mosaic.path.parent))
    if not items:
        raise OutputError(f"run {run_id} of {region.name} produced nothing to catalogue")
    west, south, east, north = transform_bounds(region.aoi.crs, "EPSG:4326", *region.aoi.bounds)
    times = sorted(i.datetime for i in items if i.datetime)
    collection = pystac.Collection(
        id=f"{region.name}-{run_id}",
        description=f"SPEX regional mapping of {region.title}, run {run_id}",
        title=f"{region.title} ({run_id})",
        extent=pystac.Extent(
            pystac.SpatialExtent([[west, south, east, north]]),
            pystac.TemporalExtent([[times[0], times[-1]]]),
        ),
        license="other",
        extra_fields={"spex:targets": list(mosaics), "spex:missing_scenes": missing},
    )
    for item in items:
        collection.add_item(item)
    stac_dir = out_folder / COLLECTION_DIR
    collection.normalize_hrefs(str(stac_dir))
    collection.make_all_asset_hrefs_relative()
    validator = JsonSchemaSTACValidator()
    try:
        validator.validate_core(
            collection.to_dict(), pystac.STACObjectType.COLLECTION, pystac.get_stac_version()
        )
        for item in items:
            validator.validate_core(
                item.to_dict(), pystac.STACObjectType.ITEM, pystac.get_stac_version()
            )
    except pystac.STACValidationError as exc:
        raise OutputError(f"STAC collection of run {run_id} is invalid: {exc}") from exc
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return stac_dir / "collection.json"


def mosaic_inputs(
    outcomes: Sequence[SceneOutcome], target: str
) -> tuple[list[Any], list[dict[str, str]]]:
    """The masks of ``target`` newest first (the mosaic's priority), and what is missing."""
    from pipeline.mosaic import SceneMask

    done = [o for o in outcomes if o.target == target and o.ok and o.outputs]
    done.sort(key=lambda o: (o.scene.acquired or date.min, o.scene.id), reverse=True)
    masks = [
        SceneMask(
            o.scene.id,
            Path(str(o.outputs["mask"])),  # type: ignore[index]
            o.scene.acquired.isoformat() if o.scene.acquired else None,
        )
        for o in done
    ]
    missing = [
        {"scene": o.scene.id, "reason": str(o.error)}
        for o in outcomes
        if o.target == target and not o.ok
    ]
    return masks, missing


@dataclass(frozen=True)
class RunResult:
    """What :func:`finish_run` wrote: mosaics per target, collection, run report."""

    run_id: str
    folder: Path
    mosaics: dict[str, MosaicResult]
    collection: Path | None
    report: dict[str, Any]
    report_file: Path

    def summary(self) -> dict[str, Any]:
        """The flow's return value; an OutputError when no scene could be mapped."""
        failed = self.report["scenes"]["failed"]
        if not self.mosaics:
            first = f"; first error: {failed[0]['error']}" if failed else ""
            raise OutputError(
                f"region {self.report['region']}: no scene could be mapped in run "
                f"{self.run_id} ({len(self.report['scenes']['selected'])} selected{first}); "
                f"see {self.report_file}"
            )
        return {
            "run_id": self.run_id,
            "run_dir": str(self.folder),
            "report": str(self.report_file),
            "collection": str(self.collection) if self.collection else None,
            "mosaics": {t: str(m.path) for t, m in self.mosaics.items()},
            "failed": failed,
            "status": self.report["status"],
        }


def finish_run(
    region: Region, run_id: str, selection: SceneSelection, outcomes: Sequence[SceneOutcome]
) -> RunResult:
    """Mosaic every target of the run's outcomes, then write the STAC collection and the
    run report; one run of a region writes its mosaics at a time (the region's lock)."""
    folder = run_dir(region, run_id)
    with output_lock(region.output, f"region-{region.name}"):
        previous = previous_run(region, run_id)
        mosaics = {}
        for target in region.targets:
            masks, missing = mosaic_inputs(outcomes, target)
            if masks:
                mosaics[target] = mosaic_masks(
                    masks,
                    region.aoi,
                    mosaic_path(region, run_id, target),
                    resolution=region.resolution,
                    missing=missing,
                    tags={"SPEX_REGION": region.name, "SPEX_RUN_ID": run_id, "SPEX_TARGET": target},
                )
        collection = (
            build_collection(region, run_id, outcomes, mosaics, folder) if mosaics else None
        )
        report = build_run_report(region, run_id, selection, outcomes, mosaics, previous)
        report_file = write_run_report(folder, report)
    return RunResult(run_id, folder, mosaics, collection, report, report_file)
