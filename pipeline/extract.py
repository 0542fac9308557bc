"""Whole-scene extraction as three steps: plan, run tile batches, finalise.

The same three functions serve the ``spex extract`` command (run in-process with a
progress bar) and the ``extract-scene`` Prefect flow (batches as tasks, possibly on Dask
workers), so both write the same bytes:

1. :func:`plan_extraction` validates everything that can fail on the input (target,
   bands, scene size, output folder), fits the extractor on the scene (e.g. one Otsu
   threshold from a decimated read) and opens or resumes the on-disk tile store. Nothing
   is written before validation has passed.
2. :func:`run_batch` reads a batch of tiles, runs the extractor and records each tile in
   the store. It only needs the picklable :class:`ExtractionPlan`, so any worker that
   sees the same filesystem can run it.
3. :func:`finalise` blends the store into the mask (and probability) COGs, checks each
   tile's description (when asked for: ``ExtractionSettings.describe``) against its
   window of the final mask, and writes the optional Zarr, the quicklook, the report
   and the STAC item, each atomically.

Resume: the store records finished tiles, so rerunning the same job computes only the
missing ones; a job whose outputs are complete is a no-op unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipeline import __version__
from pipeline.errors import SpexInputError
from pipeline.extractor import Extractor, TileBatch
from pipeline.locking import output_lock
from pipeline.outputs.atomic import atomic_path, atomic_write_text, ensure_writable_dir
from pipeline.outputs.descriptions import check_descriptions
from pipeline.outputs.quicklook import render_quicklook
from pipeline.outputs.report import build_report, write_report
from pipeline.outputs.stac import build_item, description_properties, validate_item
from pipeline.scene import check_valid, decimated_sample, open_scene, require_bands
from pipeline.stitching import TileStore
from pipeline.targets import load_target
from pipeline.tiling import Tile, TileGrid, plan_tiles

FORMATS = ("cog", "prob", "zarr")
WORK_DIR = ".spex-work"


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything a user chooses for one extraction job (apart from scene and folder)."""

    target: str
    model: str = "index"
    sensor: str | None = None
    bands: tuple[str, ...] | None = None
    tile: int = 512
    overlap: int = 64
    batch_size: int = 4
    formats: tuple[str, ...] = ("cog",)
    threshold: float = 0.5
    threshold_mode: str = "scene"
    device: str | None = None
    force: bool = False
    # Descriptions per tile, checked against the final mask (extractors that write text).
    describe: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise SpexInputError(
                f"unknown output format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}"
            )
        if self.batch_size < 1:
            raise SpexInputError(f"batch size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class OutputPaths:
    """Final files of one scene and target, named ``<scene>_<target>*``."""

    mask: Path
    probability: Path | None
    zarr: Path | None
    stac: Path
    quicklook: Path
    report: Path
    report_md: Path

    @classmethod
    def for_job(cls, out_dir: Path, stem: str, formats: Sequence[str]) -> OutputPaths:
        return cls(
            mask=out_dir / f"{stem}.tif",
            probability=out_dir / f"{stem}_prob.tif" if "prob" in formats else None,
            zarr=out_dir / f"{stem}.zarr" if "zarr" in formats else None,
            stac=out_dir / f"{stem}.json",
            quicklook=out_dir / f"{stem}.png",
            report=out_dir / f"{stem}_report.json",
            report_md=out_dir / f"{stem}_report.md",
        )

    def summary(self) -> dict[str, str | None]:
        """The JSON line printed at the end of a job."""
        return {
            "mask": str(self.mask),
            "probability": str(self.probability) if self.probability else None,
            "zarr": str(self.zarr) if self.zarr else None,
            "stac": str(self.stac),
            "quicklook": str(self.quicklook),
            "report": str(self.report),
        }

    def all_exist(self) -> bool:
        return all(Path(p).exists() for p in self.summary().values() if p is not None)


@dataclass
class ExtractionPlan:
    """A validated, fitted job: picklable, so tile batches can run on any worker."""

    source: str | list[str]
    scene_name: str
    open_kwargs: dict[str, Any]
    settings: ExtractionSettings
    extractor: Extractor
    grid: TileGrid
    store_path: Path
    fingerprint: str
    outputs: OutputPaths
    scene_provenance: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    def pending_batches(self) -> list[tuple[Tile, ...]]:
        """Tile batches still to compute (all of them on a fresh job). When descriptions
        are asked for, a tile finished by an earlier run without them is pending too
        (its probabilities come out the same, and its text is written this time)."""
        if self.done:
            return []
        store = TileStore.open(self.store_path, self.fingerprint)
        finished = set(store.finished())
        if self.settings.describe:
            finished &= self.described_tiles()
        return self.grid.batches(self.settings.batch_size, skip=finished)

    @property
    def texts_dir(self) -> Path:
        """One ``<tile index>.json`` per tile computed with descriptions asked for."""
        return self.store_path / "texts"

    def described_tiles(self) -> set[int]:
        if not self.texts_dir.is_dir():
            return set()
        return {int(p.stem) for p in self.texts_dir.glob("*.json") if p.stem.isdigit()}

    @property
    def done_record(self) -> Path:
        return self.store_path.with_suffix(".done.json")


def scene_name(source: str | Path | Sequence[str | Path]) -> str:
    """Output stem of a scene: the file stem, or the folder name for band-file sets."""
    first = Path(source if isinstance(source, str | Path) else source[0])
    if not isinstance(source, str | Path):
        return first.parent.name or first.stem
    return first.name if first.is_dir() else first.stem.removesuffix(".zarr")


def load_extractor(
    model: str,
    threshold_mode: str = "scene",
    device: str | None = None,
    target: str | None = None,
) -> Extractor:
    """The extractor named by ``--model`` (for ``target``, which 'default' may depend on).

    'index' / 'index-tile': the spectral-index extractor (scene / per-tile Otsu);
    'default': the model registry's promoted version, else the weights shipped in
    ``model/weights/default`` for the targets they serve, else 'index' (see
    :mod:`model.registry`); a registry version such as 'v0002-1a2b3c4d'; or a
    checkpoint folder.
    """
    from pipeline.index_extractor import IndexExtractor

    if model in ("index", "index-tile"):
        mode = "tile" if model == "index-tile" else threshold_mode
        return IndexExtractor(threshold_mode=mode)  # type: ignore[arg-type]
    from model.registry import ModelRegistry

    if model == "default" or not Path(model).exists():
        try:
            model = ModelRegistry().resolve(model, target)
        except SpexInputError as exc:
            raise SpexInputError(
                f"model {model!r} is neither 'index', 'index-tile', 'default', a registered "
                f"version nor an existing checkpoint folder ({exc})"
            ) from exc
        if model == "index":
            return IndexExtractor(threshold_mode=threshold_mode)  # type: ignore[arg-type]
    from model.inference import SpexExtractor

    return SpexExtractor.from_checkpoint(Path(model), device=device)


def limit_compute_threads(concurrent_batches: int) -> int:
    """Give each of ``concurrent_batches`` batches running at once its share of the cores.

    torch uses every core per call by default; two batches in a thread pool on two cores
    then fight over them (measured 5-7x slower than one thread each). Returns the share.
    """
    share = max(1, (os.cpu_count() or 1) // max(1, concurrent_batches))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(share)
    return share


def _source_identity(source: str | Sequence[str]) -> list[dict[str, Any]]:
    """What identifies the input files for resume: resolved path, size and mtime."""
    paths = [Path(source)] if isinstance(source, str) else [Path(s) for s in source]
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return [
        {"path": str(f.resolve()), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
        for f in files
    ]


def _fingerprint(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=8)
def _open_cached(source: str | tuple[str, ...], open_json: str, identity_json: str) -> xr.DataArray:
    """One lazy scene per process and input: the batches a worker runs share it, and a
    file replaced under the same name (``identity_json`` changes) is opened afresh."""
    kwargs = json.loads(open_json)
    src: str | list[str] = list(source) if isinstance(source, tuple) else source
    return open_scene(src, **kwargs)


def _open(source: str | list[str], open_kwargs: dict[str, Any]) -> xr.DataArray:
    return _open_cached(
        tuple(source) if isinstance(source, list) else source,
        json.dumps(open_kwargs, sort_keys=True),
        json.dumps(_source_identity(source), sort_keys=True),
    )


def plan_extraction(
    source: str | Path | Sequence[str | Path],
    settings: ExtractionSettings,
    out_dir: str | Path,
    extractor: Extractor | None = None,
) -> ExtractionPlan:
    """Validate the job, fit the extractor and open (or resume) its tile store."""
    target = load_target(settings.target).name
    settings = replace(settings, target=target)
    src: str | list[str] = (
        str(source) if isinstance(source, str | Path) else [str(s) for s in source]
    )
    open_kwargs: dict[str, Any] = {}
    if settings.sensor:
        open_kwargs["sensor"] = settings.sensor
    if settings.bands:
        open_kwargs["bands"] = list(settings.bands)
    # The same cached lazy scene the batches of this process use: opened (and its
    # per-scene radiometry computed) once.
    scene = _open(src, open_kwargs)
    extractor = extractor or load_extractor(
        settings.model, settings.threshold_mode, settings.device, target
    )
    require_bands(scene, extractor.required_bands(target), f"{extractor.name} for {target}")
    grid = plan_tiles(scene.sizes["y"], scene.sizes["x"], settings.tile, settings.overlap)
    sample, _ = decimated_sample(scene)
    check_valid(sample, label=f"scene {scene_name(src)}")
    extractor.fit_scene(scene, target)
    provenance = extractor.provenance()
    out = ensure_writable_dir(out_dir)  # the first write, after every input check
    stem = f"{scene_name(src)}_{target}"
    scene_prov = json.loads(scene.attrs.get("provenance", "{}"))
    fingerprint = _fingerprint(
        {
            "source": _source_identity(src),
            "open": open_kwargs,
            "target": target,
            "tile": settings.tile,
            "overlap": settings.overlap,
            # Where it runs does not change what it computes: a job planned on a CPU
            # resumes on a GPU worker without recomputing finished tiles.
            "extractor": {k: v for k, v in provenance.items() if k != "device"},
            "software": __version__,
        }
    )
    store_path = out / WORK_DIR / f"{stem}.zarr"
    plan = ExtractionPlan(
        source=src,
        scene_name=scene_name(src),
        open_kwargs=open_kwargs,
        settings=settings,
        extractor=extractor,
        grid=grid,
        store_path=store_path,
        fingerprint=fingerprint,
        outputs=OutputPaths.for_job(out, stem, settings.formats),
        scene_provenance=scene_prov,
    )
    with output_lock(out, stem):  # another run of this output may be finalising
        if settings.force:
            shutil.rmtree(store_path, ignore_errors=True)
            plan.done_record.unlink(missing_ok=True)
        elif _is_done(plan):
            plan.done = True
            return plan
        store_path.parent.mkdir(parents=True, exist_ok=True)
        TileStore.create_or_open(
            store_path, grid, scene.rio.crs, scene.rio.transform(), fingerprint, force=False
        )
    return plan


def _is_done(plan: ExtractionPlan) -> bool:
    if not plan.done_record.is_file() or not plan.outputs.all_exist():
        return False
    record = json.loads(plan.done_record.read_text())
    # A finished job with or without descriptions is a different report, same masks.
    describe = record.get("describe", True)
    return record.get("fingerprint") == plan.fingerprint and describe == plan.settings.describe


def run_batch(plan: ExtractionPlan, tile_indices: Sequence[int]) -> int:
    """Compute and store the given tiles; returns how many were written."""
    scene = _open(plan.source, plan.open_kwargs)
    store = TileStore.open(plan.store_path, plan.fingerprint)
    tiles = [plan.grid[i] for i in tile_indices]
    bands = tuple(str(b) for b in scene["band"].values)
    pixels = np.stack(
        [
            np.asarray(
                scene[:, t.rows, t.cols].data.compute(scheduler="synchronous"), dtype=np.float32
            )
            for t in tiles
        ]
    )
    valid = np.isfinite(pixels).all(axis=1)
    batch = TileBatch(
        pixels=pixels,
        valid=valid,
        bands=bands,
        target=plan.settings.target,
        sensor=scene.attrs.get("sensor"),
        describe=plan.settings.describe,
    )
    result = plan.extractor.predict(batch)
    texts_dir = plan.texts_dir
    # Shared: batches of one job write disjoint slots; planning and finalising wait.
    with output_lock(plan.outputs.mask.parent, plan.outputs.mask.stem, mode="shared"):
        if plan.settings.describe:
            # A record per tile, text or not (an index extractor writes none), so a resumed
            # job knows which tiles were computed with descriptions asked for.
            texts_dir.mkdir(exist_ok=True)
            for tile, text in zip(tiles, result.texts, strict=True):
                record = {
                    "tile": tile.key,
                    "row": tile.row,
                    "col": tile.col,
                    "height": tile.height,
                    "width": tile.width,
                    "text": text,
                }
                atomic_write_text(texts_dir / f"{tile.index}.json", json.dumps(record))
        store.write_batch(tiles, result.probability, valid)
    return len(tiles)


def _tags(plan: ExtractionPlan) -> dict[str, str]:
    """Provenance as flat GeoTIFF metadata tags (strings)."""
    prov = _provenance(plan)
    return {
        f"SPEX_{k.upper()}": v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        for k, v in prov.items()
    }


def _provenance(plan: ExtractionPlan) -> dict[str, Any]:
    return {
        "software": f"spex-pipeline {__version__}",
        "target": plan.settings.target,
        "extractor": plan.extractor.provenance(),
        "tile": plan.settings.tile,
        "overlap": plan.settings.overlap,
        "mask_threshold": plan.settings.threshold,
        "sensor": plan.scene_provenance.get("sensor"),
        "scene": plan.scene_provenance,
        "job_fingerprint": plan.fingerprint,
    }


def _acquired(plan: ExtractionPlan) -> datetime:
    """Acquisition time for STAC: from the scene's metadata, else the source's mtime."""
    sensed = plan.scene_provenance.get("sensing_date")
    if sensed:
        d = date.fromisoformat(str(sensed)[:10])
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    first = plan.source if isinstance(plan.source, str) else plan.source[0]
    mtime = Path(first).stat().st_mtime
    return datetime.fromtimestamp(int(mtime), tz=UTC)


def _descriptions(plan: ExtractionPlan, scene: xr.DataArray) -> list[dict[str, Any]]:
    """The tiles' texts, each checked against the finished mask (none without
    ``describe``: the text-only work is skipped)."""
    if not plan.settings.describe or not plan.texts_dir.is_dir():
        return []
    records = [json.loads(p.read_text()) for p in plan.texts_dir.glob("*.json")]
    records = sorted((r for r in records if r.get("text")), key=lambda r: (r["row"], r["col"]))
    return check_descriptions(records, plan.outputs.mask, scene, plan.settings.target)


def finalise(plan: ExtractionPlan) -> dict[str, str | None]:
    """Blend the store into the final files; returns their paths (see OutputPaths)."""
    outputs = plan.outputs
    if plan.done:
        return outputs.summary()
    with output_lock(outputs.mask.parent, outputs.mask.stem):
        return _finalise_locked(plan)


def _finalise_locked(plan: ExtractionPlan) -> dict[str, str | None]:
    outputs = plan.outputs
    store = TileStore.open(plan.store_path, plan.fingerprint)
    store.finalise(outputs.mask, outputs.probability, plan.settings.threshold, tags=_tags(plan))
    scene = _open(plan.source, plan.open_kwargs)
    if outputs.zarr is not None:
        _write_zarr(outputs, plan)
    with atomic_path(outputs.quicklook) as tmp:
        render_quicklook(scene, outputs.mask, plan.settings.target, tmp)
    report = build_report(
        outputs.mask,
        target=plan.settings.target,
        scene_name=plan.scene_name,
        provenance=_provenance(plan),
        descriptions=_descriptions(plan, scene),
        descriptions_requested=plan.settings.describe,
    )
    with atomic_path(outputs.report) as json_tmp, atomic_path(outputs.report_md) as md_tmp:
        write_report(report, json_tmp, md_tmp)
    assets: dict[str, Path] = {"mask": outputs.mask}
    if outputs.probability:
        assets["probability"] = outputs.probability
    if outputs.zarr:
        assets["zarr"] = outputs.zarr
    assets |= {
        "quicklook": outputs.quicklook,
        "report": outputs.report,
        "report_md": outputs.report_md,
    }
    properties = {f"spex:{k}": v for k, v in _provenance(plan).items()}
    properties |= description_properties(report)
    item = build_item(
        outputs.mask.stem,
        outputs.mask,
        acquired=_acquired(plan),
        assets=assets,
        properties=properties,
    )
    validate_item(item)
    atomic_write_text(
        outputs.stac, json.dumps(item.to_dict(include_self_link=False), indent=2, sort_keys=True)
    )
    record = {
        "fingerprint": plan.fingerprint,
        "describe": plan.settings.describe,
        "outputs": outputs.summary(),
    }
    atomic_write_text(plan.done_record, json.dumps(record, indent=2))
    return outputs.summary()


def _write_zarr(outputs: OutputPaths, plan: ExtractionPlan) -> None:
    """The mask (and probability) as a georeferenced Zarr store, streamed from the COGs."""
    import rioxarray

    assert outputs.zarr is not None
    layers = {"mask": outputs.mask}
    if outputs.probability:
        layers["probability"] = outputs.probability
    dataset = xr.Dataset(
        {
            name: rioxarray.open_rasterio(path, chunks={"x": 1024, "y": 1024}, lock=False).squeeze(
                "band", drop=True
            )
            for name, path in layers.items()
        }
    )
    dataset.attrs["spex_provenance"] = json.dumps(_provenance(plan), sort_keys=True)
    for var in dataset.data_vars.values():
        var.attrs.pop("_FillValue", None)
        var.encoding.clear()
    tmp = outputs.zarr.with_name(outputs.zarr.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dataset.to_zarr(tmp, mode="w", consolidated=False)
        shutil.rmtree(outputs.zarr, ignore_errors=True)
        tmp.rename(outputs.zarr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_extraction(
    source: str | Path | Sequence[str | Path],
    settings: ExtractionSettings,
    out_dir: str | Path,
    *,
    on_batch: Callable[[int], None] | None = None,
    on_plan: Callable[[ExtractionPlan, int], None] | None = None,
) -> dict[str, str | None]:
    """Plan, run every pending batch in this process, and finalise (the CLI path)."""
    plan = plan_extraction(source, settings, out_dir)
    batches = plan.pending_batches()
    if on_plan:
        on_plan(plan, sum(len(b) for b in batches))
    for batch in batches:
        n = run_batch(plan, [t.index for t in batch])
        if on_batch:
            on_batch(n)
    return finalise(plan)


def settings_dict(settings: ExtractionSettings) -> dict[str, Any]:
    return asdict(settings)
