"""Prefect flow ``train-spex``: the staged SPEX training as sub-flows.

config file -> its data sets into the SPIE store (those missing) -> stage 0 (MVPNet) ->
stage 1 (text) -> stage 2 (text + mask), each a sub-flow over
:mod:`model.training.stages`; every epoch is checkpointed by the library, so re-running
the flow (or a retry) resumes where an interruption stopped it. Losses go to the run log
per epoch and to a table artifact per stage.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.artifacts import artifact_key, publish_markdown
from model.training.config import load_config
from model.training.stages import (
    final_model,
    finished,
    per_target_overrides,
    prepare_data,
    stage_dir,
    summary_markdown,
    train_stage,
)


def _stage(n: int, config: str, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = load_config(config, **overrides)
    logger = get_run_logger()
    if finished(cfg, n):
        logger.info("stage %d already finished in %s; skipped", n, stage_dir(cfg, n))
        return train_stage(cfg, n)

    def on_epoch(epoch: int, record: dict[str, Any]) -> None:
        logger.info("stage %d epoch %d/%d: %s", n, epoch, cfg.stage(n).epochs, record)

    history = train_stage(cfg, n, on_epoch=on_epoch)
    create_table_artifact(
        key=artifact_key(cfg.out, f"stage{n}", "losses"),
        table=history,
        description=f"stage {n} per-epoch losses ({cfg.out})",
    )
    return history


@flow(name="train-spex-stage0")
def stage0_flow(config: str, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Visual pre-training (MVPNet)."""
    return _stage(0, config, overrides or {})


@flow(name="train-spex-stage1")
def stage1_flow(config: str, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Encoder + MSAM + LLM on the text loss."""
    return _stage(1, config, overrides or {})


@flow(name="train-spex-stage2")
def stage2_flow(config: str, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """LLM frozen; text CE + BCE + Dice."""
    return _stage(2, config, overrides or {})


SUBFLOWS = {0: stage0_flow, 1: stage1_flow, 2: stage2_flow}


@flow(name="train-spex")
def train_spex(
    config: str = "model/training/configs/tiny.yaml",
    out: str | None = None,
    spie: str | None = None,
    seed: int | None = None,
    targets: list[str] | None = None,
) -> dict[str, Any]:
    """Run the configured stages; returns the final checkpoint folder and histories.
    ``targets``: train the per-target variant instead (stage 2 on those targets only,
    from the stage-1 checkpoint of the run in ``out``, into ``<out>-<targets>``; as
    ``spex train --target``)."""
    overrides: dict[str, Any] = {
        k: v for k, v in {"out": out, "spie": spie, "seed": seed}.items() if v
    }
    if targets:
        overrides |= per_target_overrides(load_config(config, **overrides), targets)
    cfg = load_config(config, **overrides)
    prepare_data(cfg, get_run_logger().info)
    histories = {n: SUBFLOWS[n](config, overrides) for n in cfg.stages}
    checkpoint = str(final_model(cfg)) if set(cfg.stages) & {1, 2} else None
    publish_markdown(
        summary_markdown(cfg, histories), f"training summary ({cfg.out})", cfg.out, "summary"
    )
    return {"checkpoint": checkpoint, "histories": {str(k): v for k, v in histories.items()}}


if __name__ == "__main__":
    train_spex()
