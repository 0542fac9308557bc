"""Whole-scene extraction job: overhead, memory, throughput and seams, in one run.

What the job adds around the extractor is the pipeline's cost; the extractor's own work
is the model's. So the figures are:

(a) overhead ratio = whole-job time (plan + every batch + finalise, in-process, batches
    read ahead and stored behind in threads as ``spex extract`` runs them) divided by the
    extractor's own compute time (``fit_scene`` + ``predict``, measured by a timing proxy
    that implements the Extractor protocol and forwards to the real one, so the job runs
    unmodified). Measured for the index extractor (cheap: the ratio is then all overhead)
    and, unless ``--no-model``, for the tiny SPEX model with random weights. The overhead
    is split into its parts by timers wrapped around the job's own functions (scene open,
    blending, COG conversion, quicklook, report, STAC); tile reads and store writes run
    in threads beside the extractor, so their thread time is reported apart.
(b) peak RSS (``ru_maxrss``) of a job on a real scene and on a 16x larger scene, each in
    a fresh subprocess, same tile size. The large scene is a 4x4 mosaic of the NAIP
    epochs (real pixels, one consistent grid and CRS; the epochs repeat cyclically).
    Target: large / small <= 1.2, i.e. memory does not grow with scene size.
(c) megapixels per second of the whole job for both scenes.
(d) seam check: with the scene-level threshold the stitched mask of small tiles
    (128 px, 16 px overlap) must equal the mask computed on the whole scene in memory
    (same index, same threshold, :func:`pipeline.apg.binary_mask`): 0 differing pixels,
    both on the per-pixel path (tiles without overlap, no blending: what the index
    extractor gets) and with the per-pixel flag off (overlapping tiles, blended: what any
    model gets). The per-tile threshold is shown beside them, to show the check can fail.

Usage::

    .venv/bin/python bench/extract.py [--data ../shared/data] [--json out.json] [--no-model]

About 3.5 minutes on 2 cores (the tiny SPEX model on the 16x scene takes ~2.3 of them);
about 30 s with ``--no-model``. Exits 1 if the seam check finds a differing pixel.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import rasterio
import xarray as xr
from scenes import NAIP, SCENE, build_mosaic, naip_epochs

from pipeline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE
from pipeline.extractor import Extractor, TileBatch, TileResult, is_per_pixel

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
TARGET = "water"
SEAM_TILE, SEAM_OVERLAP = 128, 16
SMALL_GDAL_CACHE_MB = 32


# ---------------------------------------------------------------- timing instruments


class TimedExtractor:
    """Forwards the Extractor protocol to ``inner`` and sums the seconds spent in it.

    Passed to ``plan_extraction(..., extractor=proxy)``, so the job code is the
    production path; only the time inside the extractor is set apart.
    """

    def __init__(self, inner: Extractor, per_pixel: bool | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        # forwarded, so the job plans and stitches as it would for ``inner``
        self.per_pixel = is_per_pixel(inner) if per_pixel is None else per_pixel
        self.seconds = {"fit_scene": 0.0, "predict": 0.0}
        self.rss_growth = {"fit_scene": 0.0, "predict": 0.0}
        self.tiles = 0

    def required_bands(self, target: str) -> tuple[str, ...]:
        return self.inner.required_bands(target)

    def fit_scene(self, scene: xr.DataArray, target: str) -> None:
        start, rss = time.perf_counter(), _max_rss_mib()
        self.inner.fit_scene(scene, target)
        self.seconds["fit_scene"] += time.perf_counter() - start
        self.rss_growth["fit_scene"] += _max_rss_mib() - rss

    def predict(self, batch: TileBatch) -> TileResult:
        start, rss = time.perf_counter(), _max_rss_mib()
        result = self.inner.predict(batch)
        self.seconds["predict"] += time.perf_counter() - start
        self.rss_growth["predict"] += _max_rss_mib() - rss
        self.tiles += batch.pixels.shape[0]
        return result

    def provenance(self) -> dict[str, Any]:
        return self.inner.provenance()

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@contextmanager
def timed_calls(
    targets: dict[str, tuple[Any, str]],
) -> Iterator[tuple[dict[str, float], dict[str, float]]]:
    """Wrap ``owner.attr`` for each label with a timer; yields (seconds, peak RSS growth).

    The job's own functions are timed where the job calls them (module globals of
    pipeline.extract / pipeline.stitching, TileStore methods), so nothing is re-implemented.
    The second dict attributes each rise of the process's peak RSS to the call during
    which it happened, which names the step that sets the job's memory ceiling.
    """
    seconds = dict.fromkeys(targets, 0.0)
    rss_growth = dict.fromkeys(targets, 0.0)
    originals: list[tuple[Any, str, Any]] = []

    def wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, rss = time.perf_counter(), _max_rss_mib()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start
                rss_growth[label] += _max_rss_mib() - rss

        return timed

    for label, (owner, attr) in targets.items():
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        originals.append((owner, attr, original))
        setattr(owner, attr, wrap(label, getattr(owner, attr)))
    try:
        yield seconds, rss_growth
    finally:
        for owner, attr, original in originals:
            setattr(owner, attr, original)


def _max_rss_mib() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- one job (subprocess)


def _make_extractor(kind: str, bands: tuple[str, ...]) -> Extractor:
    """'index': the scene-threshold index extractor; 'spex-tiny': tiny SPEX, random weights."""
    if kind == "index":
        from pipeline.index_extractor import IndexExtractor

        return IndexExtractor(threshold_mode="scene")
    import torch

    from model.config import tiny
    from model.inference import SpexExtractor
    from model.spex import SpexModel

    torch.manual_seed(0)
    return SpexExtractor(SpexModel(tiny(bands=bands)), device="cpu", batch_size=4)


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Plan + all batches + finalise of one scene, timed part by part, with peak RSS."""
    from pipeline import extract as job
    from pipeline import stitching
    from pipeline.extract import ExtractionSettings, finalise, plan_extraction, run_batches
    from pipeline.sensors import load_sensor
    from pipeline.stitching import TileStore

    rss_imports = _max_rss_mib()
    # Not open_scene: any read here would count towards the job's memory. The bands of a
    # NAIP file are the catalog's, in catalog order (4 unnamed bands, matched by count).
    bands = tuple(load_sensor(spec["sensor"]).codes)
    with rasterio.open(spec["source"]) as src:
        height, width = src.height, src.width
    proxy = TimedExtractor(_make_extractor(spec["extractor"], bands))
    rss_ready = _max_rss_mib()  # after imports and model construction, before the job
    settings = ExtractionSettings(
        target=TARGET,
        sensor=spec["sensor"],
        tile=spec["tile"],
        overlap=spec["overlap"],
        batch_size=spec["batch_size"],
    )
    parts = {
        "open_scene": (job, "open_scene"),
        "decimated_check": (job, "decimated_sample"),
        "tile_reads": (job, "read_batch"),
        "store_write": (job, "store_batch"),
        "blend_to_tiff": (TileStore, "_write_intermediate"),
        "cog_convert": (stitching, "to_cog"),
        "quicklook": (job, "render_quicklook"),
        "report": (job, "build_report"),
        "report_write": (job, "write_report"),
        "stac": (job, "build_item"),
        "stac_validate": (job, "validate_item"),
    }
    rss_stage: dict[str, float] = {}
    with timed_calls(parts) as (part_s, part_rss):
        t0 = time.perf_counter()
        plan = plan_extraction(spec["source"], settings, spec["out_dir"], extractor=proxy)
        t1 = time.perf_counter()
        rss_stage["plan"] = _max_rss_mib()
        run_batches(plan, plan.pending_batches())
        t2 = time.perf_counter()
        rss_stage["batches"] = _max_rss_mib()
        outputs = finalise(plan)
        t3 = time.perf_counter()
        rss_stage["finalise"] = _max_rss_mib()
    whole = t3 - t0
    stages = {"plan": t1 - t0, "batches": t2 - t1, "finalise": t3 - t2}
    overhead = {
        "plan_open_validate_store": stages["plan"]
        - proxy.seconds["fit_scene"]
        - part_s["decimated_check"],
        "plan_decimated_check": part_s["decimated_check"],
        # batches read ahead and are stored behind in threads (run_batches): their wall
        # time beyond the extractor's is what reading and storing did not hide
        "batches_not_overlapped": stages["batches"] - proxy.seconds["predict"],
        "finalise_blend_to_tiff": part_s["blend_to_tiff"],
        "finalise_cog": part_s["cog_convert"],
        "finalise_quicklook": part_s["quicklook"],
        "finalise_report": part_s["report"] + part_s["report_write"],
        "finalise_stac": part_s["stac"] + part_s["stac_validate"],
    }
    overhead["finalise_other"] = stages["finalise"] - sum(
        v for k, v in overhead.items() if k.startswith("finalise_")
    )
    megapixels = height * width / 1e6
    return {
        "label": spec["label"],
        "extractor": spec["extractor"],
        "height": height,
        "width": width,
        "megapixels": megapixels,
        "tile": spec["tile"],
        "overlap": spec["overlap"],
        "tiles": proxy.tiles,
        "whole_s": whole,
        "stages_s": stages,
        "extractor_s": proxy.seconds | {"total": proxy.total},
        "overhead_s": overhead,
        # thread time of the overlapped batch I/O (not additive with the wall times)
        "batch_io_thread_s": {
            "tile_reads": part_s["tile_reads"],
            "store_write": part_s["store_write"],
        },
        "ratio": whole / proxy.total,
        "mpx_per_s": megapixels / whole,
        "rss_after_imports_mib": rss_imports,
        "rss_before_job_mib": rss_ready,
        "peak_rss_mib": _max_rss_mib(),
        "peak_rss_after_stage_mib": rss_stage,
        "peak_rss_growth_by_part_mib": {
            k: v
            for k, v in (
                part_rss | {f"extractor_{k}": v for k, v in proxy.rss_growth.items()}
            ).items()
            if v > 0
        },
        "mask": outputs["mask"],
    }


def run_job_subprocess(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """One job in a fresh interpreter, so its peak RSS is its own (``env``: extra vars)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--job", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=os.environ | (env or {}),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"job {spec['label']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- inputs


# ---------------------------------------------------------------- (d) seams


def seam_check(source: Path, out_dir: Path) -> dict[str, Any]:
    """Stitched small-tile masks vs the whole-scene mask computed in memory."""
    from pipeline.apg import binary_mask
    from pipeline.extract import ExtractionSettings, finalise, plan_extraction, run_batches
    from pipeline.index_extractor import IndexExtractor
    from pipeline.indices import index_from_stack
    from pipeline.scene import open_scene
    from pipeline.targets import load_target

    scene = open_scene(source, sensor="naip")
    ref = IndexExtractor(threshold_mode="scene")
    ref.fit_scene(scene, TARGET)
    assert ref.index is not None
    pixels = np.asarray(scene.values, dtype=np.float32)
    bands = tuple(str(b) for b in scene["band"].values)
    index = index_from_stack(ref.index, pixels, bands)
    valid = np.isfinite(pixels).all(axis=0) & np.isfinite(index)
    whole = binary_mask(index, ref.threshold, load_target(TARGET).side, valid)
    result: dict[str, Any] = {
        "scene": source.name,
        "tile": SEAM_TILE,
        "overlap": SEAM_OVERLAP,
        "index": ref.index,
        "threshold": ref.threshold,
        "pixels": int(whole.size),
    }
    # scene threshold: per pixel (tiles without overlap, no blending: the default) and
    # with the per-pixel flag off (overlapping tiles, blended: what any model gets);
    # per-tile threshold: tiles disagree at their borders, to show the check has teeth
    for mode, model, per_pixel in (
        ("scene", "index", None),
        ("scene_blended", "index", False),
        ("tile", "index-tile", None),
    ):
        settings = ExtractionSettings(
            target=TARGET,
            sensor="naip",
            tile=SEAM_TILE,
            overlap=SEAM_OVERLAP,
            batch_size=16,
            model=model,
        )
        extractor = None
        if per_pixel is not None:
            extractor = TimedExtractor(IndexExtractor(threshold_mode="scene"), per_pixel)
        out = out_dir / f"seams-{mode}"
        plan = plan_extraction(source, settings, out, extractor=extractor)
        run_batches(plan, plan.pending_batches())
        paths = finalise(plan)
        with rasterio.open(paths["mask"]) as src:
            stitched = src.read(1)
        result[f"differing_{mode}_threshold"] = int((stitched != whole).sum())
        result[f"{mode}_overlap"] = plan.grid.overlap
    return result


# ---------------------------------------------------------------- report


def _fmt_parts(job: dict[str, Any]) -> list[str]:
    parts = sorted(job["overhead_s"].items(), key=lambda kv: -kv[1])
    total = job["whole_s"] - job["extractor_s"]["total"]
    return [f"    {k:<28}{v:8.2f} s {v / total:6.1%}" for k, v in parts if v >= 0.005]


def print_report(results: dict[str, Any]) -> None:
    jobs = results["jobs"]
    print("\n(a)(c) whole job vs extractor compute (tile 512, overlap 64, target water)")
    head = (
        f"{'job':<26}{'size':>11}{'tiles':>6}{'whole s':>9}{'extr s':>8}"
        f"{'ratio':>7}{'Mpx/s':>7}{'peak RSS':>10}{'RSS pre-job':>12}"
    )
    print(head)
    for j in jobs:
        print(
            f"{j['label']:<26}{j['width']:>5}x{j['height']:<5}{j['tiles']:>6}"
            f"{j['whole_s']:>9.2f}{j['extractor_s']['total']:>8.2f}{j['ratio']:>7.2f}"
            f"{j['mpx_per_s']:>7.2f}{j['peak_rss_mib']:>8.0f}MB"
            f"{j['rss_before_job_mib']:>10.0f}MB"
        )
    for j in jobs:
        print(
            f"  overhead of {j['label']} (whole - extractor = "
            f"{j['whole_s'] - j['extractor_s']['total']:.2f} s):"
        )
        print("\n".join(_fmt_parts(j)))
    for j in jobs:
        stages = j["peak_rss_after_stage_mib"]
        growth = ", ".join(
            f"{k} +{v:.0f}"
            for k, v in sorted(j["peak_rss_growth_by_part_mib"].items(), key=lambda kv: -kv[1])
        )
        print(
            f"  peak RSS of {j['label']}: pre-job {j['rss_before_job_mib']:.0f} MB, after plan "
            f"{stages['plan']:.0f}, batches {stages['batches']:.0f}, finalise "
            f"{stages['finalise']:.0f}; peak rises during: {growth or '-'}"
        )
    mem = results["memory"]
    print(
        f"\n(b) peak RSS, index extractor, tile 512: scene {mem['scene_mib']:.0f} MB, "
        f"16x area {mem['mosaic_mib']:.0f} MB, ratio {mem['ratio']:.2f} (target <= 1.2); "
        f"job's own growth above the post-import RSS: {mem['scene_job_mib']:.0f} MB vs "
        f"{mem['mosaic_job_mib']:.0f} MB"
    )
    print(
        f"    16x area with GDAL_CACHEMAX={mem['small_gdal_cache_mb']} MB: "
        f"{mem['mosaic_small_gdal_cache_mib']:.0f} MB "
        f"(ratio {mem['mosaic_small_gdal_cache_mib'] / mem['scene_mib']:.2f})"
    )
    s = results["seams"]
    print(
        f"\n(d) seams, {s['scene']} ({s['pixels']} px), tile {s['tile']} overlap "
        f"{s['overlap']}, {s['index']} threshold {s['threshold']:.4f}: differing pixels vs "
        f"the whole-scene mask: scene threshold {s['differing_scene_threshold']} "
        f"(per pixel, overlap {s['scene_overlap']}; must be 0), "
        f"{s['differing_scene_blended_threshold']} (blended, overlap "
        f"{s['scene_blended_overlap']}; must be 0); per-tile threshold "
        f"{s['differing_tile_threshold']} (for contrast)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--no-model", action="store_true", help="skip the tiny SPEX runs")
    ap.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job, print JSON
    args = ap.parse_args(argv)
    if args.job:
        print(json.dumps(run_job(json.loads(args.job))))
        return 0
    files = naip_epochs(args.data)
    scene = args.data / NAIP / SCENE
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        work = Path(tmp)
        mosaic = build_mosaic(files, work / "naip_mosaic_4x4.tif")
        kinds = ["index"] if args.no_model else ["index", "spex-tiny"]
        jobs, specs = [], []
        for kind in kinds:
            for label, src in (("scene", scene), ("mosaic 4x4", mosaic)):
                spec = {
                    "label": f"{kind} {label}",
                    "extractor": kind,
                    "source": str(src),
                    "sensor": "naip",
                    "tile": DEFAULT_TILE,
                    "overlap": DEFAULT_OVERLAP,
                    "batch_size": DEFAULT_BATCH_SIZE,
                    "out_dir": str(work / f"{kind}-{label.split()[0]}"),
                }
                print(f"running {spec['label']} ...", flush=True)
                jobs.append(run_job_subprocess(spec))
                specs.append(spec)
        # Diagnostic: how much of the growth is GDAL's block cache (default 5 % of RAM),
        # which fills with decompressed blocks as a bigger scene is read.
        print(f"running index mosaic 4x4 with GDAL_CACHEMAX={SMALL_GDAL_CACHE_MB} ...", flush=True)
        capped = run_job_subprocess(
            specs[1] | {"label": "index mosaic, small cache", "out_dir": str(work / "capped")},
            env={"GDAL_CACHEMAX": str(SMALL_GDAL_CACHE_MB)},
        )
        print("running seam check ...", flush=True)
        seams = seam_check(scene, work)
    small, large = jobs[0], jobs[1]
    results = {
        "command": "python bench/extract.py " + " ".join(sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "jobs": [{k: v for k, v in j.items() if k != "mask"} for j in jobs],
        "memory": {
            "scene_mib": small["peak_rss_mib"],
            "mosaic_mib": large["peak_rss_mib"],
            "ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
            "scene_job_mib": small["peak_rss_mib"] - small["rss_before_job_mib"],
            "mosaic_job_mib": large["peak_rss_mib"] - large["rss_before_job_mib"],
            "mosaic_small_gdal_cache_mib": capped["peak_rss_mib"],
            "small_gdal_cache_mb": SMALL_GDAL_CACHE_MB,
            "mosaic_small_gdal_cache_growth_by_part_mib": capped["peak_rss_growth_by_part_mib"],
        },
        "seams": seams,
        "bench_seconds": time.perf_counter() - started,
    }
    print_report(results)
    text = json.dumps(results, indent=2)
    print("\n" + text)
    if args.json:
        args.json.write_text(text + "\n")
    clean = seams["differing_scene_threshold"] == seams["differing_scene_blended_threshold"] == 0
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
