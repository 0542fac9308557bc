"""Whole-scene extraction as three steps: plan, run tile batches, finalise.

The same three functions serve the ``spex extract`` command (run in-process with a
progress bar) and the ``extract-scene`` Prefect flow (batches as tasks, possibly on Dask
workers), so both write the same bytes:

1. :func:`plan_extraction` validates everything that can fail on the input (settings and
   device, scene path and file type, sensor, encoding and plausible reflectance, bands,
   geotransform, a read of every block, scene size, output folder) in
   :func:`check_job`, fits the extractor on the scene (e.g. one Otsu threshold from a
   decimated read) and opens or resumes the on-disk tile store. Nothing is written
   before validation has passed; :func:`check_job` alone writes nothing at all.
2. :func:`run_batch` reads a batch of tiles, runs the extractor and records each tile in
   the store. It only needs the picklable :class:`ExtractionPlan`, so any worker that
   sees the same filesystem can run it.
3. :func:`finalise` blends the store into the mask (and probability) COGs, checks each
   tile's description (when asked for: ``ExtractionSettings.describe``) against its
   window of the final mask, and writes the optional Zarr and polygons, the quicklook,
   the report and the STAC item.

Resume: the store records finished tiles, so rerunning the same job computes only the
missing ones; a job whose outputs are complete is a no-op unless ``force``.

All or nothing: finalise writes every file into a staging folder inside ``.spex-work``
and renames them into the output folder only when all of them are written, the done
record last; a job that fails on the way (a report that refuses the mask, a full disk)
leaves no final-named file, and the next run removes what an interrupted one left.

One job at a time: :func:`extraction_job` holds the job's lock from planning to the last
rename, so identical runs started together take turns (the later ones find the job done)
instead of computing the same tiles at once; different jobs into one folder do not wait
for each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipeline import __version__
from pipeline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_TILE
from pipeline.errors import SceneError, SceneReadError, SpexInputError
from pipeline.extractor import Extractor, TileBatch, TileResult, is_per_pixel
from pipeline.locking import output_lock
from pipeline.mask_codes import MASK_NODATA, MASK_OTHER, MASK_TARGET
from pipeline.memory import release_free_memory
from pipeline.outputs.atomic import (
    TEMP_MARK,
    atomic_write_text,
    ensure_writable_dir,
    fsync_dir,
)
from pipeline.outputs.cog import BandStyle, pam_sidecar, write_class_names
from pipeline.outputs.descriptions import check_descriptions
from pipeline.outputs.quicklook import (
    NODATA_COLOUR,
    OPAQUE,
    OTHER_COLOUR,
    overlay_colour,
    render_quicklook,
)
from pipeline.outputs.report import build_report, write_report
from pipeline.outputs.space import is_storage_error, probe_storage, storage_error
from pipeline.outputs.stac import build_item, description_properties, validate_item
from pipeline.product import ProductIdentity, identify_product, is_stac_item, stac_identity
from pipeline.scene import (
    check_path,
    check_valid,
    decimated_sample,
    open_scene,
    require_bands,
)
from pipeline.scene.windows import read_window
from pipeline.sensors import load_sensor
from pipeline.stitching import StoreMismatchError, TileStore
from pipeline.targets import load_target
from pipeline.tiling import Tile, TileGrid, plan_tiles

FORMATS = ("cog", "prob", "zarr", "gpkg", "parquet")
WORK_DIR = ".spex-work"
#: Inside WORK_DIR: one record per output name, saying which source owns it.
NAMES_DIR = "names"


def validate_device(device: str | None) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` where that device exists; one clear error otherwise.

    torch is imported only for a CUDA request (which needs it anyway), so a typo fails
    at once and ``cpu`` costs nothing."""
    if device is None or device == "cpu":
        return
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        raise SpexInputError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(m.group(1) or 0)
    if index >= count:
        have = f"cuda:0..cuda:{count - 1}" if count else "no CUDA device"
        raise SpexInputError(
            f"--device {device}: this machine has {have} (torch {torch.__version__}); "
            "use --device cpu" + (" or an existing cuda:N" if count else "")
        )


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything a user chooses for one extraction job (apart from scene and folder).

    ``sensor`` .. ``baseline`` describe the input (the ``--sensor``, ``--bands``,
    ``--encoding``, ``--level``, ``--scale``, ``--offset``, ``--nodata`` and ``--baseline``
    flags; see :func:`pipeline.scene.open_scene`). ``allow_small_scene`` lets a scene
    smaller than one tile run as a single tile of the scene's size (always so for a
    per-pixel extractor such as the index, whose result the tile size does not change;
    the tile shrinks; no
    padding is invented).
    """

    target: str
    model: str = DEFAULT_MODEL
    sensor: str | None = None
    bands: tuple[str, ...] | None = None
    encoding: str | None = None
    level: str | None = None
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    nodata: float | None = None
    baseline: str | None = None
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    allow_small_scene: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    formats: tuple[str, ...] = ("cog",)
    threshold: float = 0.5
    threshold_mode: str = "scene"
    device: str | None = None
    force: bool = False
    #: Polygon simplification tolerance in the mask CRS's units (0: exact pixel edges).
    simplify: float = 0.0
    #: Descriptions per tile, checked against the final mask (extractors that write text).
    describe: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise SpexInputError(
                f"unknown output format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)} "
                "with --format"
            )
        if self.batch_size < 1:
            raise SpexInputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.simplify >= 0:
            raise SpexInputError(f"--simplify must be >= 0 (map units), got {self.simplify}")
        if self.scale is not None and any(s <= 0 for s in self.scale):
            raise SpexInputError(f"--scale must be > 0, got {list(self.scale)}")
        validate_device(self.device)

    def open_kwargs(self) -> dict[str, Any]:
        """The :func:`pipeline.scene.open_scene` options these settings give."""
        kwargs: dict[str, Any] = {}
        for key in ("sensor", "encoding", "level", "nodata", "baseline"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        for key in ("bands", "scale", "offset"):
            if getattr(self, key):
                kwargs[key] = list(getattr(self, key))
        return kwargs


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
    gpkg: Path | None = None
    parquet: Path | None = None

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
            gpkg=out_dir / f"{stem}.gpkg" if "gpkg" in formats else None,
            parquet=out_dir / f"{stem}.parquet" if "parquet" in formats else None,
        )

    def summary(self) -> dict[str, str | None]:
        """The JSON line printed at the end of a job."""
        return {
            "mask": str(self.mask),
            "probability": str(self.probability) if self.probability else None,
            "zarr": str(self.zarr) if self.zarr else None,
            "gpkg": str(self.gpkg) if self.gpkg else None,
            "parquet": str(self.parquet) if self.parquet else None,
            "stac": str(self.stac),
            "quicklook": str(self.quicklook),
            "report": str(self.report),
        }

    def files(self) -> list[Path]:
        """Every final file (or store) of the job, in the order they are committed: data
        first (the mask with its class-names sidecar), then quicklook and reports, the
        STAC item (which lists them) last."""
        optional = [self.probability, self.zarr, self.gpkg, self.parquet]
        return [
            self.mask,
            pam_sidecar(self.mask),
            *(p for p in optional if p is not None),
            self.quicklook,
            self.report,
            self.report_md,
            self.stac,
        ]

    def all_exist(self) -> bool:
        return all(p.exists() for p in self.files())


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
    #: Where the output name came from and the acquisition date (see pipeline.product).
    product: dict[str, Any] = field(default_factory=dict)

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

    @property
    def staging_dir(self) -> Path:
        """Where finalise writes the files before renaming them into the output folder."""
        return self.store_path.with_suffix(".staging")

    @property
    def stem(self) -> str:
        return self.outputs.mask.stem


def load_extractor(
    model: str,
    threshold_mode: str = "scene",
    device: str | None = None,
    target: str | None = None,
    batch_size: int | None = None,
) -> Extractor:
    """The extractor named by ``--model`` (for ``target``, which 'default' may depend on);
    a model extractor runs ``batch_size`` tiles through the model at once (the job's
    batch, so ``--batch-size 16`` is one forward pass of 16 tiles; default its own).

    'index' / 'index-tile': the spectral-index extractor (scene / per-tile Otsu);
    'default': the model registry's promoted version, else the weights shipped in
    ``model/weights/default`` for the targets they serve, else 'index' (see
    :mod:`model.registry`); 'spex': the shipped SPEX weights for any target; a registry
    version such as 'v0002-1a2b3c4d'; or a checkpoint folder.
    """
    from model.registry import ModelRegistry
    from pipeline.index_extractor import IndexExtractor

    try:
        ref = ModelRegistry().resolve(model, target)
    except SpexInputError as exc:
        raise SpexInputError(
            f"model {model!r} is neither 'index', 'index-tile', 'default', 'spex', a "
            f"registered version nor an existing checkpoint folder ({exc})"
        ) from exc
    if ref.is_index:
        return IndexExtractor(threshold_mode=ref.threshold_mode or threshold_mode)  # type: ignore[arg-type]
    from model.inference import SpexExtractor

    assert ref.path is not None
    sized = {} if batch_size is None else {"batch_size": batch_size}
    return SpexExtractor.from_checkpoint(ref.path, device=device, **sized)


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
    for p in paths:
        check_path(p)  # a missing path or a FIFO fails here, by name, before any read
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


def _source_key(source: str | Path | Sequence[str | Path]) -> str:
    """Which input owns an output name: its resolved paths (not size or mtime, so a file
    replaced under the same path is the same product, resumed or refused as before)."""
    paths = [source] if isinstance(source, str | Path) else list(source)
    text = json.dumps(sorted(str(Path(p).resolve()) for p in paths))
    return hashlib.sha256(text.encode()).hexdigest()


def _single_file_tags(source: str | list[str]) -> dict[str, str]:
    """Metadata tags of a single raster file (product ids, sensing dates), else {}."""
    import rasterio

    if not isinstance(source, str) or Path(source).is_dir():
        return {}
    with contextlib.suppress(Exception), rasterio.open(source) as src:
        return {k: str(v) for k, v in src.tags().items()}
    return {}


def _identify(source: str | list[str], scene: xr.DataArray) -> ProductIdentity:
    sensor = scene.attrs.get("sensor")
    pattern = None
    if sensor:
        with contextlib.suppress(SpexInputError):
            pattern = load_sensor(str(sensor)).product_name
    prov = json.loads(scene.attrs.get("provenance", "{}"))
    sensed = prov.get("sensing_date")
    return identify_product(
        source,
        pattern=pattern,
        tags=_single_file_tags(source),
        sensed=date.fromisoformat(str(sensed)[:10]) if sensed else None,
    )


def _claim_name(out: Path, name: str, source_key: str) -> str:
    """``name``, or ``name-<hash>`` when another input already owns ``name`` in ``out``.

    The first input written under a name keeps it (a record in ``.spex-work/names``); a
    different input that arrives at the same name (two granules of one tile and time, two
    generic file names) gets a suffix from its source paths, so it never takes over or
    is refused as "another job". The same input always maps back to the same name.
    """
    record = out / WORK_DIR / NAMES_DIR / f"{name}.json"
    with output_lock(out, f"name-{name}"):
        if record.is_file():
            with contextlib.suppress(ValueError, OSError):
                owner = json.loads(record.read_text()).get("source_key")
                return name if owner == source_key else f"{name}-{source_key[:8]}"
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({"name": name, "source_key": source_key}))
    return name


def check_output_location(out_dir: str | Path, source: str | Sequence[str]) -> None:
    """Refuse an output folder that cannot be one, before anything is written.

    ``--out`` inside a scene's own folder (a band-file folder or a Zarr store) would put
    the outputs among the scene's bands, where the next run reads them as input."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SpexInputError(f"--out {out} exists and is not a folder; choose a folder for --out")
    resolved = out.resolve()
    for p in [source] if isinstance(source, str) else list(source):
        scene = Path(p).resolve()
        if scene.is_dir() and (resolved == scene or scene in resolved.parents):
            raise SpexInputError(
                f"--out {out} is inside the scene folder {p}; the outputs would mix with the "
                "scene's own files: choose an --out outside it"
            )


@dataclass
class CheckedJob:
    """What :func:`check_job` established: everything planning needs, nothing written."""

    src: str | list[str]
    settings: ExtractionSettings
    open_kwargs: dict[str, Any]
    scene: xr.DataArray
    extractor: Extractor
    grid: TileGrid
    product: ProductIdentity


def check_job(
    source: str | Path | Sequence[str | Path],
    settings: ExtractionSettings,
    out_dir: str | Path,
    extractor: Extractor | None = None,
) -> CheckedJob:
    """Every input check of a job, writing nothing: settings, scene (path, sensor,
    encoding, plausible reflectance, bands), a read of every block (decimated sample),
    tile grid, output folder and the product's name. Raises a :class:`SpexInputError`
    naming the fix."""
    target = load_target(settings.target).name
    settings = replace(settings, target=target)
    src: str | list[str] = (
        str(source) if isinstance(source, str | Path) else [str(s) for s in source]
    )
    open_kwargs = settings.open_kwargs()
    check_output_location(out_dir, src)
    # The same cached lazy scene the batches of this process use: opened (and its
    # per-scene radiometry computed) once.
    scene = _open(src, open_kwargs)
    product = (
        stac_identity(src) if isinstance(src, str) and is_stac_item(src) else _identify(src, scene)
    )
    extractor = extractor or load_extractor(
        settings.model, settings.threshold_mode, settings.device, target, settings.batch_size
    )
    require_bands(scene, extractor.required_bands(target), f"{extractor.name} for {target}")
    grid = plan_tiles(
        scene.sizes["y"],
        scene.sizes["x"],
        settings.tile,
        # a per-pixel extractor gives shared pixels the same value in every tile:
        # overlapping tiles would only read and compute those pixels twice
        0 if is_per_pixel(extractor) else settings.overlap,
        # nor does a per-pixel extractor's result depend on the tile's size, so a scene
        # smaller than a tile is simply one smaller tile (a chip needs no flag)
        allow_smaller_scene=settings.allow_small_scene or is_per_pixel(extractor),
    )
    sample, _ = decimated_sample(scene)  # reads every block once: corrupt data fails here
    check_valid(sample, label=f"scene {product.name}")
    return CheckedJob(src, settings, open_kwargs, scene, extractor, grid, product)


def _prepare(
    source: str | Path | Sequence[str | Path],
    settings: ExtractionSettings,
    out_dir: str | Path,
    extractor: Extractor | None,
) -> ExtractionPlan:
    """Every input check (:func:`check_job`), the fitted extractor and the output names;
    writes nothing but the output folder's writability probe and the name record."""
    job = check_job(source, settings, out_dir, extractor)
    src, settings, scene, extractor = job.src, job.settings, job.scene, job.extractor
    target = settings.target
    extractor.fit_scene(scene, target)
    provenance = extractor.provenance()
    out = ensure_writable_dir(out_dir)  # the first write, after every input check
    name = _claim_name(out, job.product.name, _source_key(src))
    stem = f"{name}_{target}"
    scene_prov = json.loads(scene.attrs.get("provenance", "{}"))
    fingerprint = _fingerprint(
        {
            "source": _source_identity(src),
            "open": job.open_kwargs,
            "target": target,
            "tile": settings.tile,
            "overlap": job.grid.overlap,
            # Where it runs does not change what it computes: a job planned on a CPU
            # resumes on a GPU worker without recomputing finished tiles.
            "extractor": {k: v for k, v in provenance.items() if k != "device"},
            "software": __version__,
        }
    )
    return ExtractionPlan(
        source=src,
        scene_name=name,
        open_kwargs=job.open_kwargs,
        settings=settings,
        extractor=extractor,
        grid=job.grid,
        store_path=out / WORK_DIR / f"{stem}.tiles",
        fingerprint=fingerprint,
        outputs=OutputPaths.for_job(out, stem, settings.formats),
        scene_provenance=scene_prov,
        product={
            "name": name,
            "named_by": job.product.named_by,
            "acquired": job.product.acquired.isoformat() if job.product.acquired else None,
        },
    )


def _leftover_temps(plan: ExtractionPlan) -> list[Path]:
    """What an interrupted finalise of this job can leave: hidden temp files next to the
    final names (``.<stem>.spex-tmp-*``), ``finalise-*`` folders in the store, a staging
    folder and a half-written Zarr."""
    found: list[Path] = []
    for final in plan.outputs.files():
        found += final.parent.glob(f".{final.stem}{TEMP_MARK}*")
        found += final.parent.glob(f"{final.name}.tmp")
    found += plan.store_path.glob("finalise-*")
    found += TileStore.leftover_temps(plan.store_path)
    found += plan.store_path.parent.glob(f".{plan.store_path.name}{TEMP_MARK}*")
    if plan.staging_dir.exists():
        found.append(plan.staging_dir)
    return sorted(found)


def _remove_leftovers(plan: ExtractionPlan) -> None:
    """Remove what an interrupted run of this job left (call under the job's lock)."""
    for path in _leftover_temps(plan):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _open_store(plan: ExtractionPlan) -> ExtractionPlan:
    """Discard (``force``), find done, or create / resume the job's tile store."""
    settings, out = plan.settings, plan.outputs.mask.parent
    scene = _open(plan.source, plan.open_kwargs)
    with output_lock(out, plan.stem):  # another run of this output may be finalising
        _remove_leftovers(plan)
        if settings.force:
            shutil.rmtree(plan.store_path, ignore_errors=True)
            plan.done_record.unlink(missing_ok=True)
        elif _is_done(plan):
            plan.done = True
            return plan
        plan.store_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            TileStore.create_or_open(
                plan.store_path,
                plan.grid,
                scene.rio.crs,
                scene.rio.transform(),
                plan.fingerprint,
                force=False,
            )
        except StoreMismatchError as exc:
            raise StoreMismatchError(
                f"{out} holds an unfinished {plan.stem} job with other inputs or settings "
                f"({exc}). Rerun with --force to discard it, or choose another --out."
            ) from exc
    return plan


def plan_extraction(
    source: str | Path | Sequence[str | Path],
    settings: ExtractionSettings,
    out_dir: str | Path,
    extractor: Extractor | None = None,
) -> ExtractionPlan:
    """Validate the job, fit the extractor and open (or resume) its tile store.

    Does not hold the job for the caller: a caller that runs the whole job (and may race
    an identical one) uses :func:`extraction_job`.
    """
    return _open_store(_prepare(source, settings, out_dir, extractor))


def job_lock_name(stem: str) -> str:
    """Name of the lock a whole job holds (apart from the output lock of its files)."""
    return f"{stem}.job"


@contextlib.contextmanager
def extraction_job(
    source: str | Path | Sequence[str | Path],
    settings: ExtractionSettings,
    out_dir: str | Path,
    extractor: Extractor | None = None,
    *,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[ExtractionPlan]:
    """Plan the job and hold it for the ``with`` body (batches and finalise).

    An identical job already running makes this wait for it (``SPEX_LOCK_TIMEOUT``,
    default 600 s; ``on_wait`` is told who holds it) and then plan afresh, usually
    finding the job done; past the limit it fails with one clear
    :class:`~pipeline.locking.OutputLockedError`. Jobs with other names never wait.
    """
    prepared = _prepare(source, settings, out_dir, extractor)
    out = prepared.outputs.mask.parent
    with output_lock(out, job_lock_name(prepared.stem), on_wait=on_wait):
        yield _open_store(prepared)


def _is_done(plan: ExtractionPlan) -> bool:
    if not plan.done_record.is_file() or not plan.outputs.all_exist():
        return False
    record = json.loads(plan.done_record.read_text())
    # A finished job with or without descriptions is a different report, same masks.
    describe = record.get("describe", True)
    return record.get("fingerprint") == plan.fingerprint and describe == plan.settings.describe


def run_batch(plan: ExtractionPlan, tile_indices: Sequence[int]) -> int:
    """Compute and store the given tiles; returns how many were written."""
    tiles = [plan.grid[i] for i in tile_indices]
    batch = read_batch(plan, tiles)
    done = store_batch(plan, tiles, batch, plan.extractor.predict(batch))
    del batch
    release_free_memory()
    return done


def run_batches(
    plan: ExtractionPlan,
    batches: Sequence[Sequence[Tile]],
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Every batch in this process, as :func:`run_batch` would, with the I/O overlapped:
    while the extractor works on batch k, one thread reads batch k + 1 and another stores
    batch k - 1. Reading (GDAL decoding), compressing and writing tiles release the GIL,
    so on a model they hide behind compute, and on the index extractor they run side by
    side. At most three batches are held at once; a failure anywhere stops the loop once
    the batch being stored is whole (never a half-written tile)."""
    if not batches:
        return
    with (
        ThreadPoolExecutor(1, thread_name_prefix="spex-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="spex-store") as writer,
    ):
        reading: Future[TileBatch] = reader.submit(read_batch, plan, batches[0])
        storing: Future[int] | None = None
        for k, tiles in enumerate(batches):
            batch = reading.result()
            if k + 1 < len(batches):
                reading = reader.submit(read_batch, plan, batches[k + 1])
            result = plan.extractor.predict(batch)
            if storing is not None:
                _stored(storing, on_batch)
            storing = writer.submit(store_batch, plan, tiles, batch, result)
            del batch, result  # the store task holds them: freed once stored
        assert storing is not None
        _stored(storing, on_batch)


def _stored(storing: Future[int], on_batch: Callable[[int], None] | None) -> None:
    """Wait for a batch to be stored, hand its memory back, report it."""
    done = storing.result()
    release_free_memory()
    if on_batch:
        on_batch(done)


def read_batch(plan: ExtractionPlan, tiles: Sequence[Tile]) -> TileBatch:
    """The tiles' reflectance as one :class:`TileBatch` (valid: every band holds data)."""
    scene = _open(plan.source, plan.open_kwargs)
    bands = tuple(str(b) for b in scene["band"].values)
    pixels = np.stack([_read_tile(scene, t, plan.scene_name) for t in tiles])
    return TileBatch(
        pixels=pixels,
        valid=np.isfinite(pixels).all(axis=1),
        bands=bands,
        target=plan.settings.target,
        sensor=scene.attrs.get("sensor"),
        describe=plan.settings.describe,
    )


def store_batch(
    plan: ExtractionPlan, tiles: Sequence[Tile], batch: TileBatch, result: TileResult
) -> int:
    """Record a computed batch in the tile store (descriptions first); returns its size."""
    store = TileStore.open(plan.store_path, plan.fingerprint)
    texts_dir = plan.texts_dir
    # Shared: batches of one job write disjoint slots; planning and finalising wait.
    with output_lock(plan.outputs.mask.parent, plan.outputs.mask.stem, mode="shared"):
        try:
            if plan.settings.describe:
                # A record per tile, text or not (an index extractor writes none), so a
                # resumed job knows which tiles were computed with descriptions asked for.
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
            store.write_batch(tiles, result.probability, batch.valid)
        except (OSError, SpexInputError) as exc:
            if not is_storage_error(exc):
                raise
            needed = len(plan.grid) * plan.grid.tile_height * plan.grid.tile_width * 5
            raise storage_error(exc, plan.store_path, needed, "the tile store") from exc
    return len(tiles)


def _read_tile(scene: xr.DataArray, tile: Tile, name: str) -> np.ndarray:
    """A tile's reflectance; any read failure is a SceneReadError, so the tile is never
    recorded as done (the block reader raises driver errors instead of returning zeros)."""
    try:
        return read_window(scene, tile.rows, tile.cols)
    except SceneError:
        raise
    except OSError as exc:  # netCDF/Zarr backends report corrupt files this way
        raise SceneReadError(f"cannot read tile {tile.key} of scene {name}: {exc}") from exc


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
        "overlap": plan.grid.overlap,
        "stitching": "per-pixel, no blending" if is_per_pixel(plan.extractor) else "blended",
        "mask_threshold": plan.settings.threshold,
        "sensor": plan.scene_provenance.get("sensor"),
        "scene": plan.scene_provenance,
        "product": plan.product,
        "job_fingerprint": plan.fingerprint,
    }


def _acquired(plan: ExtractionPlan) -> datetime:
    """Acquisition time for STAC: from the product (STAC item, name, metadata), else the
    source's mtime."""
    sensed = plan.product.get("acquired") or plan.scene_provenance.get("sensing_date")
    if sensed:
        d = date.fromisoformat(str(sensed)[:10])
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    first = plan.source if isinstance(plan.source, str) else plan.source[0]
    mtime = Path(first).stat().st_mtime
    return datetime.fromtimestamp(int(mtime), tz=UTC)


def _descriptions(plan: ExtractionPlan, scene: xr.DataArray, mask: Path) -> list[dict[str, Any]]:
    """The tiles' texts, each checked against the finished ``mask`` (none without
    ``describe``: the text-only work is skipped)."""
    if not plan.settings.describe or not plan.texts_dir.is_dir():
        return []
    records = [json.loads(p.read_text()) for p in plan.texts_dir.glob("*.json")]
    records = sorted((r for r in records if r.get("text")), key=lambda r: (r["row"], r["col"]))
    return check_descriptions(records, mask, scene, plan.settings.target)


def finalise(plan: ExtractionPlan) -> dict[str, str | None]:
    """Blend the store into the final files; returns their paths (see OutputPaths).

    All or nothing (see the module docstring): on any error no final-named file of this
    job appears, and a full disk is reported with the file, the free space and the need.
    """
    outputs = plan.outputs
    if plan.done:
        return outputs.summary()
    with output_lock(outputs.mask.parent, outputs.mask.stem):
        return _finalise_locked(plan)


def _band_styles(target: str) -> dict[str, BandStyle]:
    """Mask: paletted (target in its quicklook colour, 'other' light grey; GeoTIFF colour
    maps hold no alpha, and nodata is transparent as declared nodata); probability:
    described as 0..1 with NaN nodata."""
    r, g, b, _ = overlay_colour(target)
    return {
        "mask": BandStyle(
            description=f"{target} mask ({MASK_TARGET} {target}, {MASK_OTHER} other, "
            f"{MASK_NODATA} nodata)",
            classes={MASK_OTHER: "other", MASK_TARGET: target, MASK_NODATA: "nodata"},
            colours={
                MASK_OTHER: OTHER_COLOUR,
                MASK_TARGET: (r, g, b, OPAQUE),
                MASK_NODATA: NODATA_COLOUR,
            },
        ),
        "probability": BandStyle(description=f"{target} probability (0-1, NaN nodata)"),
    }


def _space_needed(plan: ExtractionPlan) -> int:
    """Upper bound of the bytes finalise writes: uncompressed intermediates and COGs with
    overviews (x 4/3), the Zarr copy, polygons and small files."""
    pixels = plan.grid.height * plan.grid.width
    per_pixel = 1 + (4 if plan.outputs.probability else 0)
    rasters = 2 * pixels * per_pixel * 4 // 3
    extra = pixels * per_pixel if plan.outputs.zarr else 0
    return rasters + extra + (1 << 20)


def _finalise_locked(plan: ExtractionPlan) -> dict[str, str | None]:
    outputs = plan.outputs
    _remove_leftovers(plan)
    stage = plan.staging_dir
    stage.mkdir(parents=True)

    def staged(final: Path) -> Path:
        return stage / final.name

    current, what = outputs.mask, "the mask" + (" and probability" if outputs.probability else "")
    styles = _band_styles(plan.settings.target)
    try:
        store = TileStore.open(plan.store_path, plan.fingerprint)
        store.finalise(
            staged(outputs.mask),
            staged(outputs.probability) if outputs.probability else None,
            plan.settings.threshold,
            tags=_tags(plan),
            styles=styles,
            per_pixel=is_per_pixel(plan.extractor),
        )
        write_class_names(staged(outputs.mask), styles["mask"])
        scene = _open(plan.source, plan.open_kwargs)
        # The quicklook needs only the mask and the scene's (kept) decimated sample: it
        # renders in a thread (PNG encoding releases the GIL) beside the rest.
        with ThreadPoolExecutor(1, thread_name_prefix="spex-quicklook") as pool:
            rendering = pool.submit(
                render_quicklook,
                scene,
                staged(outputs.mask),
                plan.settings.target,
                staged(outputs.quicklook),
            )
            if outputs.zarr is not None:
                current, what = outputs.zarr, "the Zarr copy"
                _write_zarr(staged(outputs.zarr), staged(outputs.mask), plan)
            descriptions = _descriptions(plan, scene, staged(outputs.mask))
            what = "the polygons"
            for current in (p for p in (outputs.gpkg, outputs.parquet) if p is not None):
                _write_polygons(plan, store, staged, current, descriptions)
            current, what = outputs.report, "the report"
            report = build_report(
                staged(outputs.mask),
                target=plan.settings.target,
                scene_name=plan.scene_name,
                provenance=_provenance(plan),
                descriptions=descriptions,
                descriptions_requested=plan.settings.describe,
                mask_name=outputs.mask.name,
            )
            write_report(report, staged(outputs.report), staged(outputs.report_md))
            current, what = outputs.quicklook, "the quicklook"
            rendering.result()
        current, what = outputs.stac, "the STAC item"
        _write_stac(plan, staged, report)
        current, what = outputs.mask, "renaming the outputs into place"
        _commit(plan, staged)
    except Exception as exc:
        cause = exc if is_storage_error(exc) else probe_storage(stage)
        if cause is not None:
            raise storage_error(cause, current, _space_needed(plan), what) from exc
        if isinstance(exc, SpexInputError) and str(stage) in str(exc):
            # name the file the user will look for, not its staging copy
            text = str(exc).replace(str(stage), str(outputs.mask.parent))
            raise type(exc)(text) from exc
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return outputs.summary()


def _write_stac(
    plan: ExtractionPlan, staged: Callable[[Path], Path], report: dict[str, Any]
) -> None:
    """The STAC item over the staged files (names, sizes and checksums are final)."""
    outputs = plan.outputs
    keys = {
        "mask": outputs.mask,
        "probability": outputs.probability,
        "zarr": outputs.zarr,
        "gpkg": outputs.gpkg,
        "parquet": outputs.parquet,
        "quicklook": outputs.quicklook,
        "report": outputs.report,
        "report_md": outputs.report_md,
    }
    assets = {key: staged(path) for key, path in keys.items() if path is not None}
    properties = {f"spex:{k}": v for k, v in _provenance(plan).items()}
    properties |= description_properties(report)
    item = build_item(
        outputs.mask.stem,
        staged(outputs.mask),
        acquired=_acquired(plan),
        assets=assets,
        properties=properties,
    )
    validate_item(item)
    text = json.dumps(item.to_dict(include_self_link=False), indent=2, sort_keys=True)
    staged(outputs.stac).write_text(text, encoding="utf-8")


def _commit(plan: ExtractionPlan, staged: Callable[[Path], Path]) -> None:
    """Rename every staged file to its final name (the STAC item last), then record the
    job as done. A crash in here leaves whole files of this job only, and no done record,
    so the next run finalises again."""
    for final in plan.outputs.files():
        source = staged(final)
        if source.is_dir():
            shutil.rmtree(final, ignore_errors=True)
            os.rename(source, final)
        else:
            with open(source, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(source, final)
    fsync_dir(plan.outputs.mask.parent)
    record = {
        "fingerprint": plan.fingerprint,
        "describe": plan.settings.describe,
        "outputs": plan.outputs.summary(),
    }
    atomic_write_text(plan.done_record, json.dumps(record, indent=2))


def _write_polygons(
    plan: ExtractionPlan,
    store: TileStore,
    staged: Callable[[Path], Path],
    final: Path,
    descriptions: list[dict[str, Any]],
) -> None:
    """One polygon per extracted region, as GeoPackage or GeoParquet (``final``'s suffix)."""
    from pipeline.outputs.vector import PolygonSettings, write_polygons

    outputs = plan.outputs
    prob_cog = staged(outputs.probability) if outputs.probability else None
    write_polygons(
        staged(outputs.mask),
        staged(final),
        probability=prob_cog if prob_cog is not None else store.blend_window,
        settings=PolygonSettings(
            target=plan.settings.target,
            simplify=plan.settings.simplify,
            layer=outputs.mask.stem,
        ),
        grid=plan.grid,
        descriptions=descriptions,
    )


def _write_zarr(zarr_path: Path, mask: Path, plan: ExtractionPlan) -> None:
    """The mask (and probability) as a georeferenced Zarr store, streamed from the COGs
    (``mask`` and its ``_prob`` sibling, staged)."""
    import rioxarray

    layers = {"mask": mask}
    if plan.outputs.probability:
        layers["probability"] = mask.with_name(plan.outputs.probability.name)

    def layer(path: Path) -> xr.DataArray:
        opened = rioxarray.open_rasterio(path, chunks={"x": 1024, "y": 1024}, lock=False)
        assert isinstance(opened, xr.DataArray)  # one single-band GeoTIFF: one array
        return opened.squeeze("band", drop=True)

    dataset = xr.Dataset({name: layer(path) for name, path in layers.items()})
    dataset.attrs["spex_provenance"] = json.dumps(_provenance(plan), sort_keys=True)
    for var in dataset.data_vars.values():
        var.attrs.pop("_FillValue", None)
        var.encoding.clear()
    dataset.to_zarr(zarr_path, mode="w", consolidated=False)


def run_extraction(
    source: str | Path | Sequence[str | Path],
    settings: ExtractionSettings,
    out_dir: str | Path,
    *,
    on_batch: Callable[[int], None] | None = None,
    on_plan: Callable[[ExtractionPlan, int], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> dict[str, str | None]:
    """Plan, run every pending batch in this process, and finalise (the CLI path), holding
    the job throughout (see :func:`extraction_job`)."""
    with extraction_job(source, settings, out_dir, on_wait=on_wait) as plan:
        batches = plan.pending_batches()
        if on_plan:
            on_plan(plan, sum(len(b) for b in batches))
        run_batches(plan, batches, on_batch)
        return finalise(plan)
