"""Confusion-matrix metrics, checked by hand on a real Landsat-7 crop and on the whole scene."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.apg import run_apg
from pipeline.errors import SpexInputError
from pipeline.mask_codes import MASK_NODATA
from pipeline.metrics import ConfusionMatrix

BANDS = ["B", "G", "R", "N", "S1"]
VEGETATION_CLASSES = [2, 3, 4, 5]  # strata.tif: agriculture, herbaceous, shrubland, forest


@pytest.fixture(scope="module")
def raleigh(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pixels with NaN at nodata, strata as uint8 truth: 1 vegetation, 0 other, 255 nodata)."""
    folder = shared_data / "l7-raleigh"
    with rasterio.open(folder / "landsat_multiband.tif") as src:
        pixels = src.read()
        pixels = np.where(pixels == src.nodata, np.float32(np.nan), pixels).astype(np.float32)
    with rasterio.open(folder / "strata.tif") as src:
        strata = src.read(1)
        labelled = strata != src.nodata
    truth = np.isin(strata, VEGETATION_CLASSES).astype(np.uint8)
    truth[~labelled] = MASK_NODATA
    return pixels, truth


def test_hand_computed_matrix_on_a_real_crop(raleigh: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, truth = raleigh
    rows, cols = slice(90, 130), slice(0, 64)  # includes image nodata and the one unlabelled px
    crop_truth = truth[rows, cols]
    pred = run_apg(pixels[:, rows, cols], BANDS, "vegetation").mask
    assert (pred == MASK_NODATA).any() and (crop_truth == MASK_NODATA).any()

    tp = fp = fn = tn = 0
    for p, t in zip(pred.ravel().tolist(), crop_truth.ravel().tolist(), strict=True):
        if p == MASK_NODATA or t == MASK_NODATA:
            continue
        if p == 1 and t == 1:
            tp += 1
        elif p == 1:
            fp += 1
        elif t == 1:
            fn += 1
        else:
            tn += 1
    cm = ConfusionMatrix().update(pred, crop_truth)
    assert (cm.tp, cm.fp, cm.fn, cm.tn) == (tp, fp, fn, tn)
    assert all(isinstance(v, np.int64) for v in (cm.tp, cm.fp, cm.fn, cm.tn))
    assert min(tp, fp, fn, tn) > 0
    d = cm.as_dict()
    assert d["recall"] == pytest.approx(tp / (tp + fn))
    assert d["precision"] == pytest.approx(tp / (tp + fp))
    assert d["oa"] == pytest.approx((tp + tn) / (tp + fp + fn + tn))
    assert d["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert d["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert d["total"] == tp + fp + fn + tn


def test_valid_mask_and_bool_inputs(raleigh: tuple[np.ndarray, np.ndarray]) -> None:
    _, truth = raleigh
    t = truth[200:240, 200:260]
    pred = t == 1
    valid = np.zeros(t.shape, dtype=bool)
    valid[:10] = True
    cm = ConfusionMatrix().update(pred, t == 1, valid)
    assert cm.fp == cm.fn == 0 and cm.total == 10 * t.shape[1]
    with pytest.raises(SpexInputError):
        cm.update(pred[:5], t)


def test_accumulation_is_additive_and_dataset_level(
    raleigh: tuple[np.ndarray, np.ndarray],
) -> None:
    pixels, truth = raleigh
    pred = run_apg(pixels, BANDS, "vegetation").mask
    whole = ConfusionMatrix().update(pred, truth)
    tiles = ConfusionMatrix()
    for r in range(0, pred.shape[0], 128):
        for c in range(0, pred.shape[1], 128):
            tiles.update(pred[r : r + 128, c : c + 128], truth[r : r + 128, c : c + 128])
    assert tiles.as_dict() == whole.as_dict()
    top, bottom = ConfusionMatrix(), ConfusionMatrix()
    top.update(pred[:200], truth[:200])
    bottom.update(pred[200:], truth[200:])
    assert (top + bottom).as_dict() == whole.as_dict()
    assert ConfusionMatrix().merge(top).merge(bottom).as_dict() == whole.as_dict()


def test_zero_denominators_are_nan() -> None:
    empty = ConfusionMatrix().as_dict()
    assert empty["total"] == 0
    assert all(math.isnan(empty[k]) for k in ("recall", "precision", "oa", "f1", "iou"))
    only_negatives = ConfusionMatrix(tn=5)
    assert math.isnan(only_negatives.recall) and only_negatives.oa == 1.0


def test_whole_scene_ndvi_otsu_matches_the_data_readme(
    raleigh: tuple[np.ndarray, np.ndarray],
) -> None:
    """README of the shared data: l7-raleigh vegetation NDVI + Otsu -> IoU 0.656, F1 0.792."""
    pixels, truth = raleigh
    cm = ConfusionMatrix().update(run_apg(pixels, BANDS, "vegetation").mask, truth)
    assert cm.iou == pytest.approx(0.656, abs=5e-4)
    assert cm.f1 == pytest.approx(0.792, abs=5e-4)
