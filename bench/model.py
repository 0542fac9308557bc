"""Per-tile time of SPEX inference, split by stage.

Stages: APG (instruction from the tile), encoder (+ MSAM + prompt packing), LLM prefill,
generation (KV-cache decode loop), TCP + mask decoder; 'other' is the rest of the
extractor call (evidence, native-resolution windows, blending). The timers sit in the code
the extractor runs (model.timing.stage_timer), so this measures the production path.
Weights are randomly initialised (seeded): timings do not depend on training, except
that an untrained LM rarely stops early, so every tile uses the whole token budget.

    python bench/model.py                          # tiny config, CPU, 256 and 512 px
    python bench/model.py --config paper --device cuda --batch 1 16
    python bench/model.py --job CKPT               # whole extraction job on the sample
The paper reports 4.36 s per 512 px image on an RTX 4090.

``--job`` runs ``pipeline.extract.run_extraction`` on the bundled 768 x 768 Sentinel-2
sample with a checkpoint folder (e.g. from ``python -m model.brief_training``) and
reports the extractor's seconds per tile by stage plus the ratio of the whole job's
wall time to the time spent inside the extractor (the pipeline's overhead: reading,
stitching, COG, quicklook, report, STAC).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from model.config import CONFIGS
from model.inference import SpexExtractor
from model.llm import GenerationSettings
from model.spex import SpexModel, count_parameters
from pipeline.extractor import TileBatch

STAGES = ("apg", "encoder", "llm_prefill", "llm_generate", "tcp_decoder", "other")
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
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens)
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


def bench_job(checkpoint: str, tile: int, overlap: int, reps: int) -> dict[str, float]:
    """Whole-job timing on the sample; the last of ``reps`` runs (earlier ones warm the
    caches). Stage timers are added by wrapping the extractor's ``predict``."""
    import shutil
    import tempfile

    from pipeline.extract import ExtractionSettings, run_extraction

    scene = Path(__file__).resolve().parents[1] / "samples" / "s2_l1c_berlin_20170216.tif"
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

    settings = ExtractionSettings(target="water", model=checkpoint, tile=tile, overlap=overlap)
    SpexExtractor.predict = timed  # type: ignore[method-assign]
    try:
        for _ in range(reps):
            stats.clear()
            out = tempfile.mkdtemp(prefix="bench-spex-job-")
            try:
                start = time.perf_counter()
                run_extraction(str(scene), settings, out)
                job = time.perf_counter() - start
            finally:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        SpexExtractor.predict = original  # type: ignore[method-assign]
    n = stats.pop("tiles")
    extractor = stats.pop("extractor")
    return {
        "tiles": n,
        "job_s": job,
        "extractor_s": extractor,
        "per_tile_s": extractor / n,
        "job_over_extractor": job / extractor,
        **{f"{k}_per_tile_s": v / n for k, v in stats.items()},
    }


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
    ap.add_argument("--job", metavar="CKPT", help="time the extraction job with CKPT")
    ap.add_argument("--tile", type=int, default=256, help="--job tile size")
    ap.add_argument("--overlap", type=int, default=32, help="--job tile overlap")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"skipped: --device {args.device} asked for but no CUDA GPU is available here")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.job:
        result = bench_job(args.job, args.tile, args.overlap, max(1, args.reps))
        result["torch_threads"] = torch.get_num_threads()
        print(json.dumps({k: round(v, 4) for k, v in result.items()}))
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
