"""The three training stages of SPEX, wired onto :func:`model.training.loop.run_stage`.

- stage 0 (:func:`stage0`): MVPNet (SPEX encoder + UperNet-style head), partial-label
  cross-entropy over "other" and the catalog's targets; its encoder initialises SPEX;
- stage 1 (:func:`stage1`): encoder + MSAM + LLM on the text loss over all SPIE subsets.
  The LLM trains through LoRA (``stage1.llm: lora``, the paper's setting with a
  pretrained Qwen) or whole (``full``: the tiny LM starts from random weights, so LoRA
  on top of noise would have nothing to adapt; this stands in for language
  pre-training);
- stage 2 (:func:`stage2`): LLM frozen (base and LoRA); encoder, MSAM, TCP and mask
  decoder on text CE + BCE + Dice with the configured weights (paper 1:1:1, the
  authors' release 1:2:1).

Each stage writes ``<out>/stage<N>/state.pt`` every epoch and its product when done
(``mvpnet/`` for stage 0, a SPEX checkpoint ``model/`` for stages 1 and 2); a stage
whose product exists and whose last state covers all its epochs is skipped, so the
whole run resumes after an interruption at the epoch it reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import CONFIGS
from model.responses import truncate_responses
from model.spex import SpexModel
from model.stages import set_stage, trainable_groups
from model.threads import torch_threads
from model.training.config import TrainConfig
from model.training.data import (
    SpieIndex,
    balance_targets,
    balanced_weight,
    seg_batches,
    text_batches,
)
from model.training.loop import EpochCallback, Stage, StepCallback, load_state, run_stage
from model.training.mvpnet import MVPNet, load_mvpnet, partial_label_ce, save_mvpnet

KIND = "spex-staged"


def stage_dir(cfg: TrainConfig, n: int) -> Path:
    return Path(cfg.out) / f"stage{n}"


def product_dir(cfg: TrainConfig, n: int) -> Path:
    """Where stage ``n`` leaves its result (MVPNet folder or SPEX checkpoint)."""
    return stage_dir(cfg, n) / ("mvpnet" if n == 0 else "model")


def finished(cfg: TrainConfig, n: int) -> bool:
    state = load_state(stage_dir(cfg, n))
    marker = "mvpnet.json" if n == 0 else "config.json"
    return (
        state is not None
        and state["epoch"] >= cfg.stage(n).epochs
        and (product_dir(cfg, n) / marker).is_file()
    )


def spex_config(cfg: TrainConfig):
    """The SPEX architecture of this run (bands, input size, loss weights)."""
    text, bce, dice = cfg.loss_weights
    return CONFIGS[cfg.model](
        bands=tuple(cfg.bands),
        input_size=cfg.input_size,
        loss_text=text,
        loss_bce=bce,
        loss_dice=dice,
    )


def prepare_data(cfg: TrainConfig, progress: Callable[[str], None] | None = None) -> None:
    """Build the config's data sets into its SPIE store where they are missing (a
    store already holding them gains nothing; see pipeline.spie.build)."""
    from pipeline.spie.build import build

    for name in cfg.datasets or ():
        report = build(name, cfg.spie)
        if progress and report.n_samples:
            progress(f"SPIE {name}: {report.n_samples} new samples")


def training_index(cfg: TrainConfig, targets: Sequence[str] | None = None) -> SpieIndex:
    """The SPIE samples this run trains on (split, subsets, targets, held-out places)."""
    return SpieIndex(
        cfg.spie,
        split=cfg.split,
        subsets=cfg.subsets,
        targets=targets,
        exclude_places=cfg.exclude_places,
    )


def _record(cfg: TrainConfig, n: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": KIND,
        "stage": n,
        "config": cfg.to_dict(),
        "epochs": history,
        "note": "trained by model.training on the SPIE train splits; see docs/evaluation.md",
    }


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- stage 0 ---------------------------------------------------------------------------


def stage0(
    cfg: TrainConfig, on_step: StepCallback | None = None, on_epoch: EpochCallback | None = None
) -> list[dict[str, Any]]:
    """Visual pre-training: MVPNet on the train split of every labelled subset."""
    device = _device()
    torch.manual_seed(cfg.seed)
    spex = spex_config(cfg)
    model = MVPNet(spex).to(device)
    index = training_index(cfg)
    if not len(index):
        raise ValueError(f"{cfg.spie}: no samples to train on (subsets {cfg.subsets})")
    sc = cfg.stage0
    n_items = sc.samples_per_epoch or len(index.images_with_masks())

    def batches(epoch: int):
        return seg_batches(
            index,
            spex,
            cfg.augment,
            sc.batch_size,
            cfg.seed,
            epoch,
            sc.samples_per_epoch,
            classes=model.classes,
        )

    def loss(batch) -> dict[str, torch.Tensor]:
        logits = model(batch.pixels.to(device))
        return {"loss": partial_label_ce(logits, batch.allowed.to(device), cfg.balance_classes)}

    stage = Stage(
        "stage0",
        stage_dir(cfg, 0),
        model,
        {"vision": list(model.parameters())},
        sc,
        batches,
        -(-n_items // sc.batch_size),
        loss,
        device,
    )
    history = run_stage(stage, on_step=on_step, on_epoch=on_epoch)
    save_mvpnet(model.cpu(), product_dir(cfg, 0), training=_record(cfg, 0, history))
    return history


# -- stages 1 and 2 --------------------------------------------------------------------


def _text_stage(
    n: int,
    cfg: TrainConfig,
    model: SpexModel,
    device: torch.device,
    on_step: StepCallback | None,
    on_epoch: EpochCallback | None,
    with_masks: bool,
) -> list[dict[str, Any]]:
    sc = cfg.stage(n)
    index = training_index(cfg, cfg.targets)
    if sc.balance_targets:
        index.rows = balance_targets(index.rows, cfg.seed)
    if not len(index):
        raise ValueError(
            f"{cfg.spie}: no samples for subsets {cfg.subsets} and targets {cfg.targets}"
        )
    tok = model.llm.tokenizer
    spex = model.config

    def batches(epoch: int):
        return text_batches(
            index, spex, cfg.augment, sc.batch_size, cfg.seed + n, epoch, sc.samples_per_epoch
        )

    def loss(batch) -> dict[str, torch.Tensor]:
        responses = truncate_responses(batch.responses, tok, cfg.response_tokens)
        out = model(
            batch.pixels.to(device),
            batch.instructions,
            responses,
            masks=batch.masks.to(device) if with_masks else None,
            mask_valid=batch.valid.to(device) if with_masks else None,
            targets=batch.targets,
            prior=batch.prior.to(device),
            prior_present=batch.prior_present.to(device),
            text_grad=sc.text_grad,
            bce_weight=balanced_weight(batch.masks, batch.valid).to(device)
            if with_masks and cfg.balance_classes
            else None,
        )
        parts = {"loss": out.loss, "text": out.text_loss}
        if with_masks:
            parts |= {"bce": out.bce_loss, "dice": out.dice_loss}
        return {k: v for k, v in parts.items() if v is not None}

    stage = Stage(
        f"stage{n}",
        stage_dir(cfg, n),
        model,
        trainable_groups(model),
        sc,
        batches,
        -(-(sc.samples_per_epoch or len(index)) // sc.batch_size),
        loss,
        device,
    )
    history = run_stage(stage, on_step=on_step, on_epoch=on_epoch)
    model.cpu()
    save_checkpoint(model, product_dir(cfg, n), training=_record(cfg, n, history))
    return history


def stage1(
    cfg: TrainConfig, on_step: StepCallback | None = None, on_epoch: EpochCallback | None = None
) -> list[dict[str, Any]]:
    """Text-only training; the encoder starts from stage 0's when that exists."""
    device = _device()
    torch.manual_seed(cfg.seed + 1)
    model = SpexModel(spex_config(cfg))
    mvp = product_dir(cfg, 0)
    if (mvp / "mvpnet.json").is_file():
        model.encoder.load_state_dict(load_mvpnet(mvp).encoder.state_dict())
    set_stage(model, 1)
    if cfg.stage1.llm == "full":
        model.llm.requires_grad_(True)
    model.to(device)
    return _text_stage(1, cfg, model, device, on_step, on_epoch, with_masks=False)


def stage2(
    cfg: TrainConfig, on_step: StepCallback | None = None, on_epoch: EpochCallback | None = None
) -> list[dict[str, Any]]:
    """Mask training with the LLM frozen, from ``init_from`` or this run's stage-1
    checkpoint (or from scratch with stage 0's encoder when stage 1 was skipped)."""
    device = _device()
    torch.manual_seed(cfg.seed + 2)
    prev = Path(cfg.init_from) if cfg.init_from else product_dir(cfg, 1)
    if cfg.init_from and not (prev / "config.json").is_file():
        raise FileNotFoundError(f"init_from {prev}: no SPEX checkpoint (run stage 1 first)")
    if (prev / "config.json").is_file():
        model = load_checkpoint(prev)
        text, bce, dice = cfg.loss_weights
        model.config = replace(model.config, loss_text=text, loss_bce=bce, loss_dice=dice)
    else:
        model = SpexModel(spex_config(cfg))
        mvp = product_dir(cfg, 0)
        if (mvp / "mvpnet.json").is_file():
            model.encoder.load_state_dict(load_mvpnet(mvp).encoder.state_dict())
    set_stage(model, 2)
    model.to(device)
    return _text_stage(2, cfg, model, device, on_step, on_epoch, with_masks=True)


STAGES: dict[int, Callable[..., list[dict[str, Any]]]] = {0: stage0, 1: stage1, 2: stage2}


def train(
    cfg: TrainConfig,
    *,
    on_step: Callable[[int, int, int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> dict[int, list[dict[str, Any]]]:
    """Run the configured stages in order, skipping finished ones; returns histories.
    Callbacks get the stage number first."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    histories: dict[int, list[dict[str, Any]]] = {}
    for n in cfg.stages:
        step_cb = (lambda s, t, losses, n=n: on_step(n, s, t, losses)) if on_step else None
        epoch_cb = (lambda e, r, n=n: on_epoch(n, e, r)) if on_epoch else None
        histories[n] = train_stage(cfg, n, step_cb, epoch_cb)
    return histories


def train_stage(
    cfg: TrainConfig,
    n: int,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, Any]]:
    """Stage ``n`` of the run with the recipe's torch thread count, or, when it is
    finished already, its recorded history; returns the per-epoch history."""
    if finished(cfg, n):
        state = load_state(stage_dir(cfg, n))
        return list(state["history"]) if state else []
    with torch_threads(cfg.threads):
        return STAGES[n](cfg, on_step, on_epoch)


def summary_markdown(cfg: TrainConfig, histories: dict[int, list[dict[str, Any]]]) -> str:
    """A run's summary: its final checkpoint and each stage's first and last loss."""
    checkpoint = final_model(cfg) if set(cfg.stages) & {1, 2} else None
    lines = [f"# train-spex: {cfg.out}", "", f"final checkpoint: `{checkpoint}`", ""]
    for n, hist in histories.items():
        if hist:
            lines.append(
                f"- stage {n}: {len(hist)} epochs, first loss {hist[0]['loss']}, "
                f"last loss {hist[-1]['loss']}"
            )
    return "\n".join(lines)


def per_target_overrides(cfg: TrainConfig, targets: Sequence[str]) -> dict[str, Any]:
    """The per-target variant of a run, as the paper trains one model per subset: stage
    2 only, on ``targets``' samples, starting from the run's stage-1 checkpoint (stages 0
    and 1 learn the image and the language, which every target shares), written to
    ``<out>-<targets>``. Evaluated beside the one-model-for-all as ``spex-per-target``.
    Returned as field overrides so that flows can pass them on as parameters."""
    from pipeline.targets import load_target

    targets = tuple(load_target(t).name for t in targets)  # unknown: CatalogError
    return {
        "targets": targets,
        "stages": (2,),
        "init_from": str(product_dir(cfg, 1)),
        "out": f"{cfg.out}-{'-'.join(targets)}",
    }


def per_target_config(cfg: TrainConfig, targets: Sequence[str]) -> TrainConfig:
    """:func:`per_target_overrides` applied to ``cfg``."""
    return replace(cfg, **per_target_overrides(cfg, targets))


def final_model(cfg: TrainConfig) -> Path:
    """The SPEX checkpoint a run delivers (stage 2's, else stage 1's)."""
    for n in (2, 1):
        if (product_dir(cfg, n) / "config.json").is_file():
            return product_dir(cfg, n)
    raise FileNotFoundError(f"{cfg.out}: no SPEX checkpoint yet")
