"""Prefect flow ``retrain-on-new-data``: rebuild SPIE, train, evaluate, promote or keep.

Triggered by ``spex.dataset.changed`` (flows/watch_datasets.py). The recipe:
extend the SPIE store with the changed data set(s) -> train with the configured stages
-> evaluate the candidate and the current default on the same split -> register the
candidate -> promote it only if it does not regress on any data set and target
(:mod:`model.promotion`); otherwise keep the default and say why in the run's artifact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.generate_spie import generate_spie
from flows.train_spex import train_spex
from model.promotion import decide, iou_by_key
from model.registry import ModelRegistry
from model.training.evaluate import run_evaluation
from pipeline.spie.watch import dataset_content_hash


@flow(name="retrain-on-new-data")
def retrain_on_new_data(
    dataset: str | None = None,
    datasets: list[str] | None = None,
    spie_dir: str = "out/spie",
    train_config: str = "model/training/configs/tiny.yaml",
    out_dir: str = "out/retrain",
    split: str = "test",
    tolerance: float = 0.0,
    registry: str | None = None,
) -> dict:
    """Retrain on the changed data set(s) and promote only without regression."""
    logger = get_run_logger()
    names = [*(datasets or []), *([dataset] if dataset else [])]
    if not names:
        raise ValueError("retrain-on-new-data needs dataset= or datasets=")
    run = Path(out_dir) / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    generate_spie(datasets=names, out_dir=spie_dir)
    trained = train_spex(config=train_config, out=str(run / "train"), spie=spie_dir)
    candidate = trained["checkpoint"]
    if candidate is None:
        raise ValueError(f"{train_config} trains no SPEX stage (1 or 2): nothing to promote")

    reg = ModelRegistry(registry)
    incumbent = reg.resolve("default")
    method = "index-otsu" if incumbent == "index" else "spex"
    incumbent_eval = run_evaluation(
        spie_dir,
        run / "eval-incumbent",
        spex=None if incumbent == "index" else incumbent,
        mvpnet=None,
        split=split,
        methods=(method,),
    )
    candidate_eval = run_evaluation(
        spie_dir,
        run / "eval-candidate",
        spex=candidate,
        mvpnet=None,
        split=split,
        methods=("spex",),
    )
    decision = decide(
        iou_by_key(incumbent_eval["rows"], method),
        iou_by_key(candidate_eval["rows"], "spex"),
        incumbent_name=incumbent if incumbent == "index" else Path(incumbent).name,
        candidate_name="candidate",
        tolerance=tolerance,
    )
    entry = reg.register(
        candidate,
        training_data={name: dataset_content_hash(name) for name in names},
        evaluation={"split": split, "rows": candidate_eval["rows"]},
        notes=f"retrain-on-new-data {run.name}: {decision.reason}",
    )
    if decision.promote:
        reg.promote(entry.version)
    logger.info("%s (registered as %s)", decision.reason, entry.version)
    create_markdown_artifact(
        key="retrain-decision",
        markdown=f"# Retraining on {', '.join(names)}\n\nCandidate registered as "
        f"`{entry.version}`.\n\n{decision.markdown()}\n",
        description="promotion decision of retrain-on-new-data",
    )
    return {
        "version": entry.version,
        "promoted": decision.promote,
        "reason": decision.reason,
        "default": reg.default_version(),
        "run": str(run),
    }
