"""Prefect flow ``evaluate-spex``: the four-method evaluation on a SPIE split.

Thin recipe over :func:`model.training.evaluate.run_evaluation`; the IoU table and the
goal check become Markdown artifacts, the full rows a table artifact.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from model.training.evaluate import METHODS, iou_table, markdown_table, run_evaluation


@flow(name="evaluate-spex")
def evaluate_spex(
    spie: str = "out/spie",
    spex: str | None = "model/weights/default",
    mvpnet: str | None = "model/weights/mvpnet",
    split: str = "test",
    out_dir: str = "out/eval",
    methods: list[str] | None = None,
    per_target: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate the given weights against index + Otsu on ``split``; ``per_target``
    maps target -> checkpoint of a per-target model (method ``spex-per-target``)."""
    logger = get_run_logger()
    result = run_evaluation(
        spie,
        out_dir,
        spex=spex,
        mvpnet=mvpnet,
        split=split,
        methods=tuple(methods or METHODS),
        progress=logger.info,
        per_target=per_target,
    )
    rows = result["rows"]
    create_markdown_artifact(
        key=f"evaluate-spex-{split}",
        markdown=f"# SPEX evaluation ({split})\n\n{iou_table(rows)}\n\n{markdown_table(rows)}\n\n"
        f"goal: `{result['goal']}`",
    )
    create_table_artifact(key=f"evaluate-spex-{split}-rows", table=rows)
    logger.info("goal check: %s", result["goal"])
    return {"paths": result["paths"], "goal": result["goal"]}


if __name__ == "__main__":
    evaluate_spex()
