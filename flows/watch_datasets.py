"""Prefect flow ``watch-datasets``: emit an event when a labelled data set changes.

For each data set (a catalog name or a catalog YAML path), compare its content hash
(:mod:`pipeline.spie.watch`) with the last one recorded and emit
``spex.dataset.changed`` for each change. The ``retrain-on-new-data`` deployment is
triggered by that event (see prefect.yaml); ``generate-spie`` need not know about it.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.events import emit_event

from pipeline.spie.catalog import default_datasets
from pipeline.spie.watch import detect_changes

EVENT = "spex.dataset.changed"


@flow(name="watch-datasets")
def watch_datasets(
    datasets: list[str] | None = None,
    state_dir: str = "out/watch",
    roots: dict[str, str] | None = None,
) -> list[dict]:
    """Record each data set's content hash; one event per changed set."""
    logger = get_run_logger()
    changes, problems = detect_changes(datasets or default_datasets(), state_dir, roots)
    for name, message in problems.items():
        logger.warning("%s not checked: %s", name, message)
    for change in changes:
        emit_event(
            event=EVENT,
            resource={
                "prefect.resource.id": f"spex.dataset.{change.dataset}",
                "spex.dataset": change.dataset,
            },
            payload={"previous": change.previous, "current": change.current},
        )
        logger.info(
            "%s changed (%s -> %s): emitted %s",
            change.dataset,
            (change.previous or "new")[:12],
            change.current[:12],
            EVENT,
        )
    return [asdict(c) for c in changes]


if __name__ == "__main__":
    watch_datasets()
