"""Prefect flow ``retrain-on-new-data``: rebuild SPIE, select by leave-one-scene-out,
train, register, promote per target or keep.

Triggered by ``spex.dataset.changed`` (flows/watch_datasets.py). The recipe: extend the
SPIE store with the changed data set(s) -> leave-one-scene-out over every labelled place
of the store with the configured recipe, then the recipe on every place
(:func:`model.training.loso.run_loso`) -> the promotion rule per target
(:mod:`model.promotion`: mean IoU above index + Otsu and no held-out scene worse by more
than 0.05) -> register the candidate with its evidence -> promote it for the targets it
wins, the index staying the default for the others; when it wins none, the current
default stays and the run's artifact says why.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.generate_spie import generate_spie
from model.registry import ModelRegistry
from model.training.config import load_config
from model.training.loso import run_loso
from pipeline.spie.watch import dataset_content_hash


@flow(name="retrain-on-new-data")
def retrain_on_new_data(
    dataset: str | None = None,
    datasets: list[str] | None = None,
    spie_dir: str = "out/spie",
    train_config: str = "model/training/configs/tiny.yaml",
    out_dir: str = "out/retrain",
    registry: str | None = None,
) -> dict:
    """Retrain on the changed data set(s); promote per target on held-out evidence."""
    logger = get_run_logger()
    names = [*(datasets or []), *([dataset] if dataset else [])]
    if not names:
        raise ValueError("retrain-on-new-data needs dataset= or datasets=")
    run = Path(out_dir) / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    generate_spie(datasets=names, out_dir=spie_dir)
    cfg = load_config(train_config, spie=spie_dir, out=str(run))
    record = run_loso(cfg, run, final=True, config_name=train_config, progress=logger.info)
    served = sorted(t for t, d in record["decisions"].items() if d["serve"])
    reasons = "; ".join(d["reason"] for d in record["decisions"].values())
    reg = ModelRegistry(registry)
    entry = reg.register(
        record["meta"]["final"]["spex"],
        training_data={name: dataset_content_hash(name) for name in names},
        evaluation={
            "protocol": "leave-one-scene-out",
            "decisions": record["decisions"],
            "rows": record["rows"],
        },
        notes=f"retrain-on-new-data {run.name}: "
        + (f"promoted for {', '.join(served)}" if served else "not promoted")
        + f" ({reasons})",
    )
    if served:
        reg.promote(entry.version, targets=served)
    logger.info("%s: default for %s (%s)", entry.version, served or "no target", reasons)
    create_markdown_artifact(
        key="retrain-decision",
        markdown=f"# Retraining on {', '.join(names)}\n\nCandidate registered as "
        f"`{entry.version}`, default for: {', '.join(served) or 'no target'}.\n\n"
        + (run / "loso.md").read_text(),
        description="promotion decision of retrain-on-new-data",
    )
    return {
        "version": entry.version,
        "promoted": bool(served),
        "default_for": served,
        "reason": reasons,
        "default": reg.default_version(),
        "run": str(run),
    }
