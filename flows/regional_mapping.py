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

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.artifacts import publish_markdown
from flows.extract_scene import extract_scene
from pipeline.cli.flow_entry import run_region_flow
from pipeline.regions import Region, SceneRef, find_scenes, load_region
from pipeline.runreport import SceneOutcome, finish_run, new_run_id, report_markdown, scenes_dir


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
    runner: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=max_concurrent or reg.max_concurrent)
    outcomes = extract_all.with_options(task_runner=runner)(reg, selection.scenes)
    result = finish_run(reg, run, selection, outcomes)
    publish_markdown(
        report_markdown(result.report), f"regional mapping of {reg.name}", "region", reg.name, run
    )
    for f in result.report["scenes"]["failed"]:
        logger.warning("missing from run %s: %s (%s): %s", run, f["scene"], f["target"], f["error"])
    return result.summary()


def main(argv: list[str] | None = None) -> None:
    """Run the flow once from the shell; prints the result as one JSON line."""
    run_region_flow(regional_mapping, argv)


if __name__ == "__main__":
    main()
