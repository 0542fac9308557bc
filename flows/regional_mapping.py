"""Prefect flow ``regional-mapping``: a thin recipe over :mod:`pipeline.regions`,
:mod:`pipeline.mosaic` and :mod:`pipeline.runreport`.

load region -> find scenes -> ``extract-scene`` per scene and target as sub-flows
(bounded concurrency) -> mosaic per target -> STAC collection -> run report.

One scene that cannot be read fails its own sub-flow with the extraction's message; the
other scenes complete, and the mosaic, collection and report name the missing scene.
Per-scene outputs go to the region's shared ``scenes/`` folder, so a scheduled rerun
only computes new scenes (the others are resumed as already complete).
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.extract_scene import extract_scene
from pipeline.errors import OutputError
from pipeline.locking import output_lock
from pipeline.mosaic import mosaic_masks
from pipeline.regions import Region, SceneRef, find_scenes, load_region
from pipeline.runreport import (
    SceneOutcome,
    build_collection,
    build_run_report,
    mosaic_inputs,
    mosaic_path,
    new_run_id,
    previous_run,
    report_markdown,
    run_dir,
    scenes_dir,
    write_run_report,
)


@task(task_run_name="extract-{scene.id}-{target}")
def extract_one(region: Region, scene: SceneRef, target: str) -> SceneOutcome:
    """Run ``extract-scene`` as a sub-flow; a failure becomes an outcome, not a crash."""
    opts = region.extraction
    state = extract_scene.with_options(flow_run_name=f"{scene.id}-{target}")(
        scene=scene.path,
        target=target,
        sensor=region.sensor,
        **region.open_options,
        model=opts.model,
        tile=opts.tile,
        overlap=opts.overlap,
        batch_size=opts.batch_size,
        out_dir=str(scenes_dir(region)),
        max_workers=1,
        return_state=True,
    )
    if state.is_completed():
        return SceneOutcome(scene, target, outputs=state.result()[0])
    try:
        state.result()
        error = f"sub-flow ended in state {state.name}"
    except Exception as exc:  # the sub-flow's own exception carries the clear message
        error = f"{type(exc).__name__}: {exc}"
    get_run_logger().error("scene %s (%s) failed: %s", scene.id, target, error)
    return SceneOutcome(scene, target, error=error)


@flow(name="extract-region-scenes")
def extract_all(region: Region, scenes: list[SceneRef]) -> list[SceneOutcome]:
    """Every scene x target, at most ``region.max_concurrent`` at a time."""
    futures = [extract_one.submit(region, s, t) for s in scenes for t in region.targets]
    return [f.result() for f in futures]


@flow(name="regional-mapping")
def regional_mapping(
    region: str = "naip-north-dakota",
    run_id: str | None = None,
    max_concurrent: int | None = None,
) -> dict[str, Any]:
    """Map every target of ``region`` (a catalog name or a YAML path) for one run.

    Returns the run folder, report, collection and mosaic paths, and the failed scenes.
    """
    logger = get_run_logger()
    reg = load_region(region)
    selection = find_scenes(reg)
    run = run_id or new_run_id()
    logger.info(
        "%s run %s: %d scene(s), %d skipped",
        reg.name,
        run,
        len(selection.scenes),
        len(selection.skipped),
    )
    runner = ThreadPoolTaskRunner(max_workers=max_concurrent or reg.max_concurrent)
    outcomes = extract_all.with_options(task_runner=runner)(reg, selection.scenes)
    folder = run_dir(reg, run)
    with output_lock(reg.output, f"region-{reg.name}"):  # one run writes mosaics at a time
        previous = previous_run(reg, run)
        mosaics = {}
        for target in reg.targets:
            masks, missing = mosaic_inputs(outcomes, target)
            if masks:
                mosaics[target] = mosaic_masks(
                    masks,
                    reg.aoi,
                    mosaic_path(reg, run, target),
                    resolution=reg.resolution,
                    missing=missing,
                    tags={"SPEX_REGION": reg.name, "SPEX_RUN_ID": run, "SPEX_TARGET": target},
                )
        collection = build_collection(reg, run, outcomes, mosaics, folder) if mosaics else None
        report = build_run_report(reg, run, selection, outcomes, mosaics, previous)
        report_file = write_run_report(folder, report)
    create_markdown_artifact(
        key=re.sub(r"[^a-z0-9-]+", "-", f"region-{reg.name}-{run}".lower()),
        markdown=report_markdown(report),
        description=f"regional mapping of {reg.name}",
    )
    failed = report["scenes"]["failed"]
    for f in failed:
        logger.warning("missing from run %s: %s (%s): %s", run, f["scene"], f["target"], f["error"])
    if not mosaics:
        first = f"; first error: {failed[0]['error']}" if failed else ""
        raise OutputError(
            f"region {reg.name}: no scene could be mapped in run {run} "
            f"({len(selection.scenes)} selected{first}); see {report_file}"
        )
    return {
        "run_id": run,
        "run_dir": str(folder),
        "report": str(report_file),
        "collection": str(collection) if collection else None,
        "mosaics": {t: str(m.path) for t, m in mosaics.items()},
        "failed": failed,
        "status": report["status"],
    }


def main(argv: list[str] | None = None) -> None:
    """Run the flow once from the shell; prints the result as one JSON line."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Run the regional-mapping flow once.")
    parser.add_argument("region", help="region catalog name or YAML path")
    parser.add_argument("--run-id")
    args = parser.parse_args(argv)
    print(json.dumps(regional_mapping(region=args.region, run_id=args.run_id)))


if __name__ == "__main__":
    main()
