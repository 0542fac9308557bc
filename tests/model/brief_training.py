"""Test scaffolding: smoke-level ("brief") training of the tiny SPEX model on the bundled
Sentinel-2 sample.

What it is for: the model tests need SPEX weights that run end to end through the
extraction job and say something readable, trained in seconds. What it is not: a
trained model (``spex train`` makes those). It fits a few hundred steps at
most, on tiles cut from ONE scene (``samples/s2_l1c_berlin_20170216.tif``), with
targets that are the APG's own coarse Otsu mask (nodata ignored) and responses
from a fixed template that restates the APG's region list. A model trained this way
can at best learn to imitate the APG; its masks are not evidence of anything, and it
is never the project's default model. Its checkpoint carries a ``training.json``
record (``"kind": "brief-smoke"``) that the extractor's provenance repeats, so every
mask made with it says so.

Recipe, kept close to the inference path so the weights fit what the job feeds them:

- crops of the model's input size (its native-resolution window) at seeded random
  offsets, each randomly flipped/rotated; the APG runs on the crop (as inference does
  per window), the evidence and prior come from the crop with the scene's index
  statistics (model/evidence.py), as the extractor computes them;
- stage-2 losses (text CE + BCE + Dice, weights from the config). Unlike the paper's
  stage 2 the LLM is NOT frozen by default (``trainable="all"``): the tiny LM is
  randomly initialised, so freezing it would leave nothing able to learn the text.
  ``trainable="stage2"`` gives the paper's freezing for experiments;
- AdamW, linear warm-up, gradient clipping, seeded, CPU. One intra-op thread by
  default: on the project's shared 2-core machine, two OpenMP threads competing with
  other processes ran a step 5x slower (3.0 s against 0.59 s at batch 2, measured), and
  at this model size a second thread gains little even on an idle machine.

    python tests/model/brief_training.py --out checkpoints/brief --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import save_checkpoint
from model.config import tiny
from model.evidence import fit_scene_stats, tile_inputs
from model.spex import SpexModel
from model.stages import set_stage
from model.threads import torch_threads
from pipeline.mask_codes import MASK_NODATA

REPO = Path(__file__).resolve().parents[2]
SAMPLE_SCENE = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
KIND = "brief-smoke"
IGNORE = MASK_NODATA


@dataclass(frozen=True)
class BriefTrainingSettings:
    """Everything that determines the brief run (stored in ``training.json``)."""

    scene: str = str(SAMPLE_SCENE)
    target: str = "water"
    steps: int = 100
    batch_size: int = 4
    n_tiles: int = 48
    input_size: int = 128
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.01
    trainable: str = "all"
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"brief training is for 1..1000 steps, got {self.steps}")
        if self.trainable not in ("all", "stage2"):
            raise ValueError(f"trainable must be 'all' or 'stage2', got {self.trainable!r}")
        if self.batch_size < 1 or self.n_tiles < 1 or self.threads < 1:
            raise ValueError("batch_size, n_tiles and threads must be >= 1")


@dataclass
class Example:
    """One training tile at model input size."""

    pixels: torch.Tensor  # (C_ev, S, S) float32 evidence (model.evidence)
    mask: torch.Tensor  # (S, S) uint8 mask codes; IGNORE (nodata) is not scored
    prior: torch.Tensor  # (S, S) prior logits of the target
    prior_present: bool
    instruction: str
    response: str


def describe_regions(target: str, regions: Sequence[Any], n_total: int) -> str:
    """The deterministic response template: region count, then the largest region's
    size class and location, exactly as the APG states them (so the text is checkable
    against the instruction, and short enough for the tiny model's token budget)."""
    if not regions:
        return f"There is no {target} in this image."
    largest = regions[0]
    if n_total == 1:
        return (
            f"The image contains one {target} region. It is {largest.size} and lies in "
            f"the {largest.location} part."
        )
    return (
        f"The image contains {n_total} {target} regions. The largest {target} region is "
        f"{largest.size} and lies in the {largest.location} part."
    )


def make_examples(s: BriefTrainingSettings, bands: Sequence[str]) -> list[Example]:
    """Seeded crops of the scene with APG instructions, masks and template responses."""
    from pipeline.apg import run_apg
    from pipeline.scene import open_scene

    scene = open_scene(s.scene)
    scene_bands = tuple(str(b) for b in scene["band"].values)
    sensor = scene.attrs.get("sensor")
    cfg = tiny(bands=tuple(bands), input_size=s.input_size)
    stats = fit_scene_stats(scene, cfg)
    full = np.asarray(scene.data.compute(scheduler="synchronous"), dtype=np.float32)
    _, height, width = full.shape
    size = s.input_size
    if height < size or width < size:
        raise ValueError(f"scene {height}x{width} is smaller than the {size} px crop")
    rng = np.random.default_rng(s.seed)
    examples: list[Example] = []
    for _ in range(s.n_tiles):
        r = int(rng.integers(0, height - size + 1))
        c = int(rng.integers(0, width - size + 1))
        px = full[:, r : r + size, c : c + size]
        px = np.rot90(px, k=int(rng.integers(0, 4)), axes=(1, 2))
        if rng.random() < 0.5:
            px = px[:, :, ::-1]
        px = np.ascontiguousarray(px)
        valid = np.isfinite(px).all(axis=0)
        apg = run_apg(px, scene_bands, s.target, valid=valid, sensor=sensor)
        ev, prior, present = tile_inputs(px, scene_bands, valid, s.target, stats, cfg)
        examples.append(
            Example(
                pixels=torch.from_numpy(ev),
                mask=torch.from_numpy(apg.mask.astype(np.uint8)),
                prior=torch.from_numpy(prior),
                prior_present=present,
                instruction=apg.instruction,
                response=describe_regions(s.target, apg.regions, apg.n_regions_total),
            )
        )
    return examples


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / max(1, warmup))


def brief_train(
    settings: BriefTrainingSettings | None = None,
    out: str | Path | None = None,
    *,
    bands: Sequence[str] | None = None,
    log_every: int = 0,
) -> tuple[SpexModel, dict[str, Any]]:
    """Train the tiny model briefly; save it to ``out`` when given. Returns the model
    (eval mode) and the training record (settings, data summary, loss history)."""
    s = settings or BriefTrainingSettings()
    with torch_threads(s.threads):  # a library call must not leave it changed
        return _train(s, out, bands, log_every)


def _train(
    s: BriefTrainingSettings,
    out: str | Path | None,
    bands: Sequence[str] | None,
    log_every: int,
) -> tuple[SpexModel, dict[str, Any]]:
    start = time.perf_counter()
    torch.manual_seed(s.seed)
    bands = tuple(bands) if bands is not None else tiny().bands
    examples = make_examples(s, bands)
    model = SpexModel(tiny(bands=bands, input_size=s.input_size))
    if s.trainable == "stage2":
        params = set_stage(model, 2)
    else:
        model.requires_grad_(True)
        for p in model.decoder.unused_parameters():
            p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: _lr_factor(k, s.warmup))
    gen = torch.Generator().manual_seed(s.seed)
    model.train()
    history: list[dict[str, float]] = []
    order = torch.randperm(len(examples), generator=gen).tolist()
    cursor = 0
    for step in range(s.steps):
        batch = []
        for _ in range(s.batch_size):
            if cursor == len(order):
                order = torch.randperm(len(examples), generator=gen).tolist()
                cursor = 0
            batch.append(examples[order[cursor]])
            cursor += 1
        pixels = torch.stack([e.pixels for e in batch])
        masks = torch.stack([e.mask for e in batch])
        valid = masks != IGNORE
        out_ = model(
            pixels,
            [e.instruction for e in batch],
            [e.response for e in batch],
            masks=torch.where(valid, masks, 0).float(),
            mask_valid=valid,
            targets=[s.target] * len(batch),
            prior=torch.stack([e.prior for e in batch]),
            prior_present=torch.tensor([e.prior_present for e in batch]),
        )
        opt.zero_grad(set_to_none=True)
        out_.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        rec = {
            "step": step,
            "loss": out_.loss.item(),
            "text": out_.text_loss.item() if out_.text_loss is not None else float("nan"),
            "bce": out_.bce_loss.item() if out_.bce_loss is not None else float("nan"),
            "dice": out_.dice_loss.item() if out_.dice_loss is not None else float("nan"),
        }
        history.append(rec)
        if log_every and (step % log_every == 0 or step == s.steps - 1):
            print(json.dumps({k: round(v, 4) for k, v in rec.items()}), flush=True)
    model.eval()
    n_empty = sum(e.response.startswith("There is no") for e in examples)
    record: dict[str, Any] = {
        "kind": KIND,
        "purpose": "smoke-level weights for tests and the demo; not a trained model",
        "settings": {**asdict(s), "scene": Path(s.scene).name},
        "data": {"tiles": len(examples), "tiles_without_target": n_empty},
        "first_loss": round(history[0]["loss"], 4),
        "final_loss": round(float(np.mean([h["loss"] for h in history[-10:]])), 4),
    }
    if out is not None:
        # Wall time stays out of the stored record: provenance (and so a job's resume
        # fingerprint) should depend on what the weights are, not on how busy the CPU was.
        save_checkpoint(model, out, training=record)
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["history"] = history
    return model, record


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train briefly, save the checkpoint, print the record (without history)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    defaults = BriefTrainingSettings()
    names = ("scene", "target", "steps", "batch_size", "n_tiles", "lr", "seed", "threads")
    for name in names:
        value = getattr(defaults, name)
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("--log-every", type=int, default=10)
    args = ap.parse_args(argv)
    s = replace(defaults, **{k: getattr(args, k) for k in names})
    _, record = brief_train(s, args.out, log_every=args.log_every)
    record.pop("history")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
