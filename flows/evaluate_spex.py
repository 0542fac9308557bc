"""Prefect flow ``evaluate-spex``: scene-level evaluation, or leave-one-scene-out.

Thin recipe over :mod:`model.training.evaluate` (given weights on whole labelled scenes)
and :mod:`model.training.loso` (``loso=True``: the training recipe once per held-out
place, each scored on its scenes, and the per-target promotion decision). The IoU table
and the decision become Markdown artifacts, the full rows a table artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from model.training.config import load_config
from model.training.evaluate import MARGINS, iou_table, run_evaluation
from model.training.loso import LOSO_METHODS, loso_folds, run_loso


@flow(name="evaluate-spex")
def evaluate_spex(
    spie: str = "out/spie",
    spex: str | None = "model/weights/default",
    mvpnet: str | None = "model/weights/mvpnet",
    datasets: list[str] | None = None,
    out_dir: str = "out/eval",
    methods: list[str] | None = None,
    per_target: dict[str, str] | None = None,
    loso: bool = False,
    config: str = "model/training/configs/tiny.yaml",
    places: list[str] | None = None,
) -> dict[str, Any]:
    """Score ``spex``/``mvpnet`` against index + Otsu on ``datasets`` (default: the
    labelled subsets of ``spie``); with ``loso``, run leave-one-scene-out with the
    ``config`` recipe instead (``places``: only these held out)."""
    logger = get_run_logger()
    if loso:
        record = run_loso(
            load_config(config, spie=spie), out_dir, places=places, config_name=config,
            progress=logger.info,
        )  # fmt: skip
        rows = record["rows"]
        report = (Path(out_dir) / "loso.md").read_text()
        create_markdown_artifact(key="evaluate-spex-loso", markdown=report)
        create_table_artifact(key="evaluate-spex-loso-rows", table=rows)
        logger.info("margin over the baselines: %s", record[MARGINS])
        return {"report": str(Path(out_dir) / "loso.md"), MARGINS: record[MARGINS]}
    names = datasets or [d for f in loso_folds(spie) for d in f.datasets]
    result = run_evaluation(
        names,
        out_dir,
        spex=spex,
        mvpnet=mvpnet,
        methods=tuple(methods or LOSO_METHODS),
        progress=logger.info,
        per_target=per_target,
    )
    rows = result["rows"]
    create_markdown_artifact(
        key="evaluate-spex-scenes",
        markdown=f"# SPEX scene-level evaluation\n\n{iou_table(rows)}\n\n"
        f"margin over the baselines: `{result[MARGINS]}`",
    )
    create_table_artifact(key="evaluate-spex-scenes-rows", table=rows)
    logger.info("margin over the baselines: %s", result[MARGINS])
    return {"paths": result["paths"], MARGINS: result[MARGINS]}


if __name__ == "__main__":
    evaluate_spex()
