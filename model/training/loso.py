"""Leave-one-scene-out (LOSO): the protocol that selects, and ships, the default model.

Why: the people who use ``--model default`` run it on scenes nobody here has seen.
Validation on blocks inside the training scenes measures how well a model remembers
those scenes, not how it does elsewhere. So each *place* (a data-set catalog's
``place``: one scene, the dates of one scene, or several label layers of the same
images) is held out whole in turn; the training recipe runs on every other place
(labelled and pseudo-labelled), and index + Otsu, MVPNet and SPEX are scored on the
held-out scenes with the five metrics (model/training/evaluate.py: the extraction job's
own tiling, fitting and blending). Nothing is chosen on a held-out scene: the recipe
(config file) is fixed before the run, and every fold uses it unchanged.

Layout of a run folder (every step resumes: a fold's training resumes per epoch, a
scored fold is not scored again)::

    loso.json / loso.md                      all rows, the per-target decision, timings
    folds/<place>/train/                     the fold's staged training (model.training)
    folds/<place>/scores.json                the fold's rows (held-out scenes only)
    final/                                   with ``final=True``: the recipe on every place,
                                             its checkpoint carrying default_for.json
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from model.promotion import TargetDecision, decide_per_target, decisions_markdown
from model.threads import torch_threads
from model.training.config import TrainConfig
from model.training.evaluate import (
    MARGINS,
    build_factories,
    iou_table,
    margin_over_baselines,
    markdown_table,
)
from model.training.stages import final_model, prepare_data, product_dir, train
from pipeline.outputs.atomic import atomic_write_text
from pipeline.spie.store import SpieStore

#: What a fold scores on its held-out scenes.
LOSO_METHODS = ("index-otsu", "mvpnet", "spex")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Fold:
    """One held-out place and the data sets (catalog names or paths) that cover it."""

    place: str
    datasets: tuple[str, ...]


def _catalog_ref(subset: str, part: Mapping[str, Any]) -> str:
    """The catalog of a SPIE subset: its name when the project's catalogs know it (the
    usual case), else the catalog file the builder recorded."""
    from pipeline.spie.catalog import dataset_names

    if subset in dataset_names():
        return subset
    return str(part.get("catalog") or subset)


def loso_folds(spie: str | Path, places: Sequence[str] | None = None) -> list[Fold]:
    """The folds of a SPIE store: one per place with labelled subsets, sorted by place
    (pseudo-labelled subsets are only ever trained on). ``places`` selects some."""
    subsets = SpieStore(spie).manifest()["subsets"]
    by_place: dict[str, list[str]] = {}
    for subset, entry in sorted(subsets.items()):
        parts = entry["parts"]
        if not parts or any("pseudo_labels" in p for p in parts):
            continue
        place = str(parts[0].get("place", subset))
        by_place.setdefault(place, []).append(_catalog_ref(subset, parts[0]))
    if places is not None:
        unknown = sorted(set(places) - set(by_place))
        if unknown:
            raise ValueError(
                f"{spie} has no labelled subset at place(s) {unknown}; places: {sorted(by_place)}"
            )
        by_place = {p: by_place[p] for p in places}
    return [Fold(p, tuple(ds)) for p, ds in sorted(by_place.items())]


def fold_config(cfg: TrainConfig, fold: Fold, out: str | Path) -> TrainConfig:
    """The recipe with the fold's place held out, training into the fold's folder."""
    return replace(
        cfg,
        out=str(Path(out) / "folds" / fold.place / "train"),
        exclude_places=(*cfg.exclude_places, fold.place),
    )


def run_fold(
    cfg: TrainConfig,
    fold: Fold,
    out: str | Path,
    *,
    methods: Sequence[str] = LOSO_METHODS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train without the fold's place, score its scenes; returns the fold's record."""
    from model.training.evaluate import evaluate_scenes

    scores = Path(out) / "folds" / fold.place / "scores.json"
    if scores.is_file():
        return json.loads(scores.read_text())
    fcfg = fold_config(cfg, fold, out)
    start = time.perf_counter()
    if progress:
        progress(f"fold {fold.place}: training without it")
    train(fcfg)
    trained = time.perf_counter()
    mvpnet = product_dir(fcfg, 0)
    factories = build_factories(
        mvpnet if (mvpnet / "mvpnet.json").is_file() else None, final_model(fcfg), methods
    )
    rows = evaluate_scenes(fold.datasets, factories, progress=progress)
    record = {
        "place": fold.place,
        "datasets": list(fold.datasets),
        "rows": rows,
        "seconds": {
            "train": round(trained - start, 1),
            "score": round(time.perf_counter() - trained, 1),
        },
    }
    scores.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(scores, json.dumps(record, indent=1))
    return record


def loso_markdown(
    rows: Sequence[Mapping[str, Any]],
    decisions: Mapping[str, TargetDecision],
    meta: Mapping[str, Any],
) -> str:
    """The report: decision per target, IoU per held-out scene, every metric."""
    return "\n".join(
        [
            "# Leave-one-scene-out evaluation",
            "",
            f"Recipe `{meta.get('config')}`, seed {meta.get('seed')}; held-out places: "
            f"{', '.join(meta.get('places', []))}. Wall time {meta.get('seconds')} s.",
            "",
            "## Promotion rule per target",
            "",
            decisions_markdown(decisions),
            "",
            "## IoU per held-out scene",
            "",
            iou_table(rows),
            "",
            "## Every metric",
            "",
            markdown_table(rows),
            "",
        ]
    )


def run_loso(
    cfg: TrainConfig,
    out: str | Path,
    *,
    places: Sequence[str] | None = None,
    methods: Sequence[str] = LOSO_METHODS,
    final: bool = False,
    config_name: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every fold, the per-target promotion decision and (``final``) the recipe trained
    on every place with the decision written next to its weights. Returns the record
    also written to ``loso.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch_threads(cfg.threads):
        prepare_data(cfg, progress)
        folds = loso_folds(cfg.spie, places)
        if len(folds) < 2 and places is None:
            raise ValueError(
                f"{cfg.spie}: leave-one-scene-out needs labelled scenes at two places or "
                f"more, found {[f.place for f in folds]}"
            )
        records = [run_fold(cfg, f, out, methods=methods, progress=progress) for f in folds]
        rows = [r for rec in records for r in rec["rows"]]
        decisions = decide_per_target(rows)
        final_dirs: dict[str, str] = {}
        if final:
            spex, mvpnet = train_final(cfg, out, decisions, config_name, progress)
            final_dirs = {"spex": str(spex), "mvpnet": str(mvpnet)}
    meta = {
        "config": config_name,
        "seed": cfg.seed,
        "spie": cfg.spie,
        "places": [f.place for f in folds],
        "seconds": round(time.perf_counter() - start, 1),
        "fold_seconds": {rec["place"]: rec["seconds"] for rec in records},
        "final": final_dirs or None,
    }
    record = {
        "meta": meta,
        "decisions": {t: d.as_dict() for t, d in decisions.items()},
        MARGINS: margin_over_baselines(rows),
        "rows": rows,
    }
    atomic_write_text(out / "loso.json", json.dumps(record, indent=1))
    atomic_write_text(out / "loso.md", loso_markdown(rows, decisions, meta))
    return record


def train_final(
    cfg: TrainConfig,
    out: str | Path,
    decisions: Mapping[str, TargetDecision],
    config_name: str | None,
    progress: Progress | None = None,
) -> tuple[Path, Path]:
    """The recipe on every place; its SPEX checkpoint gets ``default_for.json`` (the
    targets it is the default for, with the per-scene evidence). Returns the SPEX
    checkpoint and the MVPNet folder."""
    from model.registry import write_default_for

    fcfg = replace(cfg, out=str(Path(out) / "final"))
    if progress:
        progress("final: training on every place")
    train(fcfg)
    checkpoint = final_model(fcfg)
    write_default_for(
        checkpoint,
        decisions,
        command=f"spex train --config {config_name or '<config>'} --loso (seed {cfg.seed})",
    )
    return checkpoint, product_dir(fcfg, 0)
