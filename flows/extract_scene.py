"""Prefect flow ``extract-scene``: a thin recipe over :mod:`pipeline.extract`.

open scene -> plan tiles (resuming finished ones) -> map a task over tile batches (threads,
or a Dask cluster: the same bytes) -> stitch and write outputs. From the shell it takes
``spex extract``'s options (:mod:`pipeline.cli.flow_entry`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.artifacts import publish_markdown
from pipeline.cli.flow_entry import run_extract_flow
from pipeline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_TILE
from pipeline.extract import ExtractionPlan, extraction_job, finalise, limit_compute_threads
from pipeline.extract import run_batch as run_tile_batch
from pipeline.job_parameters import settings_from_parameters

DEFAULT_SCENE = str(Path(__file__).resolve().parents[1] / "samples" / "s2_l1c_berlin_20170216.tif")


@task(retries=2, retry_delay_seconds=2, task_run_name="tiles-{tile_indices[0]}")
def extract_tile_batch(plan: ExtractionPlan, tile_indices: list[int]) -> int:
    """Compute one batch of tiles into the store (idempotent, so retries are safe)."""
    return run_tile_batch(plan, tile_indices)


@flow(name="extract-tiles")
def extract_tiles(plan: ExtractionPlan, batches: list[list[int]]) -> int:
    """Map the batch task over every pending batch and wait for all of them."""
    return sum(f.result() for f in extract_tile_batch.map(unmapped(plan), batches))


def _runner(dask_address: str | None, max_workers: int) -> TaskRunner[Any]:
    """Batches on an existing Dask cluster, else on ``max_workers`` threads that share
    the cores (torch threads limited to match)."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    limit_compute_threads(max_workers)
    return ThreadPoolTaskRunner(max_workers=max_workers)


@flow(name="extract-scene")
def extract_scene(
    target: str,
    scene: str | list[str] = DEFAULT_SCENE,
    sensor: str | None = None,
    bands: list[str] | None = None,
    encoding: str | None = None,
    level: str | None = None,
    scale: float | list[float] | None = None,
    offset: float | list[float] | None = None,
    nodata: float | None = None,
    baseline: str | None = None,
    model: str = DEFAULT_MODEL,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    allow_small_scene: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    out_dir: str = "out",
    formats: list[str] | None = None,
    simplify: float = 0.0,
    resume: bool = True,
    dask_address: str | None = None,
    max_workers: int = 2,
    device: str | None = None,
    describe: bool = True,
) -> list[dict[str, str | None]]:
    """Extract ``target`` from ``scene`` (a file, band-file folder, STAC item or Zarr
    store, or a list of them); returns each scene's output paths. The other parameters
    are ``spex extract``'s options (:class:`pipeline.extract.ExtractionSettings`);
    ``resume=False`` recomputes every tile; ``device``: where a model runs."""
    parameters = dict(locals())  # all but where (scene, out_dir) and how are settings
    for where_or_how in ("scene", "out_dir", "dask_address", "max_workers"):
        del parameters[where_or_how]
    settings = settings_from_parameters(**parameters)
    logger = get_run_logger()
    results = []
    for path in [scene] if isinstance(scene, str) else list(scene):
        # Held from planning to the last rename: an identical run waits, then finds it done.
        with extraction_job(
            path,
            settings,
            out_dir,
            on_wait=lambda holder: logger.info("waiting: the same job is run by %s", holder),
        ) as plan:
            batches = [[t.index for t in b] for b in plan.pending_batches()]
            logger.info(
                "%s: %d tiles, %d pending in %d batches%s",
                *(plan.scene_name, len(plan.grid), sum(map(len, batches)), len(batches)),
                " (already complete)" if plan.done else "",
            )
            if batches:
                runner = _runner(dask_address, max_workers)
                extract_tiles.with_options(task_runner=runner)(plan, batches)
            paths = finalise(plan)
        logger.info(json.dumps(paths))
        if plan.outputs.report_md.is_file():
            report, what = plan.outputs.report_md.read_text(), f"{target} from {plan.scene_name}"
            publish_markdown(report, what, "report", plan.scene_name, target)
        results.append(paths)
    return results


if __name__ == "__main__":
    run_extract_flow(extract_scene, None)
