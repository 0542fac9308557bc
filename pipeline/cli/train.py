"""``spex train`` and ``spex eval``: the staged training and the evaluation from the
command line, with progress bars (no Prefect server needed).

Registered on the ``spex`` app in :mod:`pipeline.cli.main`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS = REPO / "model" / "weights" / "default"
DEFAULT_MVPNET = REPO / "model" / "weights" / "mvpnet"

ConfigOpt = Annotated[
    str, typer.Option("--config", help="Training YAML (or a name in model/training/configs).")
]
OutOpt = Annotated[str | None, typer.Option("--out", help="Run folder (overrides the config's).")]
SpieOpt = Annotated[str | None, typer.Option("--spie", help="SPIE store (overrides the config's).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed (overrides the config's).")]
TargetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        help="Per-target model: stage 2 only on this target's samples, "
        "from the stage-1 checkpoint of the run in --out (or the config's out), "
        "into <out>-<target>. Repeatable.",
    ),
]
SpexOpt = Annotated[str | None, typer.Option("--spex", help="SPEX checkpoint folder.")]
MvpOpt = Annotated[str | None, typer.Option("--mvpnet", help="MVPNet weights folder.")]
MethodOpt = Annotated[
    list[str] | None, typer.Option("--method", help="Repeat to pick methods (default: all 4).")
]


def train_command(
    config: ConfigOpt,
    out: OutOpt = None,
    spie: SpieOpt = None,
    seed: SeedOpt = None,
    target: TargetOpt = None,
) -> None:
    """Train SPEX in stages (0 MVPNet, 1 text, 2 text + mask); resumes a killed run."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm import tqdm

    from model.training.config import load_config
    from model.training.stages import final_model, per_target_config, train

    try:
        cfg = load_config(config, out=out, spie=spie, seed=seed)
        if target:
            cfg = per_target_config(cfg, target)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    bars: dict[int, Any] = {}

    def on_step(n: int, step: int, total: int, losses: dict[str, float]) -> None:
        bar = bars.get(n)
        if bar is None:
            bar = bars[n] = tqdm(
                total=total, initial=step - 1, desc=f"stage {n}", unit="step", file=sys.stderr
            )
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})

    start = time.perf_counter()
    histories = train(cfg, on_step=on_step)
    for bar in bars.values():
        bar.close()
    summary = {
        "out": cfg.out,
        "checkpoint": str(final_model(cfg)) if set(cfg.stages) & {1, 2} else None,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": {n: h[-1]["loss"] for n, h in histories.items() if h},
    }
    typer.echo(json.dumps(summary))


def eval_command(
    spie: Annotated[str, typer.Option("--spie", help="SPIE store.")] = "out/spie",
    spex: SpexOpt = str(DEFAULT_WEIGHTS),
    mvpnet: MvpOpt = str(DEFAULT_MVPNET),
    split: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    out: Annotated[str, typer.Option("--out", help="Folder for evaluation.json/.md.")] = "out/eval",
    method: MethodOpt = None,
    spex_target: Annotated[
        list[str] | None,
        typer.Option(
            "--spex-target",
            help="TARGET=CHECKPOINT of a per-target model (method spex-per-target). Repeatable.",
        ),
    ] = None,
) -> None:
    """Recall, precision, OA, F1, IoU per set and target for index + Otsu, MVPNet, SPEX
    and SPEX without the spectral prompt; writes JSON and a Markdown table."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm import tqdm

    from model.training.evaluate import METHODS, iou_table, run_evaluation

    bar = tqdm(desc="eval", unit="group", file=sys.stderr)

    def progress(msg: str) -> None:
        bar.set_description(msg)
        bar.update(1)

    per_target: dict[str, str] = {}
    for item in spex_target or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            typer.echo(f"error: --spex-target wants TARGET=CHECKPOINT, got {item!r}", err=True)
            raise typer.Exit(2)
        per_target[name] = path
    checks = [("spex", spex), ("mvpnet", mvpnet), *per_target.items()]
    for label, path in checks:
        if path and not Path(path).exists():
            typer.echo(f"error: {label} weights not found: {path}", err=True)
            raise typer.Exit(2)
    result = run_evaluation(
        spie,
        out,
        spex=spex,
        mvpnet=mvpnet,
        split=split,
        methods=tuple(method or METHODS),
        progress=progress,
        per_target=per_target,
    )
    bar.close()
    typer.echo(iou_table(result["rows"]))
    typer.echo(json.dumps({"paths": result["paths"], "goal": result["goal"]}))

