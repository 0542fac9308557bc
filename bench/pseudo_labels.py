"""How accurate are confident pseudo-labels, compared with the plain index + Otsu mask?

For every labelled scene of the leave-one-scene-out protocol and every target it labels,
the rule of catalogs/pseudo_labels.yaml (pipeline/spie/pseudo.py) is applied to the
image as if it were unlabelled, and both it and the plain scene-level index + Otsu mask
are scored against the labels: overall accuracy over the pixels each one labels, and
the share of labelled pixels the pseudo-labels cover. Pooled per target over scenes
(every scene weighs by its labelled pixels) and per scene.

    .venv/bin/python bench/pseudo_labels.py            # needs ../shared/data
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipeline.mask_codes import MASK_NODATA, MASK_TARGET
from pipeline.spie.index_stats import index_values
from pipeline.spie.pseudo import pseudo_mask, pseudo_stats
from pipeline.spie.scenes import labelled_images
from pipeline.targets import load_target, target_names

SCENES = (
    "s2-l1c-berlin",
    "l7-raleigh",
    "landsat-gewata",
    "s2-l1c-slovenia",
    "hymap-berlin-urban-gradient",
    "naip-chesapeake-patches",
    "naip-chesapeake-buildings",
    "s2-aberystwyth",
    "l8-rondonia-points",
    "l5-teamlucc-forest",
)


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(correct, labelled by pred, positives) over pixels labelled by both."""
    use = (pred != MASK_NODATA) & (truth != MASK_NODATA)
    correct = int((pred[use] == truth[use]).sum())
    return correct, int(use.sum()), int((truth[use] == MASK_TARGET).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for name in SCENES:
        acc: dict[str, np.ndarray] = {}
        for img in labelled_images(name):
            valid = img.valid
            stats = pseudo_stats(img.pixels, img.bands, list(img.dataset.targets), valid)
            for target in img.dataset.targets:
                truth = img.truth(target)
                t = load_target(target)
                if t.index not in stats:
                    continue
                values = index_values(img.pixels, img.bands, t.index)
                hit = values > stats[t.index].threshold
                otsu = np.where(valid, hit, MASK_NODATA).astype(np.uint8)
                pseudo = pseudo_mask(img.pixels, img.bands, valid, target, stats)
                labelled = int((truth != MASK_NODATA).sum())
                a = acc.setdefault(target, np.zeros(5, np.int64))
                a += (*_counts(pseudo, truth)[:2], *_counts(otsu, truth)[:2], labelled)
        for target, (pc, pn, oc, on, lab) in acc.items():
            rows.append(
                {
                    "scene": name,
                    "target": target,
                    "labelled_px": int(lab),
                    "pseudo_coverage": round(pn / max(lab, 1), 3),
                    "pseudo_accuracy": round(pc / max(pn, 1), 3) if pn else None,
                    "otsu_accuracy": round(oc / max(on, 1), 3),
                    "_counts": [int(pc), int(pn), int(oc), int(on)],
                }
            )
    print("| scene | target | labelled px | pseudo coverage | pseudo OA | index + Otsu OA |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        pa = "-" if r["pseudo_accuracy"] is None else f"{r['pseudo_accuracy']:.3f}"
        print(
            f"| {r['scene']} | {r['target']} | {r['labelled_px']} | "
            f"{r['pseudo_coverage']:.3f} | {pa} | {r['otsu_accuracy']:.3f} |"
        )
    for target in target_names():
        sel = [r for r in rows if r["target"] == target]
        if not sel:
            continue
        c = np.sum([r["_counts"] for r in sel], axis=0)
        lab = sum(r["labelled_px"] for r in sel)
        mean_p = np.mean([r["pseudo_accuracy"] for r in sel if r["pseudo_accuracy"] is not None])
        mean_o = np.mean([r["otsu_accuracy"] for r in sel])
        print(
            f"| **pooled** | {target} | {lab} | {c[1] / lab:.3f} | {c[0] / max(c[1], 1):.3f} | "
            f"{c[2] / max(c[3], 1):.3f} |  (scene means: pseudo {mean_p:.3f}, Otsu {mean_o:.3f})"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
