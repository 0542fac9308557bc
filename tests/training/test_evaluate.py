"""Evaluation metrics agree with a confusion matrix counted by hand on real patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.training.data import SpieIndex, subset_sensor
from model.training.evaluate import evaluate, goal_check, index_predictor, write_report
from pipeline.apg import run_apg


def test_index_metrics_match_hand_counts(sample_spie, tmp_path):
    rows = evaluate(sample_spie, {"index-otsu": index_predictor()}, split="test")
    index = SpieIndex(sample_spie, split="test", targets=["water"])
    tp = fp = fn = tn = 0
    for r in index.rows:
        image, truth = index.image(r), index.mask(r)
        valid = np.isfinite(image).all(axis=0)
        bands = list(index.bands[r["subset"]])
        pred = run_apg(image, bands, "water", valid=valid, sensor=subset_sensor(r["subset"])).mask
        use = valid & (truth != 255) & (pred != 255)
        p, t = pred[use] == 1, truth[use] == 1
        tp += int(np.sum(p & t))
        fp += int(np.sum(p & ~t))
        fn += int(np.sum(~p & t))
        tn += int(np.sum(~p & ~t))
    assert tp + fn > 0, "the sample's test split should hold water"
    row = next(r for r in rows if r["set"] == "sample-berlin" and r["target"] == "water")
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn)
    assert row["iou"] == round(tp / (tp + fp + fn), 4)
    assert row["recall"] == round(tp / (tp + fn), 4)
    assert row["precision"] == round(tp / (tp + fp), 4)
    assert row["oa"] == round((tp + tn) / (tp + fp + fn + tn), 4)
    assert row["f1"] == round(2 * tp / (2 * tp + fp + fn), 4)
    pooled = next(r for r in rows if r["set"] == "all" and r["target"] == "water")
    assert pooled["tp"] == tp  # one set: the pooled row is that set

    paths = write_report(rows, tmp_path, {"split": "test"})
    data = json.loads(Path(paths["json"]).read_text())
    assert data["rows"] == rows and "water" in data["goal"]
    assert "| sample-berlin | water | index-otsu |" in Path(paths["markdown"]).read_text()


def test_goal_check_reads_pooled_rows():
    rows = [
        {"method": "index-otsu", "set": "all", "target": "water", "iou": 0.2},
        {"method": "mvpnet", "set": "all", "target": "water", "iou": 0.35},
        {"method": "spex", "set": "all", "target": "water", "iou": 0.4},
    ]
    goal = goal_check(rows)["water"]
    assert goal["beats_index_by_margin"] and goal["not_below_mvpnet"]
