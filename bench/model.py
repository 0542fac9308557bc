"""Per-tile time of SPEX inference split by stage, and the model path of a whole job.

Stages: APG (instruction from the tile), encoder (+ MSAM + prompt packing), LLM prefill,
generation (KV-cache decode loop), TCP + mask decoder; 'other' is the rest of the
extractor call (evidence, native-resolution windows, blending). The timers sit in the code
the extractor runs (model.timing.stage_timer), so this measures the production path.
Weights are randomly initialised (seeded): timings do not depend on training, except
that an untrained LM rarely stops early, so every tile uses the whole token budget.

    python bench/model.py                          # tiny config, CPU, 256 and 512 px
    python bench/model.py --config paper --device cuda --batch 1 16
    python bench/model.py --job                    # the model path, one command
The paper reports 4.36 s per 512 px image on an RTX 4090.

``--job [CKPT]`` (default: the shipped default model, ``model/weights/default``) runs the
whole extraction job, ``pipeline.extract.run_extraction`` as ``spex extract`` runs it,
on an n x n mosaic of the bundled Sentinel-2 sample (``--mosaic``, default 8: 6144 x 6144,
196 tiles of 512 px; the job's fixed costs, model load and finalise, weigh less the more
tiles share them), once per ``--batch`` size (default 1 4 16), each in a fresh process.
It reports tiles per second of the model and of the whole job, the share of the
extractor's time spent generating text, and the ratio of the job's wall time (planning
with the model load, every batch, finalise; imports excluded) to the time spent inside
the extractor: what reading, storing, stitching and the outputs add around the model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # bench/scenes.py (after model/)

import numpy as np
import torch

from model.config import CONFIGS
from model.inference import SpexExtractor
from model.llm import GenerationSettings
from model.spex import SpexModel, count_parameters
from pipeline.extractor import TileBatch

STAGES = ("apg", "encoder", "llm_prefill", "llm_generate", "tcp_decoder", "other")
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "model" / "weights" / "default"
BANDS = ("B", "G", "R", "N", "S1", "S2")


def synthetic_batch(n: int, size: int, seed: int = 0) -> TileBatch:
    """Reflectance-like tiles with a low-NIR (water) rectangle, so the APG has regions."""
    rng = np.random.default_rng(seed)
    px = rng.uniform(0.02, 0.12, size=(n, len(BANDS), size, size)).astype(np.float32)
    px[:, 3] += 0.25
    q = size // 4
    px[:, 3, q : 2 * q, q : 3 * q] = 0.01
    return TileBatch(px, np.ones((n, size, size), bool), BANDS, "water")


def bench(
    config: str, size: int, batch: int, device: str, reps: int, max_new_tokens: int | None
) -> dict[str, float]:
    """Mean seconds per tile for each stage (after one warm-up call)."""
    torch.manual_seed(0)
    cfg = CONFIGS[config](bands=BANDS)
    cfg = replace(cfg, input_size=size)
    if max_new_tokens is not None:
        cfg = replace(cfg, max_new_tokens=max_new_tokens)
    with torch.device(device):
        model = SpexModel(cfg)
    counts = count_parameters(model)
    print(
        f"# {config}: {counts['total'] / 1e6:.2f}M parameters "
        + ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items() if k != "total"),
        flush=True,
    )
    settings = GenerationSettings.for_model(cfg)
    ex = SpexExtractor(model, device=device, settings=settings, batch_size=batch)
    tiles = synthetic_batch(batch, size)
    ex.predict(tiles)  # warm-up (allocations, kernels)
    totals = dict.fromkeys(STAGES, 0.0)
    for _ in range(reps):
        timings: dict[str, float] = {}
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        ex.predict(tiles, timings)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        timings["other"] = wall - sum(timings.values())
        for k in STAGES:
            totals[k] += timings.get(k, 0.0)
    return {k: v / reps / batch for k, v in totals.items()}


def job_once(spec: dict[str, Any]) -> dict[str, float]:
    """One whole extraction job (in this process), with the extractor's time by stage.

    The extractor's ``predict`` is wrapped at class level, so the job runs unmodified
    (batches read ahead and stored behind in threads, as ``spex extract`` does)."""
    from pipeline.extract import ExtractionSettings, run_extraction

    stats: dict[str, float] = {}
    original = SpexExtractor.predict

    def timed(self: SpexExtractor, batch: TileBatch, timings: dict[str, float] | None = None):
        t: dict[str, float] = {}
        start = time.perf_counter()
        result = original(self, batch, t)
        wall = time.perf_counter() - start
        t["other"] = wall - sum(t.values())
        for k, v in t.items():
            stats[k] = stats.get(k, 0.0) + v
        stats["extractor"] = stats.get("extractor", 0.0) + wall
        stats["tiles"] = stats.get("tiles", 0.0) + batch.pixels.shape[0]
        return result

    settings = ExtractionSettings(
        target="water",
        model=spec["checkpoint"],
        tile=spec["tile"],
        overlap=spec["overlap"],
        batch_size=spec["batch"],
        device="cpu",
    )
    SpexExtractor.predict = timed  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        run_extraction(spec["scene"], settings, spec["out"])
        job = time.perf_counter() - start
    finally:
        SpexExtractor.predict = original  # type: ignore[method-assign]
    n, extractor = stats.pop("tiles"), stats.pop("extractor")
    return {
        "batch": spec["batch"],
        "tiles": n,
        "job_s": job,
        "extractor_s": extractor,
        "job_over_extractor": job / extractor,
        "tiles_per_s_model": n / extractor,
        "tiles_per_s_job": n / job,
        "generation_share": stats.get("llm_generate", 0.0) / extractor,
        "prefill_share": stats.get("llm_prefill", 0.0) / extractor,
        **{f"{k}_per_tile_s": v / n for k, v in stats.items()},
    }


def bench_job(checkpoint: str, batches: list[int], mosaic: int, tile: int, overlap: int) -> list:
    """:func:`job_once` for every batch size, each in a fresh interpreter (its own model
    load, caches and peak memory), on the same mosaic."""
    import subprocess
    import tempfile

    from scenes import BERLIN, build_mosaic

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-model-job-") as tmp:
        scene = build_mosaic([BERLIN], Path(tmp) / f"berlin_{mosaic}x{mosaic}.tif", mosaic)
        for b in batches:
            spec = {
                "checkpoint": checkpoint,
                "scene": str(scene),
                "out": str(Path(tmp) / f"out-batch-{b}"),
                "batch": b,
                "tile": tile,
                "overlap": overlap,
            }
            print(f"# job, batch {b} ...", flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--job-spec", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise SystemExit(f"job with batch {b} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def print_job_table(rows: list[dict[str, float]], checkpoint: str, mosaic: int) -> None:
    print(
        f"# model path: {checkpoint} on a {mosaic}x{mosaic} mosaic of the Sentinel-2 sample, "
        f"CPU, torch threads {torch.get_num_threads()}"
    )
    print(
        "| batch | tiles | job s | extractor s | job / extractor | tiles/s model "
        "| tiles/s job | generation share | prefill share |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['tiles']:.0f} | {r['job_s']:.1f} | {r['extractor_s']:.1f} "
            f"| {r['job_over_extractor']:.3f} | {r['tiles_per_s_model']:.2f} "
            f"| {r['tiles_per_s_job']:.2f} | {r['generation_share']:.1%} "
            f"| {r['prefill_share']:.1%} |"
        )


def print_table(rows: list[tuple[str, dict[str, float]]]) -> None:
    header = f"{'run':<28}" + "".join(f"{s:>14}" for s in (*STAGES, "total"))
    print(header)
    for label, t in rows:
        total = sum(t.values())
        print(f"{label:<28}" + "".join(f"{t[s]:>13.4f}s" for s in STAGES) + f"{total:>13.4f}s")
        print(f"{'  share of total':<28}" + "".join(f"{t[s] / total:>14.1%}" for s in STAGES))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="input px (tiny: 256 512)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--job",
        nargs="?",
        const=str(DEFAULT_MODEL),
        metavar="CKPT",
        help="time the whole extraction job with CKPT (default: the shipped default model)",
    )
    ap.add_argument("--mosaic", type=int, default=8, help="--job scene: n x n Sentinel-2 sample")
    ap.add_argument("--tile", type=int, default=512, help="--job tile size")
    ap.add_argument("--overlap", type=int, default=64, help="--job tile overlap")
    ap.add_argument("--json", type=Path, help="--job: also write the rows here")
    ap.add_argument("--job-spec", help=argparse.SUPPRESS)  # internal: one job, print JSON
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"skipped: --device {args.device} asked for but no CUDA GPU is available here")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.job_spec:
        print(json.dumps(job_once(json.loads(args.job_spec))))
        return 0
    if args.job:
        batches = args.batch if args.batch != [1] else [1, 4, 16]
        rows = bench_job(args.job, batches, args.mosaic, args.tile, args.overlap)
        print_job_table(rows, args.job, args.mosaic)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return 0
    sizes = args.sizes or ([512] if args.config == "paper" else [256, 512])
    rows = []
    for size in sizes:
        for b in args.batch:
            t = bench(args.config, size, b, args.device, args.reps, args.max_new_tokens)
            rows.append((f"{args.config} {size}px batch {b} {args.device}", t))
    print(
        f"# seconds per tile, mean of {args.reps} runs after a warm-up; "
        f"torch threads {torch.get_num_threads()}"
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
