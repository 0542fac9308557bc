"""Prefect flow ``extract-scene``: a thin recipe over :mod:`pipeline.extract`.

open scene -> plan tiles (resuming finished ones) -> map a task over tile batches ->
stitch and write outputs. Tile batches run on the default thread pool, or on an existing
Dask cluster when ``dask_address`` is given (prefect-dask's DaskTaskRunner), with
identical outputs either way because the tile store blends in a fixed order.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.errors import SpexInputError
from pipeline.extract import (
    ExtractionPlan,
    ExtractionSettings,
    check_job,
    extraction_job,
    finalise,
    limit_compute_threads,
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
    encoding: str | None = None,
    level: str | None = None,
    scale: float | list[float] | None = None,
    offset: float | list[float] | None = None,
    nodata: float | None = None,
    baseline: str | None = None,
    model: str = "default",
    tile: int = 512,
    overlap: int = 64,
    allow_small_scene: bool = False,
    batch_size: int = 4,
    out_dir: str = "out",
    formats: list[str] | None = None,
    simplify: float = 0.0,
    resume: bool = True,
    dask_address: str | None = None,
    max_workers: int = 2,
    device: str | None = None,
    describe: bool = True,
) -> list[dict[str, str | None]]:
    """Extract ``target`` from each scene; returns the output paths of every scene.

    ``scene`` is one path (a file, a band-file folder, a STAC item or a Zarr store) or a
    list of them. ``sensor``, ``bands``, ``encoding``, ``level``, ``scale``, ``offset``,
    ``nodata`` and ``baseline`` describe the input as the ``spex extract`` flags of the
    same names do; ``allow_small_scene`` runs a scene smaller than ``tile`` as one tile.
    ``resume=False`` discards finished tiles and recomputes everything. ``device``
    ('cpu', 'cuda', ...) is where a model extractor runs (default: CUDA when present).
    ``describe=False`` leaves the tile descriptions (and their check) out of the report;
    the masks are the same.
    """
    logger = get_run_logger()
    scenes = [scene] if isinstance(scene, str) else list(scene)
    settings = make_settings(
        target=target,
        model=model,
        sensor=sensor,
        bands=bands,
        encoding=encoding,
        level=level,
        scale=scale,
        offset=offset,
        nodata=nodata,
        baseline=baseline,
        tile=tile,
        overlap=overlap,
        allow_small_scene=allow_small_scene,
        batch_size=batch_size,
        formats=formats,
        simplify=simplify,
        device=device,
        resume=resume,
        describe=describe,
    )
    results = []
    for path in scenes:
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


def _floats(value: float | list[float] | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(v) for v in value) or None


def make_settings(
    *,
    bands: list[str] | None,
    scale: float | list[float] | None,
    offset: float | list[float] | None,
    formats: list[str] | None,
    resume: bool,
    **options: Any,
) -> ExtractionSettings:
    """The flow's parameters as :class:`ExtractionSettings` (``scale``/``offset``: one
    number or one per band, as on the command line)."""
    return ExtractionSettings(
        bands=tuple(bands) if bands else None,
        scale=_floats(scale),
        offset=_floats(offset),
        formats=tuple(formats or ("cog",)),
        force=not resume,
        **options,
    )


def flow_parameters(settings: ExtractionSettings) -> dict[str, Any]:
    """The flow's parameters for ``settings`` (the inverse of :func:`make_settings`)."""
    values = asdict(settings)
    names = set(inspect.signature(extract_scene.fn).parameters)
    params = {k: v for k, v in values.items() if k in names}
    for key in ("bands", "scale", "offset", "formats"):
        if params.get(key) is not None:
            params[key] = list(params[key])
    params["resume"] = not settings.force
    return params


def main(argv: list[str] | None = None) -> None:
    """Run the flow once from the shell (``make demo``) with the options of ``spex
    extract`` (parsed by the same code, :func:`pipeline.cli.main.parse_extract`) plus
    ``--dask-address``; prints one JSON line per scene with the output paths. Bad input
    is one ``error:`` line and exit status 2: every input check runs first
    (:func:`pipeline.extract.check_job`), before the flow starts."""
    import typer

    from pipeline.cli.main import parse_extract

    flow_only = argparse.ArgumentParser(add_help=False)
    flow_only.add_argument("--dask-address", default=None)
    known, rest = flow_only.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        scenes, out, settings = parse_extract(rest)
        for path in scenes:
            check_job(str(path), settings, out)
    except typer.Exit as done:  # --help
        raise SystemExit(done.exit_code) from None
    except SpexInputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    results = extract_scene(
        scene=[str(s) for s in scenes],
        out_dir=str(out),
        dask_address=known.dask_address,
        **flow_parameters(settings),
    )
    for paths in results:
        print(json.dumps(paths))


if __name__ == "__main__":
    main()
