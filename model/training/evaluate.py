"""Scene-level evaluation: index + Otsu, MVPNet and SPEX on whole labelled scenes, as
recall / precision / OA / F1 / IoU per data set and target.

What is scored is what ``spex extract`` would deliver: every method is a pipeline
extractor, fitted on the whole scene (``fit_scene``: the index extractor's and SPEX's
scene-level Otsu thresholds) and run over the extraction job's own tile grid (the
default tile size and overlap, the stitcher's raised-cosine blend), its probability thresholded
at 0.5. The methods:

- ``index-otsu``: the target's spectral index with one Otsu threshold over the scene
  (``--model index``);
- ``mvpnet``: :class:`model.training.mvpnet.MVPNetExtractor` (stage 0's network);
- ``spex``: :class:`model.inference.SpexExtractor` (APG instruction, greedy generated
  description, mask from its hidden states as a correction of the spectral prior);
- ``spex-no-prompt``: the same weights with the spectral prompt replaced by ``[]`` in
  the instruction (the paper's ablation, at inference only);
- ``spex-per-target``: one SPEX checkpoint per target.

How it counts (the paper's convention, :mod:`pipeline.metrics`): one confusion matrix
per (method, data set, target), summed over the set's images; unlabelled, ignored and
nodata pixels never count. A method that cannot run on a scene (the index needs a band
the sensor lacks) has no row there: "cannot" is not "scored 0". Leave-one-scene-out
(model/training/loso.py) calls this once per held-out place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.threads import torch_threads
from pipeline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE
from pipeline.errors import SpexInputError
from pipeline.extractor import Extractor, TileBatch
from pipeline.markdown import markdown_table as _table
from pipeline.metrics import ConfusionMatrix
from pipeline.spie.scenes import LabelledImage, labelled_images
from pipeline.stitching import tile_weight
from pipeline.tiling import plan_tiles

METHODS = ("index-otsu", "mvpnet", "spex", "spex-no-prompt", "spex-per-target")
METRICS = ("recall", "precision", "oa", "f1", "iou")
#: Key of :func:`margin_over_baselines`'s result in evaluation and LOSO records.
MARGINS = "margin_over_baselines"

#: target -> a fresh or refitted extractor for that target
ExtractorFactory = Callable[[str], Extractor]


def predict_scene(
    extractor: Extractor,
    image: LabelledImage,
    target: str,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray | None:
    """(H, W) probability of ``target`` over the whole image, as the extraction job
    computes it (fit on the scene, tile grid, blend); None when the extractor cannot
    run on this scene (a missing band)."""
    scene = image.as_scene()
    bands = tuple(image.bands)
    try:
        missing = [b for b in extractor.required_bands(target) if b not in bands]
        if missing:
            return None
        extractor.fit_scene(scene, target)
    except SpexInputError:
        return None
    h, w = image.pixels.shape[1:]
    grid = plan_tiles(h, w, tile, overlap, allow_smaller_scene=True)
    acc = np.zeros((h, w), np.float64)
    weights = np.zeros((h, w), np.float64)
    valid = image.valid
    for batch in grid.batches(batch_size):
        px = np.stack([image.pixels[:, t.rows, t.cols] for t in batch])
        ok = np.stack([valid[t.rows, t.cols] for t in batch])
        result = extractor.predict(TileBatch(px, ok, bands, target, image.dataset.sensor_name))
        for t, prob in zip(batch, result.probability, strict=True):
            wt = tile_weight(t)
            acc[t.rows, t.cols] += wt * prob
            weights[t.rows, t.cols] += wt
    return (acc / np.maximum(weights, 1e-12)).astype(np.float32)


def index_factory() -> ExtractorFactory:
    """Index + one scene-level Otsu threshold (``--model index``)."""
    from pipeline.index_extractor import IndexExtractor

    return lambda target: IndexExtractor(threshold_mode="scene")


def mvpnet_factory(folder: str | Path) -> ExtractorFactory:
    from model.training.mvpnet import MVPNetExtractor

    extractor = MVPNetExtractor.from_folder(folder)
    return lambda target: extractor


def spex_factory(checkpoint: str | Path, *, prompt: bool = True) -> ExtractorFactory:
    """SPEX from a checkpoint; ``prompt=False`` is the no-spectral-prompt ablation."""
    from model.inference import SpexExtractor, apg_prompt
    from pipeline.apg import build_instruction
    from pipeline.targets import load_target

    def no_prompt(pixels, bands, target, valid) -> tuple[str, None]:
        return build_instruction(load_target(target).category, "[]"), None

    extractor = SpexExtractor.from_checkpoint(
        checkpoint, device="cpu", prompt_fn=apg_prompt if prompt else no_prompt
    )
    return lambda target: extractor


def per_target_factory(checkpoints: Mapping[str, str | Path]) -> ExtractorFactory | None:
    """SPEX with one checkpoint per target (targets without one are not scored)."""
    factories = {t: spex_factory(p) for t, p in checkpoints.items()}

    def make(target: str) -> Extractor:
        if target not in factories:
            raise SpexInputError(f"no per-target checkpoint for {target}")
        return factories[target](target)

    return make if factories else None


def build_factories(
    mvpnet: str | Path | None,
    spex: str | Path | None,
    methods: Sequence[str] = METHODS,
    per_target: Mapping[str, str | Path] | None = None,
) -> dict[str, ExtractorFactory]:
    """The methods that can be built from the given weights (others are skipped)."""
    out: dict[str, ExtractorFactory] = {}
    if "index-otsu" in methods:
        out["index-otsu"] = index_factory()
    if "mvpnet" in methods and mvpnet is not None:
        out["mvpnet"] = mvpnet_factory(mvpnet)
    if "spex" in methods and spex is not None:
        out["spex"] = spex_factory(spex)
    if "spex-no-prompt" in methods and spex is not None:
        out["spex-no-prompt"] = spex_factory(spex, prompt=False)
    if "spex-per-target" in methods and per_target:
        made = per_target_factory(per_target)
        if made is not None:
            out["spex-per-target"] = made
    return out


def confusion(prob: np.ndarray, truth: np.ndarray) -> ConfusionMatrix:
    """Counts at threshold 0.5 over labelled pixels (nodata truth never counts)."""
    return ConfusionMatrix().update((prob >= 0.5).astype(np.uint8), truth)


def evaluate_scenes(
    datasets: Sequence[str | Path],
    factories: Mapping[str, ExtractorFactory],
    *,
    targets: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> list[dict[str, Any]]:
    """One row per (method, data set, target) with counts and the five metrics."""
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        images = list(labelled_images(dataset))
        if not images:
            continue
        spec = images[0].dataset
        for target in spec.targets:
            if targets and target not in targets:
                continue
            for method, factory in factories.items():
                if progress:
                    progress(f"{method} {spec.name} {target} ({len(images)} images)")
                try:
                    extractor = factory(target)
                except SpexInputError:
                    continue
                cm = ConfusionMatrix()
                ran = 0
                for image in images:
                    prob = predict_scene(extractor, image, target, tile=tile, overlap=overlap)
                    if prob is not None:
                        cm.merge(confusion(prob, image.truth(target)))
                        ran += 1
                if ran < len(images):
                    continue  # cannot run on (every image of) this scene: no figure
                d = cm.as_dict()
                rows.append(
                    {
                        "method": method,
                        "set": spec.name,
                        "place": spec.place,
                        "target": target,
                        "images": len(images),
                        **{k: _clean(d[k]) for k in ("tp", "fp", "fn", "tn", "total", *METRICS)},
                    }
                )
    return rows


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _order(r: Mapping[str, Any]) -> tuple[Any, ...]:
    m = METHODS.index(r["method"]) if r["method"] in METHODS else len(METHODS)
    return (r["target"], r["set"], m)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Full table: one line per target, set and method, every metric."""
    header = ["target", "set", "method", "recall", "precision", "OA", "F1", "IoU"]
    body = [
        [r["target"], r["set"], r["method"], *(_f(r[k]) for k in METRICS)]
        for r in sorted(rows, key=_order)
    ]
    return "\n".join(_table(header, body))


def iou_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Compact IoU pivot: (target, set) x method, plus the mean over sets per target."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    get = {(r["method"], r["set"], r["target"]): r["iou"] for r in rows}
    keys = sorted({(r["target"], r["set"]) for r in rows})
    body = [[t, s, *(_f(get.get((m, s, t))) for m in methods)] for t, s in keys]
    for t in sorted({k[0] for k in keys}):
        body.append([t, "**mean**", *(_f(mean_iou(rows, m, t)) for m in methods)])
    header = ["target", "set", *(f"IoU {m}" for m in methods)]
    return "\n".join(_table(header, body))


def mean_iou(
    rows: Sequence[Mapping[str, Any]], method: str, target: str, sets: Sequence[str] | None = None
) -> float | None:
    """Mean IoU of ``method`` over the data sets (scenes) of ``target`` (each scene
    weighs the same), optionally only over ``sets``."""
    values = [
        r["iou"]
        for r in rows
        if r["method"] == method
        and r["target"] == target
        and r["iou"] is not None
        and (sets is None or r["set"] in sets)
    ]
    return round(float(np.mean(values)), 4) if values else None


def margin_over_baselines(
    rows: Sequence[Mapping[str, Any]], margin: float = 0.10
) -> dict[str, Any]:
    """Per target, over the scenes where the index runs: the mean IoUs of SPEX, index +
    Otsu and MVPNet, whether SPEX's beats the index's by ``margin`` and whether it is not
    below MVPNet's."""
    out: dict[str, Any] = {}
    for target in sorted({r["target"] for r in rows}):
        sets = sorted(
            {r["set"] for r in rows if r["target"] == target and r["method"] == "index-otsu"}
        )
        spex, idx, mvp = (mean_iou(rows, m, target, sets) for m in ("spex", "index-otsu", "mvpnet"))
        entry: dict[str, Any] = {"scenes": sets, "spex": spex, "index-otsu": idx, "mvpnet": mvp}
        if spex is not None and idx is not None:
            entry["beats_index_by_margin"] = spex >= idx + margin
        if spex is not None and mvp is not None:
            entry["not_below_mvpnet"] = spex >= mvp
        out[target] = entry
    return out


def write_report(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path, meta: Mapping[str, Any]
) -> dict[str, str]:
    """``evaluation.json`` (rows, margin over the baselines, meta) and ``evaluation.md``
    (tables)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    margins = margin_over_baselines(rows)
    payload = {"meta": dict(meta), MARGINS: margins, "rows": list(rows)}
    (out / "evaluation.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [
        f"# {meta.get('title', 'Scene-level evaluation')}",
        "",
        iou_table(rows),
        "",
        markdown_table(rows),
        "",
    ]
    (out / "evaluation.md").write_text("\n".join(md))
    return {"json": str(out / "evaluation.json"), "markdown": str(out / "evaluation.md")}


def run_evaluation(
    datasets: Sequence[str | Path],
    out_dir: str | Path,
    *,
    spex: str | Path | None,
    mvpnet: str | Path | None,
    methods: Sequence[str] = METHODS,
    progress: Callable[[str], None] | None = None,
    per_target: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Build the extractors, score the scenes, write JSON + Markdown."""
    with torch_threads(1):
        factories = build_factories(mvpnet, spex, methods, per_target)
        rows = evaluate_scenes(datasets, factories, progress=progress)
    meta = {
        "title": "Scene-level evaluation (given weights; not held out unless they were)",
        "datasets": [str(d) for d in datasets],
        "spex": str(spex) if spex else None,
        "mvpnet": str(mvpnet) if mvpnet else None,
        "methods": list(factories),
        "per_target": {t: str(p) for t, p in (per_target or {}).items()},
    }
    paths = write_report(rows, out_dir, meta)
    return {"rows": rows, MARGINS: margin_over_baselines(rows), "paths": paths}
