"""Spectral-index + Otsu baseline on every labelled set in ../shared/data.

This is the bar a learned extractor has to clear (shared/data/README.md: "worth shipping
only where it clearly beats these figures"), so it is measured the way the README table
was, and recomputed from the scenes rather than copied:

- sets, scenes, labels and class -> target mappings come from the data-set catalogs
  (``catalogs/datasets``) through the SPIE readers (catalog radiometry, canonical band
  codes, NaN nodata; labels on the image grid, checked there);
- the target's index comes from ``catalogs/targets.yaml`` (NDVI vegetation, NDWI water,
  NDBI building), the side of the threshold too;
- **threshold: Otsu over the valid pixels (finite index) of the labelled area** of each
  scene, i.e. pixels whose label is neither nodata nor an "unlabelled" class. This is the
  reading that reproduces the README table (see docs/baselines.md). For comparison the
  IoU with Otsu over *all* valid pixels of the scene is printed too: that is what the
  pipeline's scene-level threshold does on an unlabelled scene;
- metrics (recall, precision, OA, F1, IoU) from one :class:`pipeline.metrics.ConfusionMatrix`
  per (set, target), counted over labelled pixels with valid imagery only; unlabelled and
  nodata pixels never count as "not the target". Multi-date sets (Slovenia, 5 dates) get
  one Otsu threshold per date and their counts are summed.

Usage::

    .venv/bin/python bench/baseline.py [--data ../shared/data] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.apg import binary_mask, otsu_threshold
from pipeline.indices import index_from_stack
from pipeline.mask_codes import MASK_NODATA
from pipeline.metrics import ConfusionMatrix
from pipeline.spie.catalog import DatasetSpec, load_dataset
from pipeline.spie.readers import Item, discover, open_image, read_class_ids, target_mask
from pipeline.targets import load_target

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


# The labelled sets of ../shared/data, in the README table's order. Every fact about them
# (file layout, band naming, sensor, class id -> target mapping, unlabelled classes) comes
# from their data-set catalogs (catalogs/datasets/<name>.yaml) through the SPIE readers.
SETS: tuple[str, ...] = ("l7-raleigh", "s2-l1c-berlin", "landsat-gewata", "s2-l1c-slovenia")


# The README's table, for the side-by-side column (IoU, F1).
README_FIGURES: dict[tuple[str, str], tuple[float, float]] = {
    ("l7-raleigh", "vegetation"): (0.656, 0.792),
    ("l7-raleigh", "water"): (0.049, 0.093),
    ("l7-raleigh", "building"): (0.287, 0.445),
    ("s2-l1c-berlin", "vegetation"): (0.663, 0.797),
    ("s2-l1c-berlin", "water"): (0.199, 0.333),
    ("s2-l1c-berlin", "building"): (0.080, 0.149),
}
TOLERANCE = 0.01


def _scene_eval(spec: DatasetSpec, item: Item) -> dict[str, dict[str, Any]]:
    """Per target: confusion matrices (labelled-area and scene-wide Otsu) of one image.

    The image is opened and the labels are read onto its grid by the SPIE readers (the
    catalog's sensor, band naming and label layout; a label grid other than the
    image's is refused there), and the truth mask is the catalog's class -> target
    mapping with nodata and unlabelled classes as nodata."""
    image = open_image(spec, item)
    stack = image.read(0, 0, max(image.height, image.width))[:, : image.height, : image.width]
    ids = read_class_ids(spec, item, image)
    out: dict[str, dict[str, Any]] = {}
    for target in spec.targets:
        t = load_target(target)
        index = np.asarray(index_from_stack(t.index, stack, image.bands, sensor=spec.sensor_name))
        valid = np.isfinite(index)
        truth = target_mask(ids, spec, target)
        labelled = truth != MASK_NODATA
        entry: dict[str, Any] = {"index": t.index, "sensor": spec.sensor_name}
        for mode, region in (("labelled", valid & labelled), ("scene", valid)):
            threshold = otsu_threshold(index[region])
            pred = binary_mask(index, threshold, t.side)
            entry[mode] = (threshold, ConfusionMatrix().update(pred, truth, labelled))
        entry["labelled_valid_px"] = int(np.count_nonzero(valid & labelled))
        out[target] = entry
    return out


def _r(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), digits)


def run(data: Path) -> list[dict[str, Any]]:
    """One row per (set, target): metrics, thresholds and the README figure if any."""
    rows: list[dict[str, Any]] = []
    for name in SETS:
        spec = load_dataset(name)
        folder = data / name
        if not folder.is_dir():
            print(f"skip {name}: {folder} not found", file=sys.stderr)
            continue
        per_target: dict[str, dict[str, Any]] = {}
        for item in discover(spec, folder):
            scene = item.id
            result = _scene_eval(spec, item)
            for target, entry in result.items():
                acc = per_target.setdefault(
                    target,
                    {
                        "index": entry["index"],
                        "sensor": entry["sensor"],
                        "cm": ConfusionMatrix(),
                        "cm_scene": ConfusionMatrix(),
                        "scenes": [],
                    },
                )
                (t_lab, cm), (t_scene, cm_scene) = entry["labelled"], entry["scene"]
                acc["cm"].merge(cm)
                acc["cm_scene"].merge(cm_scene)
                acc["scenes"].append(
                    {
                        "scene": scene,
                        "otsu_labelled_area": _r(t_lab, 6),
                        "otsu_whole_scene": _r(t_scene, 6),
                        "iou": _r(cm.iou),
                        "f1": _r(cm.f1),
                        "iou_whole_scene_otsu": _r(cm_scene.iou),
                        "labelled_valid_px": entry["labelled_valid_px"],
                    }
                )
        for target, acc in per_target.items():
            cm, cm_scene = acc["cm"], acc["cm_scene"]
            readme = README_FIGURES.get((name, target))
            rows.append(
                {
                    "set": name,
                    "target": target,
                    "index": acc["index"],
                    "sensor": acc["sensor"],
                    "scenes": acc["scenes"],
                    "metrics": {
                        k: (_r(v) if isinstance(v, float) else v) for k, v in cm.as_dict().items()
                    },
                    "iou_whole_scene_otsu": _r(cm_scene.iou),
                    "f1_whole_scene_otsu": _r(cm_scene.f1),
                    "readme_iou": readme[0] if readme else None,
                    "readme_f1": readme[1] if readme else None,
                    "matches_readme": (
                        None
                        if readme is None
                        else abs(cm.iou - readme[0]) <= TOLERANCE
                        and abs(cm.f1 - readme[1]) <= TOLERANCE
                    ),
                }
            )
    return rows


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The table docs/baselines.md carries (metrics at three decimals)."""
    head = (
        "| set | target | index | recall | precision | OA | F1 | IoU "
        "| IoU (Otsu whole scene) | README IoU / F1 | labelled valid px |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        m = r["metrics"]
        readme = (
            "-"
            if r["readme_iou"] is None
            else f"{r['readme_iou']:.3f} / {r['readme_f1']:.3f}"
            + (" ok" if r["matches_readme"] else " DIFFERS")
        )
        set_name = r["set"] + (f" ({len(r['scenes'])} dates)" if len(r["scenes"]) > 1 else "")
        lines.append(
            f"| {set_name} | {r['target']} | {r['index']} | {_f(m['recall'])} "
            f"| {_f(m['precision'])} | {_f(m['oa'])} | {_f(m['f1'])} | {_f(m['iou'])} "
            f"| {_f(r['iou_whole_scene_otsu'])} | {readme} | {m['total']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = run(args.data)
    print(markdown_table(rows))
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if args.json:
        text = json.dumps(rows, indent=2, sort_keys=True, allow_nan=False) + "\n"
        args.json.write_text(text, encoding="utf-8")
    differs = [r for r in rows if r["matches_readme"] is False]
    return 1 if differs else 0


if __name__ == "__main__":
    raise SystemExit(main())
