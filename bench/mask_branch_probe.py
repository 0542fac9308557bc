"""Which prompt lets SPEX's mask branch learn? A probe on cached stage-1 features.

The full stage 2 takes ~20 min on 2 cores and, with the paper's prompt set (the TCP
tokens alone), never left the constant-mask plateau. This probe isolates the question:
the stage-1 checkpoint's encoder maps, MSAM map and teacher-forced response hidden
states are computed once for the train and val splits (no augmentation), then only the
mask branch (MSAM decoder projection, TCP, SAM decoder, fine-detail path) is trained
from the same initial weights with each prompt set, and pooled IoU per target is
reported on train and val. Seconds per variant instead of minutes per epoch.

    python bench/mask_branch_probe.py --checkpoint out/train/tiny/stage1/model
    python bench/mask_branch_probe.py --steps 800 --variants tcp target tcp+target

Variants: ``tcp`` (the paper's prompt: the compressed description), ``target`` (the
target token only), ``tcp+target`` (what the tiny model ships). Decisions use val only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import load_checkpoint
from model.msam import visual_tokens
from model.spex import SpexModel, dice_loss
from model.stages import MASK_BRANCH
from model.training.data import SpieIndex, text_batches, truncate_responses

VARIANTS = ("tcp", "target", "tcp+target")


def cache_split(
    model: SpexModel, spie: str, split: str, bands: tuple[str, ...], tokens: int
) -> list[dict]:
    """Encoder maps, fused map, response hidden states and masks of one split."""
    cfg = model.config
    out = []
    with torch.no_grad():
        for b in text_batches(SpieIndex(spie, split=split), bands, cfg.input_size, None, 8, 0, 0):
            maps, fused = model.encode_maps(b.pixels)
            responses = truncate_responses(b.responses, model.llm.tokenizer, tokens)
            packed = model.llm.pack(
                visual_tokens(fused, cfg.visual_token_budget),
                b.instructions,
                cfg.system_prompt,
                responses,
            )
            hidden, _ = model.llm.hidden_states(
                packed.embeds, packed.attention_mask, packed.position_ids
            )
            out.append(
                {
                    "maps": maps,
                    "fused": fused,
                    "hidden": hidden,
                    "keep": packed.response_mask,
                    "masks": b.masks,
                    "valid": b.valid,
                    "targets": b.targets,
                }
            )
    return out


def logits(model: SpexModel, d: dict, variant: str) -> torch.Tensor:
    """Mask logits with the variant's prompt set (TCP tokens and/or the target token)."""
    parts = []
    if "tcp" in variant:
        parts.append(model.tcp(d["hidden"], d["keep"]))
    if "target" in variant:
        parts.append(model.target_tokens(d["targets"]))
    detail = model.detail(d["maps"]) if model.detail is not None else None
    out = model.decoder(model.msam.decoder_embedding(d["fused"]), torch.cat(parts, 1), detail)
    size = model.config.input_size
    return F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def pooled_iou(model: SpexModel, data: list[dict], variant: str) -> dict[str, float]:
    counts: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for d in data:
            pred, truth, valid = logits(model, d, variant) > 0, d["masks"] > 0.5, d["valid"]
            for i, target in enumerate(d["targets"]):
                c = counts.setdefault(target, np.zeros(3))
                p, t, v = pred[i], truth[i], valid[i]
                c += [(p & t & v).sum(), (p & ~t & v).sum(), (~p & t & v).sum()]
    return {t: round(float(c[0] / max(1.0, c.sum())), 3) for t, c in sorted(counts.items())}


def train_variant(
    base: SpexModel,
    train: list[dict],
    val: list[dict],
    variant: str,
    steps: int,
    lr: float,
    seed: int,
) -> dict:
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    params = [p for n, p in model.named_parameters() if n.startswith(MASK_BRANCH)]
    opt = torch.optim.AdamW(params, lr=lr)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(steps):
        d = train[rng.integers(len(train))]
        lg, w = logits(model, d, variant), d["valid"].float()
        bce = (F.binary_cross_entropy_with_logits(lg, d["masks"], reduction="none") * w).sum()
        loss = base.config.loss_bce * bce / w.sum().clamp(
            min=1.0
        ) + base.config.loss_dice * dice_loss(lg, d["masks"], w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {
        "variant": variant,
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
        "train_iou": pooled_iou(model, train, variant),
        "val_iou": pooled_iou(model, val, variant),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="out/train/tiny/stage1/model")
    ap.add_argument("--spie", default="out/spie")
    ap.add_argument("--bands", nargs="+", default=["B", "G", "R", "N", "S1"])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_checkpoint(args.checkpoint)
    if model.target_tokens is None or model.detail is None:
        sys.exit(
            f"{args.checkpoint}: needs a checkpoint with the detail path and target "
            "tokens (any stage-1 checkpoint of the current tiny config)"
        )
    bands = tuple(args.bands)
    train = cache_split(model, args.spie, "train", bands, 32)
    val = cache_split(model, args.spie, "val", bands, 32)
    for variant in args.variants:
        print(
            json.dumps(train_variant(model, train, val, variant, args.steps, args.lr, args.seed)),
            flush=True,
        )


if __name__ == "__main__":
    main()
