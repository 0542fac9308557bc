"""Prefect flow ``extract-scene``: a thin recipe over :mod:`pipeline.extract`.

open scene -> plan tiles (resuming finished ones) -> map a task over tile batches ->
stitch and write outputs. Tile batches run on the default thread pool, or on an existing
Dask cluster when ``dask_address`` is given (prefect-dask's DaskTaskRunner), with
identical outputs either way because the tile store blends in a fixed order.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.errors import SpexInputError
from pipeline.extract import (
    ExtractionPlan,
    ExtractionSettings,
    check_job,
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
    resume: bool = True,
    dask_address: str | None = None,
    max_workers: int = 2,
    device: str | None = None,
) -> list[dict[str, str | None]]:
    """Extract ``target`` from each scene; returns the output paths of every scene.

    ``scene`` is one path (a file, a band-file folder, a STAC item or a Zarr store) or a
    list of them. ``sensor``, ``bands``, ``encoding``, ``level``, ``scale``, ``offset``,
    ``nodata`` and ``baseline`` describe the input as the ``spex extract`` flags of the
    same names do; ``allow_small_scene`` runs a scene smaller than ``tile`` as one tile.
    ``resume=False`` discards finished tiles and recomputes everything. ``device``
    ('cpu', 'cuda', ...) is where a model extractor runs (default: CUDA when present).
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
        device=device,
        resume=resume,
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


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _numbers(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SpexInputError(f"{flag} takes numbers separated by commas, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The shell entry's options: the scene options carry the `spex extract` flag names."""
    parser = _Parser(description="Run the extract-scene flow once.")
    parser.add_argument("--scene", action="append", help="scene path (repeatable)")
    parser.add_argument("--target", default="water")
    parser.add_argument("--model", default="default")
    parser.add_argument("--sensor")
    parser.add_argument("--bands", help="comma-separated band names in file order")
    parser.add_argument("--encoding")
    parser.add_argument("--level")
    parser.add_argument("--scale", help="one number, or one per band (a,b,...)")
    parser.add_argument("--offset", help="one number, or one per band (a,b,...)")
    parser.add_argument("--nodata", type=float)
    parser.add_argument("--baseline")
    parser.add_argument("--out-dir", "--out", dest="out_dir", default="out")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--allow-small-scene", action="store_true")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--formats", "--format", dest="formats", default="cog")
    parser.add_argument("--force", action="store_true", help="recompute finished tiles")
    parser.add_argument("--resume", dest="force", action="store_false", help="(the default)")
    parser.add_argument("--dask-address")
    parser.add_argument("--device")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the flow once from the shell (used by `make demo`); prints one JSON line per
    scene with the output paths. Bad input is one ``error:`` line and exit status 2: every
    input check runs here first (:func:`pipeline.extract.check_job`), before the flow."""
    args = build_parser().parse_args(argv)
    try:
        params = {
            "scene": args.scene or DEFAULT_SCENE,
            "target": args.target,
            "model": args.model,
            "sensor": args.sensor,
            "bands": [b.strip() for b in args.bands.split(",")] if args.bands else None,
            "encoding": args.encoding,
            "level": args.level,
            "scale": _numbers(args.scale, "--scale"),
            "offset": _numbers(args.offset, "--offset"),
            "nodata": args.nodata,
            "baseline": args.baseline,
            "out_dir": args.out_dir,
            "tile": args.tile,
            "overlap": args.overlap,
            "allow_small_scene": args.allow_small_scene,
            "batch_size": args.batch_size,
            "formats": args.formats.split(","),
            "resume": not args.force,
            "device": args.device,
        }
        settings = make_settings(
            **{k: v for k, v in params.items() if k not in ("scene", "out_dir")}
        )
        scenes = [params["scene"]] if isinstance(params["scene"], str) else params["scene"]
        for path in scenes:
            check_job(path, settings, args.out_dir)
    except SpexInputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    results = extract_scene(dask_address=args.dask_address, **params)
    for paths in results:
        print(json.dumps(paths))


if __name__ == "__main__":
    main()
