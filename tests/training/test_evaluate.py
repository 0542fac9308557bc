"""Scene-level evaluation: counts equal hand counts, a method that cannot run on a scene
has no row, the reports hold every metric and the margin over the baselines reads the means."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import torch
import yaml

from model.training.evaluate import (
    MARGINS,
    evaluate_scenes,
    index_factory,
    margin_over_baselines,
    mean_iou,
    spex_factory,
    write_report,
)
from pipeline.apg import otsu_threshold
from pipeline.spie.index_stats import index_values
from pipeline.spie.scenes import labelled_images


def test_index_rows_match_hand_counts_and_reports(two_scenes: dict[str, Path], tmp_path):
    rows = evaluate_scenes([two_scenes["crop-berlin"]], {"index-otsu": index_factory()})
    assert {r["target"] for r in rows} == {"water", "vegetation", "building"}
    image = next(labelled_images(two_scenes["crop-berlin"]))
    ndwi = index_values(image.pixels, image.bands, "NDWI")
    pred = ndwi > otsu_threshold(ndwi[image.valid])
    truth = image.truth("water")
    use = truth != 255
    p, t = pred[use], truth[use] == 1
    tp, fp, fn, tn = (int(x.sum()) for x in (p & t, p & ~t, ~p & t, ~p & ~t))
    assert tp + fn > 0, "the crop holds water"
    row = next(r for r in rows if r["target"] == "water")
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn)
    assert row["iou"] == round(tp / (tp + fp + fn), 4)
    assert row["recall"] == round(tp / (tp + fn), 4)
    assert row["precision"] == round(tp / (tp + fp), 4)
    assert row["oa"] == round((tp + tn) / (tp + fp + fn + tn), 4)
    assert row["f1"] == round(2 * tp / (2 * tp + fp + fn), 4)
    assert row["place"] == "crop-berlin" and row["images"] == 1
    assert mean_iou(rows, "index-otsu", "water") == row["iou"]

    paths = write_report(rows, tmp_path, {"title": "test"})
    data = json.loads(Path(paths["json"]).read_text())
    assert data["rows"] == rows and "water" in data[MARGINS]
    text = Path(paths["markdown"]).read_text()
    assert "| water | crop-berlin | index-otsu |" in text and "**mean**" in text


def test_a_method_that_cannot_run_has_no_row(two_scenes: dict[str, Path], tmp_path: Path):
    """The crop without its SWIR bands: NDBI cannot be computed, so index + Otsu has no
    building figure (not a zero), while SPEX runs with its building prior absent."""
    from model.checkpoint import save_checkpoint
    from model.config import tiny
    from model.spex import SpexModel

    entry = yaml.safe_load(two_scenes["crop-berlin"].read_text())
    root = Path(entry["default_root"])
    folder = tmp_path / "noswir"
    folder.mkdir()
    for name in ("s2_l1c_berlin_20170216.tif", "s2_l1c_berlin_20170216_osm_labels.tif"):
        with rasterio.open(root / name) as src:
            n = 4 if src.count > 1 else 1  # B02, B03, B04, B08
            profile = src.profile | {"count": n}
            data, desc, tags = src.read(list(range(1, n + 1))), src.descriptions, src.tags()
        with rasterio.open(folder / name, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(**tags)
            for i in range(n):
                if desc[i]:
                    dst.set_band_description(i + 1, desc[i])
    catalog = tmp_path / "crop-berlin-noswir.yaml"
    catalog.write_text(
        yaml.safe_dump({**entry, "name": "crop-berlin-noswir", "default_root": str(folder)})
    )
    torch.manual_seed(0)
    ckpt = tmp_path / "untrained"
    save_checkpoint(SpexModel(tiny(input_size=64)), ckpt)
    rows = evaluate_scenes(
        [catalog],
        {"index-otsu": index_factory(), "spex": spex_factory(ckpt)},
        targets=["building", "water"],
    )
    got = {(r["method"], r["target"]) for r in rows}
    assert ("index-otsu", "building") not in got and ("spex", "building") in got
    assert ("index-otsu", "water") in got
    spex_building = next(r for r in rows if r["method"] == "spex" and r["target"] == "building")
    assert spex_building["tp"] == spex_building["fp"] == 0  # absent prior: "not building"
    # The untrained SPEX reproduces index + Otsu where the index runs.
    water = {r["method"]: r for r in rows if r["target"] == "water"}
    assert water["spex"]["tp"] == water["index-otsu"]["tp"]
    assert water["spex"]["fp"] == water["index-otsu"]["fp"]
    assert np.isfinite(spex_building["oa"])


def test_margin_over_baselines_reads_scene_means():
    rows = [
        {"method": m, "set": s, "target": "water", "iou": v}
        for m, s, v in [
            ("index-otsu", "a", 0.2),
            ("index-otsu", "b", 0.4),
            ("mvpnet", "a", 0.35),
            ("mvpnet", "b", 0.45),
            ("spex", "a", 0.45),
            ("spex", "b", 0.5),
            ("spex", "c", 0.9),  # no index figure there: outside the compared scenes
        ]
    ]
    goal = margin_over_baselines(rows)["water"]
    assert goal["scenes"] == ["a", "b"] and goal["spex"] == 0.475
    assert goal["beats_index_by_margin"] and goal["not_below_mvpnet"]
