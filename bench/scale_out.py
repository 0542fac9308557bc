"""Scale-out: one SPEX job on a Dask LocalCluster of 2 workers against 1 worker.

The job is the 100 Mpx one of ``bench/scale.py`` (the default SPEX model on a 13 x 13 VRT
mosaic of the bundled Sentinel-2 sample, 9984 x 9984, tile 512, overlap 64, batch 4).
It runs as the ``extract-scene`` flow runs it on a Dask cluster, without Prefect in the
way: the plan is made here, every pending batch is one ``pipeline.extract.run_batch``
task on the cluster (workers unpickle the plan, open the scene and load the model once
each), and finalise runs here when all are done. Each worker is a process with one
thread, and torch uses one thread in it, so 1 and 2 workers compute the same numbers.

Reported: wall time of the batches (cluster start and model loads excluded: a warm-up
task per worker loads both first), the speed-up 1 -> 2 workers, and whether every output
file (mask COG, STAC item, quicklook, report) is byte-identical. ``--mosaic N`` uses an
N x N mosaic instead (a smaller, faster check).

Usage::

    .venv/bin/python bench/scale_out.py [--mosaic 13] [--workers 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenes import BERLIN, build_vrt_mosaic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "model" / "weights" / "default"


def _one_torch_thread() -> int:
    import torch

    torch.set_num_threads(1)
    return torch.get_num_threads()


def _warm(plan: Any) -> int:
    """Open the scene and load the model on a worker (what its first batch would do)."""
    from pipeline.extract import _open

    _open(plan.source, plan.open_kwargs)
    getattr(plan.extractor, "model", None)
    return os.getpid()


def run_on_cluster(scene: Path, out: Path, workers: int) -> dict[str, Any]:
    from dask.distributed import Client, LocalCluster, wait

    from pipeline.extract import ExtractionSettings, extraction_job, finalise, run_batch

    settings = ExtractionSettings(target="water", model=str(DEFAULT_MODEL), device="cpu")
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_one_torch_thread)
        with extraction_job(str(scene), settings, out) as plan:
            pids = client.run(_warm, plan)
            batches = [[t.index for t in b] for b in plan.pending_batches()]
            start = time.perf_counter()
            futures = client.map(run_batch, [plan] * len(batches), batches, pure=False)
            wait(futures)
            tiles = sum(f.result() for f in futures)
            batches_s = time.perf_counter() - start
            start = time.perf_counter()
            paths = finalise(plan)
            finalise_s = time.perf_counter() - start
    files = {k: Path(v) for k, v in paths.items() if v}
    return {
        "workers": workers,
        "worker_pids": sorted(pids.values()),
        "tiles": tiles,
        "batches": len(batches),
        "batches_s": batches_s,
        "finalise_s": finalise_s,
        "bytes": {k: p.read_bytes() for k, p in files.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mosaic", type=int, default=13)
    ap.add_argument("--workers", type=int, nargs=2, default=[1, 2])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp:
        work = Path(tmp)
        n = args.mosaic
        scene = build_vrt_mosaic([BERLIN], work / f"berlin_{n}x{n}.vrt", n, n)
        runs = []
        for workers in args.workers:
            print(f"running on {workers} worker(s) ...", flush=True)
            runs.append(run_on_cluster(scene, work / f"out-{workers}", workers))
    a, b = runs
    identical = {k: a["bytes"][k] == b["bytes"].get(k) for k in a["bytes"]}
    result = {
        "command": "python bench/scale_out.py " + " ".join(sys.argv[1:]),
        "scene": f"{n}x{n} VRT mosaic of the Sentinel-2 sample",
        "runs": [{k: v for k, v in r.items() if k != "bytes"} for r in runs],
        "speed_up": a["batches_s"] / b["batches_s"],
        "identical_outputs": identical,
        "bench_seconds": time.perf_counter() - started,
    }
    print("| workers | tiles | batches s | tiles/s | finalise s |")
    print("|---|---|---|---|---|")
    for r in runs:
        rate = r["tiles"] / r["batches_s"]
        print(
            f"| {r['workers']} | {r['tiles']} | {r['batches_s']:.1f} | {rate:.2f} "
            f"| {r['finalise_s']:.1f} |"
        )
    print(
        f"speed-up {args.workers[0]} -> {args.workers[1]} workers: {result['speed_up']:.2f}; "
        f"identical outputs: {identical}"
    )
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
