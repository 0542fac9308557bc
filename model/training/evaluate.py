"""Evaluation on the SPIE test split: index + Otsu, MVPNet, SPEX and SPEX without the
spectral prompt, per labelled set and target, as recall / precision / OA / F1 / IoU.

How it counts (the paper's convention, :mod:`pipeline.metrics`): one confusion matrix
per (method, set, target), summed over the split's patches, ratios computed once at the
end; pixels labelled 255 (nodata, unlabelled classes) never count. Every method sees
the same patch with every band the set has and goes through the pipeline's extractor
interface where one exists, so the figures say what ``spex extract`` would do:

- ``index-otsu``: the target's spectral index with an Otsu threshold per patch (the
  APG's coarse mask, i.e. the tile-mode index extractor);
- ``mvpnet``: :class:`model.training.mvpnet.MVPNetExtractor`, probability >= 0.5;
- ``spex``: :class:`model.inference.SpexExtractor` (APG instruction, greedy generated
  description, mask from its hidden states), probability >= 0.5;
- ``spex-no-prompt``: the same weights with the spectral prompt replaced by ``[]`` in
  the instruction: the paper's ablation, run at inference only (the model was trained
  with prompts), so it measures how much this model leans on the prompt;
- ``spex-per-target``: one SPEX checkpoint per target (stage 2 trained on that target's
  samples only, :func:`model.training.stages.per_target_config`), as the paper trains
  per subset, to compare with the one model that serves every target.

Rows named ``all`` pool every set's counts for a target.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.training.data import IGNORE, SpieIndex, subset_sensor
from pipeline.extractor import TileBatch
from pipeline.metrics import ConfusionMatrix

METHODS = ("index-otsu", "mvpnet", "spex", "spex-no-prompt", "spex-per-target")
METRICS = ("recall", "precision", "oa", "f1", "iou")

# (pixels (B, C, H, W), valid (B, H, W), bands, target, subset) -> probabilities (B, H, W)
Predictor = Callable[[np.ndarray, np.ndarray, tuple[str, ...], str, str], np.ndarray]


def index_predictor() -> Predictor:
    """Index + per-patch Otsu (the APG's coarse mask)."""
    from pipeline.apg import run_apg
    from pipeline.errors import SpexInputError

    def predict(px, valid, bands, target, subset):
        out = np.zeros(valid.shape, dtype=np.float32)
        for i in range(px.shape[0]):
            try:
                apg = run_apg(px[i], bands, target, valid=valid[i], sensor=subset_sensor(subset))
            except SpexInputError:
                return np.full(valid.shape, np.nan, dtype=np.float32)
            out[i] = apg.mask == 1
        return out

    return predict


def extractor_predictor(extractor: Any) -> Predictor:
    """Any pipeline Extractor (MVPNet, SPEX) on whole patches."""

    def predict(px, valid, bands, target, subset):
        batch = TileBatch(px, valid, bands, target, subset_sensor(subset))
        return extractor.predict(batch).probability

    return predict


def spex_predictor(checkpoint: str | Path, *, prompt: bool = True) -> Predictor:
    """SPEX from a checkpoint; ``prompt=False`` is the no-spectral-prompt ablation."""
    from model.checkpoint import load_checkpoint
    from model.inference import SpexExtractor
    from pipeline.apg import build_instruction, run_apg
    from pipeline.errors import SpexInputError
    from pipeline.targets import load_target

    model = load_checkpoint(checkpoint)
    state: dict[str, str | None] = {"sensor": None}

    def instruction(pixels, bands, target, valid) -> str:
        category = load_target(target).category
        if not prompt:
            return build_instruction(category, "[]")
        try:
            return run_apg(pixels, bands, target, valid=valid, sensor=state["sensor"]).instruction
        except SpexInputError:
            return build_instruction(category, "[]")

    extractor = SpexExtractor(model, device="cpu", instruction_fn=instruction, batch_size=8)

    def predict(px, valid, bands, target, subset):
        state["sensor"] = subset_sensor(subset)
        return extractor_predictor(extractor)(px, valid, bands, target, subset)

    return predict


def per_target_predictor(checkpoints: Mapping[str, str | Path]) -> Predictor:
    """SPEX with one checkpoint per target; a target without one gives NaN (skipped)."""
    predictors = {t: spex_predictor(path) for t, path in checkpoints.items()}

    def predict(px, valid, bands, target, subset):
        if target not in predictors:
            return np.full(valid.shape, np.nan, dtype=np.float32)
        return predictors[target](px, valid, bands, target, subset)

    return predict


def build_predictors(
    mvpnet: str | Path | None,
    spex: str | Path | None,
    methods: Sequence[str] = METHODS,
    per_target: Mapping[str, str | Path] | None = None,
) -> dict[str, Predictor]:
    """The predictors that can be built from the given weights (others are skipped)."""
    from model.training.mvpnet import MVPNetExtractor

    out: dict[str, Predictor] = {}
    if "index-otsu" in methods:
        out["index-otsu"] = index_predictor()
    if "mvpnet" in methods and mvpnet is not None:
        out["mvpnet"] = extractor_predictor(MVPNetExtractor.from_folder(mvpnet))
    if "spex" in methods and spex is not None:
        out["spex"] = spex_predictor(spex)
    if "spex-no-prompt" in methods and spex is not None:
        out["spex-no-prompt"] = spex_predictor(spex, prompt=False)
    if "spex-per-target" in methods and per_target:
        out["spex-per-target"] = per_target_predictor(per_target)
    return out


def confusion(pred_prob: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> ConfusionMatrix:
    """Counts at threshold 0.5; truth 255 and invalid imagery are excluded."""
    pred = (pred_prob >= 0.5).astype(np.uint8)
    return ConfusionMatrix().update(pred, truth, valid & (truth != IGNORE))


def evaluate(
    spie: str | Path,
    predictors: dict[str, Predictor],
    *,
    split: str = "test",
    subsets: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (method, set, target) plus pooled ``all`` rows per target."""
    index = SpieIndex(spie, split=split, subsets=subsets)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in index.rows:
        groups.setdefault((row["subset"], row["target"]), []).append(row)
    cms: dict[tuple[str, str, str], ConfusionMatrix] = {}
    counts: dict[tuple[str, str], int] = {}
    for (subset, target), rows in sorted(groups.items()):
        bands = index.bands[subset]
        px = np.stack([index.image(r) for r in rows])
        truth = np.stack([index.mask(r) for r in rows])
        valid = np.isfinite(px).all(axis=1)
        counts[(subset, target)] = len(rows)
        for method, predict in predictors.items():
            if progress:
                progress(f"{method} {subset} {target} ({len(rows)} patches)")
            prob = predict(px, valid, bands, target, subset)
            if np.isnan(prob).all():
                continue  # the method cannot run on this set (missing band)
            cm = confusion(prob, truth, valid)
            cms[(method, subset, target)] = cm
            pooled = cms.setdefault((method, "all", target), ConfusionMatrix())
            pooled.merge(cm)
    for (_, target), n in list(counts.items()):
        counts[("all", target)] = counts.get(("all", target), 0) + n
    rows_out = []
    for (method, subset, target), cm in sorted(cms.items(), key=lambda kv: _order(kv[0])):
        d = cm.as_dict()
        rows_out.append(
            {
                "method": method,
                "set": subset,
                "target": target,
                "split": split,
                "patches": counts[(subset, target)],
                **{k: _clean(d[k]) for k in ("tp", "fp", "fn", "tn", "total", *METRICS)},
            }
        )
    return rows_out


def _order(key: tuple[str, str, str]) -> tuple[Any, ...]:
    method, subset, target = key
    m = METHODS.index(method) if method in METHODS else len(METHODS)
    return (subset == "all", subset, target, m)


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    return v


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Full table: one line per set, target and method."""
    lines = [
        "| set | target | method | patches | recall | precision | OA | F1 | IoU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['target']} | {r['method']} | {r['patches']} | "
            + " | ".join(_f(r[k]) for k in METRICS)
            + " |"
        )
    return "\n".join(lines)


def iou_table(rows: list[dict[str, Any]]) -> str:
    """Compact IoU pivot: sets x targets by method."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    keys = sorted({(r["set"], r["target"]) for r in rows}, key=lambda k: (k[0] == "all", k))
    get = {(r["method"], r["set"], r["target"]): r["iou"] for r in rows}
    lines = [
        "| set | target | " + " | ".join(f"IoU {m}" for m in methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for s, t in keys:
        lines.append(f"| {s} | {t} | " + " | ".join(_f(get.get((m, s, t))) for m in methods) + " |")
    return "\n".join(lines)


def goal_check(rows: list[dict[str, Any]], margin: float = 0.10) -> dict[str, Any]:
    """The issue's goal on pooled rows: SPEX IoU >= index + margin for water and
    building, and SPEX IoU >= MVPNet for every target."""
    get = {(r["method"], r["target"]): r["iou"] for r in rows if r["set"] == "all"}
    out: dict[str, Any] = {}
    for target in sorted({t for _, t in get}):
        spex, idx, mvp = (get.get((m, target)) for m in ("spex", "index-otsu", "mvpnet"))
        entry: dict[str, Any] = {"spex": spex, "index-otsu": idx, "mvpnet": mvp}
        if spex is not None and idx is not None and target in ("water", "building"):
            entry["beats_index_by_margin"] = spex >= idx + margin
        if spex is not None and mvp is not None:
            entry["not_below_mvpnet"] = spex >= mvp
        out[target] = entry
    return out


def write_report(
    rows: list[dict[str, Any]], out_dir: str | Path, meta: dict[str, Any]
) -> dict[str, str]:
    """``evaluation.json`` (rows, goal check, meta) and ``evaluation.md`` (tables)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    goal = goal_check(rows)
    payload = {"meta": meta, "goal": goal, "rows": rows}
    (out / "evaluation.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [
        f"# Evaluation ({meta.get('split', 'test')} split)",
        "",
        iou_table(rows),
        "",
        markdown_table(rows),
        "",
    ]
    (out / "evaluation.md").write_text("\n".join(md))
    return {"json": str(out / "evaluation.json"), "markdown": str(out / "evaluation.md")}


def run_evaluation(
    spie: str | Path,
    out_dir: str | Path,
    *,
    spex: str | Path | None,
    mvpnet: str | Path | None,
    split: str = "test",
    methods: Sequence[str] = METHODS,
    subsets: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    per_target: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Build the predictors, evaluate, write JSON + Markdown; returns rows, goal, paths."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictors = build_predictors(mvpnet, spex, methods, per_target)
        rows = evaluate(spie, predictors, split=split, subsets=subsets, progress=progress)
    finally:
        torch.set_num_threads(threads)
    meta = {
        "spie": str(spie),
        "split": split,
        "spex": str(spex) if spex else None,
        "mvpnet": str(mvpnet) if mvpnet else None,
        "methods": list(predictors),
        "per_target": {t: str(p) for t, p in (per_target or {}).items()},
    }
    paths = write_report(rows, out_dir, meta)
    return {"rows": rows, "goal": goal_check(rows), "paths": paths}
