"""A short run of each stage on real patches lowers that stage's loss.

The loss is measured on the same fixed batch (first batch of epoch 0, no augmentation,
eval mode) before and after training, so the comparison is not blurred by batch-to-batch
variation of a handful of steps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from model.responses import truncate_responses
from model.training.data import SpieIndex, seg_batches, text_batches
from model.training.mvpnet import load_mvpnet, partial_label_ce
from model.training.stages import (
    per_target_config,
    product_dir,
    stage0,
    stage1,
    stage2,
    train,
)


def _seg_loss(cfg, model) -> float:
    from model.training.stages import spex_config

    index = SpieIndex(cfg.spie, split="train")
    batch = next(seg_batches(index, spex_config(cfg), None, 4, cfg.seed, 0))
    with torch.no_grad():
        return float(partial_label_ce(model.eval()(batch.pixels), batch.allowed))


def _text_loss(cfg, model, masks: bool) -> float:
    index = SpieIndex(cfg.spie, split="train")
    batch = next(text_batches(index, model.config, None, 4, cfg.seed, 0))
    responses = truncate_responses(batch.responses, model.llm.tokenizer, cfg.response_tokens)
    with torch.no_grad():
        out = model.eval()(
            batch.pixels,
            batch.instructions,
            responses,
            masks=batch.masks if masks else None,
            mask_valid=batch.valid if masks else None,
            targets=batch.targets,
            prior=batch.prior,
            prior_present=batch.prior_present,
        )
    return float(out.loss)


def test_stage0_lowers_loss(quick_config):
    cfg = replace(quick_config, stage0=replace(quick_config.stage0, epochs=3))
    torch.manual_seed(cfg.seed)
    from model.training.mvpnet import MVPNet
    from model.training.stages import spex_config

    before = _seg_loss(cfg, MVPNet(spex_config(cfg)))
    history = stage0(cfg)
    after = _seg_loss(cfg, load_mvpnet(product_dir(cfg, 0)))
    assert len(history) == 3 and history[-1]["step"] == 9
    assert after < before


def test_stage1_and_stage2_lower_their_losses(quick_config, two_scenes):
    from model.checkpoint import load_checkpoint
    from model.spex import SpexModel
    from model.training.stages import spex_config

    cfg = quick_config
    torch.manual_seed(cfg.seed + 1)
    before1 = _text_loss(cfg, SpexModel(spex_config(cfg)), masks=False)
    stage1(cfg)
    m1 = load_checkpoint(product_dir(cfg, 1))
    after1 = _text_loss(cfg, m1, masks=False)
    assert after1 < before1

    # Stage 2 through the trainer and the stage code; its mask branch starts from
    # zero-ish logits and needs a few dozen steps on one batch to move (measured: BCE
    # 0.69 -> 0.37 in 20 steps), so the product of stage2() is checked for freezing and
    # the loss decrease on a fixed batch repeated through run_stage.
    stage2(cfg)
    m2 = load_checkpoint(product_dir(cfg, 2))
    for k, v in m2.llm.state_dict().items():  # stage 2 keeps the LLM frozen
        assert torch.equal(v, m1.llm.state_dict()[k]), k

    # The per-target variant: stage 2 only, on water samples, from this run's stage 1.
    from model.checkpoint import read_training

    water = per_target_config(cfg, ["water"])
    assert water.stages == (2,) and water.out == f"{cfg.out}-water"
    train(water)
    assert not (Path(water.out) / "stage0").exists() and not (Path(water.out) / "stage1").exists()
    mw = load_checkpoint(product_dir(water, 2))
    for k, v in mw.llm.state_dict().items():
        assert torch.equal(v, m1.llm.state_dict()[k]), k
    assert read_training(product_dir(water, 2))["config"]["targets"] == ["water"]

    # ... and it is evaluated as 'spex-per-target' for its own target only.
    from model.training.evaluate import evaluate_scenes, per_target_factory

    factory = per_target_factory({"water": product_dir(water, 2)})
    assert factory is not None
    rows = evaluate_scenes([two_scenes["crop-berlin"]], {"spex-per-target": factory})
    assert rows and {r["target"] for r in rows} == {"water"}
    assert {r["method"] for r in rows} == {"spex-per-target"}

    from model.stages import set_stage, trainable_groups
    from model.training.loop import Stage, run_stage

    set_stage(m1, 2)
    index = SpieIndex(cfg.spie, split="train")
    batch = next(text_batches(index, m1.config, None, 4, cfg.seed, 0))
    responses = truncate_responses(batch.responses, m1.llm.tokenizer, cfg.response_tokens)

    def loss(b):
        out = m1(
            b.pixels,
            b.instructions,
            responses,
            masks=b.masks,
            mask_valid=b.valid,
            targets=b.targets,
            prior=b.prior,
            prior_present=b.prior_present,
        )
        return {"loss": out.loss}

    before2 = _text_loss(cfg, m1, masks=True)
    sc = replace(cfg.stage2, epochs=6, max_steps_per_epoch=None, lr_vision=3e-3)
    run_stage(
        Stage(
            "stage2",
            Path(cfg.out) / "fixed",
            m1,
            trainable_groups(m1),
            sc,
            lambda epoch: [batch] * 4,
            4,
            loss,
        )
    )
    assert _text_loss(cfg, m1, masks=True) < before2
