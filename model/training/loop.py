"""The one optimisation loop every stage uses: AdamW with per-group learning rates,
warm-up + cosine schedule, gradient accumulation, mixed precision on GPU, a checkpoint
at the end of every epoch, and resume from it.

Resume contract: ``state.pt`` holds the model and optimizer state, the scheduler, the
optimizer step and the number of finished epochs. Batch order and augmentation are pure
functions of (seed, epoch, position) (see :mod:`model.training.data`), so a run killed
after epoch e and restarted continues at epoch e + 1 with the same step count and the
same optimizer moments, and sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.inference import autocast_for
from model.training.config import StageConfig

STATE = "state.pt"

StepCallback = Callable[[int, int, dict[str, float]], None]  # (step, total, losses)
EpochCallback = Callable[[int, dict[str, Any]], None]  # (epoch, record)


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total`` optimizer steps."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(groups: dict[str, list[nn.Parameter]], cfg: StageConfig) -> torch.optim.AdamW:
    """AdamW with the paper's split: 'vision' at ``lr_vision``, 'llm' at ``lr_llm``, and
    the mask branch ('decoder') at ``lr_decoder`` (``lr_vision`` when unset)."""
    lr_dec = cfg.lr_vision if cfg.lr_decoder is None else cfg.lr_decoder
    lrs = {"vision": cfg.lr_vision, "decoder": lr_dec, "llm": cfg.lr_llm}
    params = [{"params": ps, "lr": lrs[name], "name": name} for name, ps in groups.items() if ps]
    return torch.optim.AdamW(params, weight_decay=cfg.weight_decay)


@dataclass
class Stage:
    """What the loop needs to know about one stage."""

    name: str
    folder: Path
    model: nn.Module
    groups: dict[str, list[nn.Parameter]]
    cfg: StageConfig
    batches: Callable[[int], Iterable[Any]]  # epoch -> batches
    batches_per_epoch: int
    loss: Callable[[Any], dict[str, torch.Tensor]]  # batch -> {'loss': ..., parts}
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    validate: Callable[[], dict[str, float]] | None = None

    @property
    def micro_steps(self) -> int:
        n = self.batches_per_epoch
        cap = self.cfg.max_steps_per_epoch
        return n if cap is None else min(n, cap * self.cfg.accumulate)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_steps / self.cfg.accumulate)


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_state(folder: Path) -> dict[str, Any] | None:
    """The last epoch checkpoint of a stage folder (tensors and plain data only)."""
    path = folder / STATE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def run_stage(
    stage: Stage,
    *,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, Any]]:
    """Train ``stage`` for its epochs (resuming when ``state.pt`` exists); returns the
    per-epoch history (mean losses, seconds, optional validation metrics)."""
    cfg = stage.cfg
    stage.folder.mkdir(parents=True, exist_ok=True)
    opt = build_optimizer(stage.groups, cfg)
    total = cfg.epochs * stage.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_factor(s, cfg.warmup_steps, total)
    )
    step, start_epoch, history = 0, 0, []
    state = load_state(stage.folder)
    if state is not None:
        stage.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, start_epoch, history = state["step"], state["epoch"], list(state["history"])
    params = [p for ps in stage.groups.values() for p in ps]
    use_scaler = stage.device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    for epoch in range(start_epoch, cfg.epochs):
        stage.model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        n = 0
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(stage.batches(epoch)):
            if i >= stage.micro_steps:
                break
            with autocast_for(stage.device):
                losses = stage.loss(batch)
            scaler.scale(losses["loss"] / cfg.accumulate).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n += 1
            last = i + 1 == stage.micro_steps
            if (i + 1) % cfg.accumulate == 0 or last:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                scaler.step(opt)
                scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                if on_step is not None:
                    on_step(step, total, {k: float(v.detach()) for k, v in losses.items()})
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "seconds": round(time.perf_counter() - t0, 2),
            **{k: round(v / max(1, n), 5) for k, v in sums.items()},
        }
        if stage.validate is not None:
            stage.model.eval()
            record.update({f"val_{k}": v for k, v in stage.validate().items()})
        history.append(record)
        _save(
            stage.folder / STATE,
            {
                "model": stage.model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "epoch": epoch + 1,
                "history": history,
            },
        )
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
    stage.model.eval()
    return history
