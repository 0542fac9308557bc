"""The model's input evidence and its native-resolution windows, on real imagery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.config import tiny
from model.evidence import evidence, prior_logits, scene_stats
from model.windows import blend, central_window, crop, plan_windows
from pipeline.apg import otsu_threshold
from pipeline.indices import index_from_stack
from pipeline.scene import open_scene
from pipeline.spie.index_stats import MIN_SPREAD

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "s2_l1c_berlin_20170216.tif"


@pytest.fixture(scope="module")
def berlin():
    scene = open_scene(SAMPLE)
    px = np.asarray(scene.isel(y=slice(0, 96), x=slice(0, 80)).values, np.float32)
    full = np.asarray(scene.values, np.float32)
    return [str(b) for b in scene["band"].values], px, full


def test_evidence_channels_and_missing_bands(berlin) -> None:
    """Bands in fixed physical units, a flag per band, indices, one prior per target;
    a band the scene lacks (here SWIR, as on NAIP) is zero with its flag at zero, and
    the indices and priors that need it are zero too."""
    bands, px, full = berlin
    cfg = tiny()
    stats = scene_stats(full, bands, cfg)
    valid = np.isfinite(px).all(axis=0)
    ev = evidence(px, bands, valid, stats, cfg)
    nb = len(cfg.bands)
    assert ev.shape == (cfg.input_channels, 96, 80) and ev.dtype == np.float32
    inp = cfg.inputs
    g = cfg.bands.index("G")
    np.testing.assert_allclose(
        ev[g], (px[bands.index("G")] - inp.reflectance_centre) / inp.reflectance_scale, rtol=1e-6
    )
    assert ev[nb : 2 * nb].min() == ev[nb : 2 * nb].max() == 1.0
    ndvi = np.asarray(index_from_stack("NDVI", px, bands))
    np.testing.assert_allclose(ev[2 * nb + inp.indices.index("NDVI")], ndvi, atol=1e-6)

    rgbn = [bands.index(b) for b in ("B", "G", "R", "N")]
    no_swir = evidence(px[rgbn], ["B", "G", "R", "N"], valid, stats, cfg)
    s1 = cfg.bands.index("S1")
    assert not no_swir[s1].any() and not no_swir[nb + s1].any()
    assert not no_swir[2 * nb + inp.indices.index("NDBI")].any()
    assert not no_swir[2 * nb + len(inp.indices) + cfg.prompt_targets.index("building")].any()
    logits, present = prior_logits(px[rgbn], ["B", "G", "R", "N"], "building", stats, cfg)
    assert not present and (logits == inp.absent_prior_logit).all()


def test_prior_is_the_scene_index_otsu_mask(berlin) -> None:
    """Prior logits are positive exactly where the index lies above the scene's Otsu
    threshold, in units of the scene's spread."""
    bands, px, full = berlin
    cfg = tiny()
    stats = scene_stats(full, bands, cfg)
    ndwi_scene = np.asarray(index_from_stack("NDWI", full, bands))
    threshold = otsu_threshold(ndwi_scene[np.isfinite(ndwi_scene)])
    assert stats["NDWI"].threshold == pytest.approx(threshold, abs=1e-6)
    assert stats["NDWI"].spread >= MIN_SPREAD
    logits, present = prior_logits(px, bands, "water", stats, cfg)
    ndwi = np.asarray(index_from_stack("NDWI", px, bands))
    assert present and np.array_equal(logits > 0, ndwi > threshold)
    limit = cfg.inputs.prior_logit_scale * cfg.inputs.prior_clip
    assert np.abs(logits).max() <= limit + 1e-6


def test_windows_cover_blend_and_pad() -> None:
    grid = plan_windows(300, 200, 128, 32)
    covered = np.zeros((300, 200), int)
    for w in grid:
        assert w.height == w.width == 128
        covered[w.rows, w.cols] += 1
    assert covered.min() >= 1
    ones = [np.ones((128, 128), np.float32) for _ in grid]
    np.testing.assert_allclose(blend(grid, ones), 1.0, rtol=1e-6)
    ramp = np.arange(300 * 200, dtype=np.float32).reshape(300, 200)
    parts = [crop(ramp, w, 128, np.nan) for w in grid]
    np.testing.assert_allclose(blend(grid, parts), ramp, rtol=1e-6)  # blending is exact
    small = plan_windows(40, 50, 128, 32)  # a tile smaller than a window: one, padded
    assert len(small) == 1 and crop(np.ones((3, 40, 50)), small[0], 128, 0.0).shape == (3, 128, 128)
    three = plan_windows(320, 320, 128, 32)  # offsets 0, 96, 192: a 3 x 3 grid
    assert len(three) == 9 and central_window(three) == 4
