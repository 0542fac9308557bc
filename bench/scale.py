"""Cost linear in area and memory flat: the same job on a scene and on one ~100x its area.

- index: ``--model index`` (spectral index + scene threshold) on a 4 x 4 VRT mosaic of
  the NAIP epochs (3736 x 2892, 10.8 Mpx) and on a 40 x 40 one (37360 x 28920, 1.08 Gpx).
- spex: the default SPEX model (``model/weights/default``) on a 4 x 4 VRT mosaic of the
  bundled Sentinel-2 sample (3072 x 3072, 9.4 Mpx) and on a 13 x 13 one (9984 x 9984,
  99.7 Mpx). ``--spex-partial K`` runs only K batches of the large SPEX job, spread evenly over
  its batch list, and projects the whole job: planning as measured, batches at the
  measured seconds per tile pixel, and finalise at the small job's seconds per
  megapixel (that step alone is then assumed linear). By default both jobs run whole.

Both mosaics of a pair are VRTs over the same real files (bench/scenes.py), so they differ
only in area. Each job runs in a fresh process (``spex extract``'s library path, default
outputs: mask COG, STAC item, quicklook, report) and reports the job's wall time (plan,
with the model load, + batches + finalise; interpreter start and imports, torch's
included, excluded), seconds per megapixel and the process's peak RSS. Targets: large /
small <= 1.1 for both.

Usage::

    .venv/bin/python bench/scale.py [--data ../shared/data] [--only index|spex]
        [--spex-partial K] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenes import BERLIN, build_vrt_mosaic, naip_epochs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "model" / "weights" / "default"
PAIRS = {
    # name: (sources, small n, large n, settings)
    "index": ("naip", (4, 4), (40, 40), {"model": "index", "sensor": "naip"}),
    "spex": ("berlin", (4, 4), (13, 13), {"model": str(DEFAULT_MODEL), "device": "cpu"}),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Plan, batches (all, or the first ``partial``) and finalise of one job, timed."""
    from pipeline.extract import ExtractionSettings, extraction_job, finalise, run_batches

    if spec["settings"]["model"] != "index":
        import model.inference  # noqa: F401  (torch: an import, not the job's work)
    settings = ExtractionSettings(target="water", **spec["settings"])
    rss_start = _rss_mib()
    t0 = time.perf_counter()
    with extraction_job(spec["scene"], settings, spec["out"]) as plan:
        t1 = time.perf_counter()
        batches = plan.pending_batches()
        todo = batches
        if spec.get("partial"):  # spread over the grid, so edge tiles are sampled too
            k = min(spec["partial"], len(batches))
            todo = [batches[i * len(batches) // k] for i in range(k)]
        run_batches(plan, todo)
        t2 = time.perf_counter()
        if len(todo) == len(batches):
            finalise(plan)
        t3 = time.perf_counter()
    return {
        "scene": spec["label"],
        "height": plan.grid.height,
        "width": plan.grid.width,
        "megapixels": plan.grid.height * plan.grid.width / 1e6,
        "tiles": len(plan.grid),
        "batches": len(batches),
        "batches_run": len(todo),
        "tile_px_run": sum(t.height * t.width for b in todo for t in b),
        "tile_px_all": sum(t.height * t.width for b in batches for t in b),
        "plan_s": t1 - t0,
        "batches_s": t2 - t1,
        "finalise_s": t3 - t2 if len(todo) == len(batches) else None,
        "rss_after_imports_mib": rss_start,
        "peak_rss_mib": _rss_mib(),
    }


def run_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--job", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise SystemExit(f"job {spec['label']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(name: str, small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Seconds per megapixel and peak RSS, large over small (projected when partial)."""
    small_job = small["plan_s"] + small["batches_s"] + small["finalise_s"]
    projected = large["finalise_s"] is None
    if projected:
        # batches at the measured seconds per tile pixel (tiles at the scene's edge are
        # smaller and cheaper, so a per-batch average would be biased)
        batches_s = large["batches_s"] / large["tile_px_run"] * large["tile_px_all"]
        finalise = small["finalise_s"] / small["megapixels"] * large["megapixels"]
        large_job = large["plan_s"] + batches_s + finalise
    else:
        large_job = large["plan_s"] + large["batches_s"] + large["finalise_s"]
    small_rate, large_rate = small_job / small["megapixels"], large_job / large["megapixels"]
    return {
        "pair": name,
        "small": small,
        "large": large,
        "small_job_s": small_job,
        "large_job_s": large_job,
        "large_projected": projected,
        "small_s_per_mpx": small_rate,
        "large_s_per_mpx": large_rate,
        "time_per_mpx_ratio": large_rate / small_rate,
        "peak_rss_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
    }


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        "| job | scene | Mpx | tiles | job s | s / Mpx | peak RSS MiB | large / small: "
        "s per Mpx | large / small: peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for which in ("small", "large"):
            job = r[which]
            seconds = r[f"{which}_job_s"]
            note = " (projected)" if which == "large" and r["large_projected"] else ""
            ratios = (
                f"| **{r['time_per_mpx_ratio']:.3f}** | **{r['peak_rss_ratio']:.3f}** |"
                if which == "large"
                else "| | |"
            )
            print(
                f"| {r['pair']} | {job['scene']} | {job['megapixels']:.1f} | {job['tiles']} "
                f"| {seconds:.1f}{note} | {r[f'{which}_s_per_mpx']:.4f} "
                f"| {job['peak_rss_mib']:.0f} {ratios}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--only", choices=sorted(PAIRS))
    ap.add_argument(
        "--spex-partial", type=int, help="run only this many batches of the large SPEX job"
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--job", help=argparse.SUPPRESS)  # internal: one job, print JSON
    args = ap.parse_args(argv)
    if args.job:
        print(json.dumps(run_job(json.loads(args.job))))
        return 0
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        for name, (kind, small_n, large_n, settings) in PAIRS.items():
            if args.only and name != args.only:
                continue
            files = naip_epochs(args.data) if kind == "naip" else [BERLIN]
            jobs = []
            partial_large = args.spex_partial if name == "spex" else None
            for size, partial in ((small_n, None), (large_n, partial_large)):
                label = f"{kind} {size[0]}x{size[1]} VRT"
                scene = build_vrt_mosaic(files, work / f"{kind}_{size[0]}x{size[1]}.vrt", *size)
                spec = {
                    "label": label,
                    "scene": str(scene),
                    "out": str(work / f"out-{name}-{size[0]}"),
                    "settings": settings,
                    "partial": partial,
                }
                print(f"running {name} on {label} ...", flush=True)
                jobs.append(run_subprocess(spec))
            rows.append(compare(name, *jobs))
    print_rows(rows)
    result = {
        "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "bench_seconds": time.perf_counter() - started,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
