"""Prefect flow ``extract-scene``: a thin recipe over :mod:`pipeline.extract`.

open scene -> plan tiles (resuming finished ones) -> map a task over tile batches ->
stitch and write outputs. Tile batches run on the default thread pool, or on an existing
Dask cluster when ``dask_address`` is given (prefect-dask's DaskTaskRunner), with
identical outputs either way because the tile store blends in a fixed order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.extract import (
    ExtractionPlan,
    ExtractionSettings,
    finalise,
    limit_compute_threads,
    plan_extraction,
    run_batch,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = str(REPO / "samples" / "s2_l1c_berlin_20170216.tif")


@task(retries=2, retry_delay_seconds=2, task_run_name="tiles-{tile_indices[0]}")
def extract_tile_batch(plan: ExtractionPlan, tile_indices: list[int]) -> int:
    """Compute one batch of tiles into the store (idempotent, so retries are safe)."""
    return run_batch(plan, tile_indices)


@flow(name="extract-tiles")
def extract_tiles(plan: ExtractionPlan, batches: list[list[int]]) -> int:
    """Map the batch task over every pending batch and wait for all of them."""
    futures = extract_tile_batch.map(unmapped(plan), batches)
    return sum(f.result() for f in futures)


def _task_runner(dask_address: str | None, max_workers: int):
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return ThreadPoolTaskRunner(max_workers=max_workers)


@flow(name="extract-scene")
def extract_scene(
    scene: str | list[str] = DEFAULT_SCENE,
    target: str = "water",
    sensor: str | None = None,
    bands: list[str] | None = None,
    model: str = "default",
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    out_dir: str = "out",
    formats: list[str] | None = None,
    resume: bool = True,
    dask_address: str | None = None,
    max_workers: int = 2,
    device: str | None = None,
    describe: bool = True,
) -> list[dict[str, str | None]]:
    """Extract ``target`` from each scene; returns the output paths of every scene.

    ``scene`` is one path (a file, a band-file folder or a Zarr store) or a list of them.
    ``resume=False`` discards finished tiles and recomputes everything. ``device``
    ('cpu', 'cuda', ...) is where a model extractor runs (default: CUDA when present).
    ``describe=False`` leaves the tile descriptions (and their check) out of the report;
    the masks are the same.
    """
    logger = get_run_logger()
    scenes = [scene] if isinstance(scene, str) else list(scene)
    settings = ExtractionSettings(
        target=target,
        model=model,
        sensor=sensor,
        bands=tuple(bands) if bands else None,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        formats=tuple(formats or ("cog",)),
        device=device,
        force=not resume,
        describe=describe,
    )
    results = []
    for path in scenes:
        plan = plan_extraction(path, settings, out_dir)
        batches = [[t.index for t in b] for b in plan.pending_batches()]
        logger.info(
            "%s: %d tiles, %d pending in %d batches%s",
            plan.scene_name,
            len(plan.grid),
            sum(map(len, batches)),
            len(batches),
            " (already complete)" if plan.done else "",
        )
        if batches:
            if not dask_address:
                limit_compute_threads(max_workers)
            runner = _task_runner(dask_address, max_workers)
            extract_tiles.with_options(task_runner=runner)(plan, batches)
        paths = finalise(plan)
        logger.info(json.dumps(paths))
        report_md = Path(plan.outputs.report_md)
        if report_md.is_file():
            create_markdown_artifact(
                key=re.sub(r"[^a-z0-9-]+", "-", f"report-{plan.scene_name}-{target}".lower()),
                markdown=report_md.read_text(),
                description=f"{target} extracted from {plan.scene_name}",
            )
        results.append(paths)
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the flow once from the shell (used by `make demo`); prints one JSON line per
    scene with the output paths."""
    import argparse

    parser = argparse.ArgumentParser(description="Run the extract-scene flow once.")
    parser.add_argument("--scene", action="append", help="scene path (repeatable)")
    parser.add_argument("--target", default="water")
    parser.add_argument("--model", default="default")
    parser.add_argument("--sensor")
    parser.add_argument("--out-dir", default="out")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--formats", default="cog")
    parser.add_argument("--dask-address")
    parser.add_argument("--device")
    parser.add_argument("--no-describe", dest="describe", action="store_false")
    args = parser.parse_args(argv)
    results = extract_scene(
        scene=args.scene or DEFAULT_SCENE,
        target=args.target,
        model=args.model,
        sensor=args.sensor,
        out_dir=args.out_dir,
        tile=args.tile,
        overlap=args.overlap,
        formats=args.formats.split(","),
        dask_address=args.dask_address,
        device=args.device,
        describe=args.describe,
    )
    for paths in results:
        print(json.dumps(paths))


if __name__ == "__main__":
    main()
