"""``spex train`` and ``spex eval``: the staged training, leave-one-scene-out selection
and scene-level evaluation from the command line, with progress bars (no Prefect
server needed).

Registered on the ``spex`` app in :mod:`pipeline.cli.main`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

REPO = Path(__file__).resolve().parents[2]
WEIGHTS_DIR = REPO / "model" / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "default"
DEFAULT_MVPNET = WEIGHTS_DIR / "mvpnet"

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
PlaceOpt = Annotated[
    list[str] | None,
    typer.Option("--place", help="With --loso: hold out only these places. Repeatable."),
]
SpexOpt = Annotated[str | None, typer.Option("--spex", help="SPEX checkpoint folder.")]
MvpOpt = Annotated[str | None, typer.Option("--mvpnet", help="MVPNet weights folder.")]
MethodOpt = Annotated[
    list[str] | None,
    typer.Option("--method", help="Repeat to pick methods (default: index, MVPNet, SPEX)."),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _load(config: str, out: str | None, spie: str | None, seed: int | None):
    from model.training.config import load_config

    try:
        return load_config(config, out=out, spie=spie, seed=seed)
    except (OSError, ValueError) as exc:
        raise _fail(f"{exc} (check --config)") from exc


def _check_store(spie: str) -> None:
    if not (Path(spie) / "spie.json").is_file():
        raise _fail(
            f"{spie} is not a SPIE store; build it with 'spex spie build ... --out {spie}' "
            "or pass --spie"
        )


def _bars() -> tuple[dict[int, Any], Any]:
    from tqdm import tqdm

    bars: dict[int, Any] = {}

    def on_step(n: int, step: int, total: int, losses: dict[str, float]) -> None:
        bar = bars.get(n)
        if bar is None:
            bar = bars[n] = tqdm(
                total=total, initial=step - 1, desc=f"stage {n}", unit="step", file=sys.stderr
            )
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})

    return bars, on_step


def train_command(
    config: ConfigOpt,
    out: OutOpt = None,
    spie: SpieOpt = None,
    seed: SeedOpt = None,
    target: TargetOpt = None,
    loso: Annotated[
        bool,
        typer.Option(
            "--loso",
            help="Leave-one-scene-out first (one fold per place of the SPIE store), then "
            "the recipe on every place; the final checkpoint gets default_for.json from "
            "the promotion rule.",
        ),
    ] = False,
    ship: Annotated[
        bool,
        typer.Option(
            "--ship", help="With --loso: copy the final SPEX and MVPNet into model/weights/."
        ),
    ] = False,
) -> None:
    """Train SPEX in stages (0 MVPNet, 1 text, 2 text + mask); resumes a killed run."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model.training.stages import final_model, per_target_config, prepare_data, train

    cfg = _load(config, out, spie, seed)
    if ship and not loso:
        raise _fail("--ship needs --loso: only leave-one-scene-out evidence picks the default")
    if target and loso:
        raise _fail("--target and --loso do not combine: per-target runs are not selected")
    if target:
        try:
            cfg = per_target_config(cfg, target)
        except ValueError as exc:
            raise _fail(f"{exc} (check --target)") from exc
    try:
        prepare_data(cfg, lambda m: typer.echo(m, err=True))
    except (OSError, ValueError) as exc:  # a data set that cannot be built
        raise _fail(f"{exc} (check the config's datasets)") from exc
    _check_store(cfg.spie)
    start = time.perf_counter()
    if loso:
        _train_loso(cfg, config, ship, start)
        return
    bars, on_step = _bars()
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


def _train_loso(cfg: Any, config: str, ship: bool, start: float) -> None:
    from model.training.loso import run_loso

    try:
        record = run_loso(
            cfg, cfg.out, final=True, config_name=config, progress=lambda m: typer.echo(m, err=True)
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    final = record["meta"]["final"]
    if ship:
        for source, dest in ((final["spex"], DEFAULT_WEIGHTS), (final["mvpnet"], DEFAULT_MVPNET)):
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(source, dest)
    decisions = record["decisions"]
    summary = {
        "out": cfg.out,
        "report": str(Path(cfg.out) / "loso.md"),
        **final,
        "default_for": sorted(t for t, d in decisions.items() if d["serve"]),
        "shipped": str(DEFAULT_WEIGHTS) if ship else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    typer.echo(json.dumps(summary))


def eval_command(
    spie: Annotated[
        str, typer.Option("--spie", help="SPIE store: its labelled subsets are the scenes.")
    ] = "out/spie",
    spex: SpexOpt = str(DEFAULT_WEIGHTS),
    mvpnet: MvpOpt = str(DEFAULT_MVPNET),
    dataset: Annotated[
        list[str] | None,
        typer.Option("--dataset", help="Score these data sets (catalog names) instead."),
    ] = None,
    out: Annotated[str, typer.Option("--out", help="Folder for the report.")] = "out/eval",
    method: MethodOpt = None,
    spex_target: Annotated[
        list[str] | None,
        typer.Option(
            "--spex-target",
            help="TARGET=CHECKPOINT of a per-target model (method spex-per-target). Repeatable.",
        ),
    ] = None,
    loso: Annotated[
        bool,
        typer.Option(
            "--loso",
            help="Leave-one-scene-out: train --config once per held-out place and score it "
            "(the weights options are then not used).",
        ),
    ] = False,
    config: Annotated[
        str, typer.Option("--config", help="With --loso: the training recipe.")
    ] = "tiny",
    place: PlaceOpt = None,
) -> None:
    """Recall, precision, OA, F1, IoU per scene and target for index + Otsu, MVPNet and
    SPEX on whole labelled scenes; with --loso, each place held out of training in turn."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model.training.evaluate import MARGINS, iou_table

    if loso:
        from model.training.loso import run_loso

        cfg = _load(config, out, spie if spie != "out/spie" else None, None)
        if not cfg.datasets:
            _check_store(cfg.spie)
        try:
            record = run_loso(
                cfg,
                out,
                places=place,
                config_name=config,
                progress=lambda m: typer.echo(m, err=True),
            )
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        typer.echo(iou_table(record["rows"]))
        report = str(Path(out) / "loso.md")
        typer.echo(json.dumps({"report": report, MARGINS: record[MARGINS]}))
        return
    _eval_weights(spie, spex, mvpnet, dataset, out, method, spex_target)


def _eval_weights(
    spie: str,
    spex: str | None,
    mvpnet: str | None,
    dataset: list[str] | None,
    out: str,
    method: list[str] | None,
    spex_target: list[str] | None,
) -> None:
    from tqdm import tqdm

    from model.training.evaluate import MARGINS, iou_table, run_evaluation
    from model.training.loso import LOSO_METHODS, loso_folds

    per_target: dict[str, str] = {}
    for item in spex_target or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise _fail(f"--spex-target wants TARGET=CHECKPOINT, got {item!r}")
        per_target[name] = path
    for label, weights in [("spex", spex), ("mvpnet", mvpnet), *per_target.items()]:
        if weights and not Path(weights).exists():
            raise _fail(f"{label} weights not found: {weights} (check --{label})")
    if not dataset:
        _check_store(spie)
        dataset = [d for f in loso_folds(spie) for d in f.datasets]
    bar = tqdm(desc="eval", unit="group", file=sys.stderr)

    def progress(msg: str) -> None:
        bar.set_description(msg)
        bar.update(1)

    result = run_evaluation(
        dataset,
        out,
        spex=spex,
        mvpnet=mvpnet,
        methods=tuple(method or LOSO_METHODS),
        progress=progress,
        per_target=per_target,
    )
    bar.close()
    typer.echo(iou_table(result["rows"]))
    typer.echo(json.dumps({"paths": result["paths"], MARGINS: result[MARGINS]}))
