"""Small pieces: augmentation, crops, draws, partial labels, config validation, schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.training.config import (
    AugmentConfig,
    BandDropout,
    config_from_dict,
    load_config,
    stage0_classes,
)
from model.training.data import (
    Geometry,
    SpieIndex,
    allowed_classes,
    coarsen,
    crop_window,
    draw_augmentation,
    make_sample,
    place_balanced_draws,
)
from model.training.loop import cosine_factor
from model.training.mvpnet import partial_label_ce

#: The stage-0 classes of the catalog (other, vegetation, water, building).
CLASSES = stage0_classes()


def test_sample_from_a_real_patch_with_every_augmentation(sample_spie):
    """A real Berlin patch: cropped to the window size at native resolution, SWIR
    dropped (zero-filled and flagged, no NDBI prior), haze and gain applied to the patch
    and to its scene's pixel sample alike, so the prior is the augmented scene's."""
    from model.config import tiny
    from model.evidence import prior_logits, scene_stats

    index = SpieIndex(sample_spie)
    rows = [r for r in index.rows if r["image_row"] == index.rows[0]["image_row"]]
    rows = [r for r in rows if r["part"] == index.rows[0]["part"]]
    spex = tiny(input_size=64)
    aug = AugmentConfig(
        haze_prob=1.0,
        haze_profile={"B": 1.0, "G": 0.7, "R": 0.5, "N": 0.2},
        band_dropout=(BandDropout(("S1", "S2"), 1.0),),
    )
    rng = np.random.default_rng(0)
    s = make_sample(index, rows, spex, aug, rng)
    assert s.evidence.shape == (spex.input_channels, 64, 64)
    assert s.bands == ["B", "G", "R", "N"]  # the sample's SWIR is gone
    nb = len(spex.bands)
    flags = s.evidence[nb : 2 * nb].max(axis=(1, 2))
    assert flags.tolist() == [1, 1, 1, 1, 0, 0]
    assert not s.evidence[spex.bands.index("S1")].any()
    assert s.priors["building"][1] is False and s.priors["water"][1] is True
    assert set(s.masks) == {r["target"] for r in rows}
    # Same draws again (crop, then augmentation) -> the scene statistics come from the
    # augmented scene sample.
    rng = np.random.default_rng(0)
    image = index.image(rows[0])
    labelled = np.isfinite(image).all(axis=0)
    labelled &= np.any([index.mask(r) != 255 for r in rows], axis=0)
    crop_window(labelled, 64, rng)
    a = draw_augmentation(aug, rng, list(index.bands[rows[0]["subset"]]))
    sample = a.radiometry(index.scene_sample(rows[0]), index.bands[rows[0]["subset"]], aug)
    stats = scene_stats(sample[a.kept(index.bands[rows[0]["subset"]])], s.bands, spex)
    want, _ = prior_logits(s.raw, s.bands, "water", stats, spex)
    assert np.array_equal(s.priors["water"][0], want)


def test_coarsen_averages_blocks_and_keeps_nodata():
    px = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    px[0, 0, 0] = np.nan
    out = coarsen(px, 2)
    assert np.isnan(out[0, 0, 0])
    assert out[0, 0, 1] == pytest.approx(np.nanmean(px[0, :2, :2]))
    assert out[1, 2, 3] == pytest.approx(px[1, 2:, 2:].mean())
    assert np.array_equal(coarsen(px, 1), px, equal_nan=True)


def test_crop_window_finds_sparse_labels():
    labelled = np.zeros((400, 300), bool)
    labelled[350, 20] = True
    for seed in range(5):
        r, c = crop_window(labelled, 64, np.random.default_rng(seed))
        assert r <= 350 < r + 64 and c <= 20 < c + 64
    assert crop_window(np.ones((40, 40), bool), 64, np.random.default_rng(0)) == (0, 0)


def test_places_weigh_the_same():
    places = ["big"] * 90 + ["small"] * 10
    picks = place_balanced_draws(places, 2000, seed=0, epoch=0)
    share_small = np.mean([places[i] == "small" for i in picks])
    assert 0.45 < share_small < 0.55
    assert picks == place_balanced_draws(places, 2000, seed=0, epoch=0)
    assert picks != place_balanced_draws(places, 2000, seed=0, epoch=1)


def test_allowed_classes_partial_labels():
    water = np.array([[1, 0, 255]], dtype=np.uint8)
    allowed = allowed_classes({"water": water})
    k = CLASSES.index
    assert allowed[:, 0, 0].tolist() == [c == "water" for c in CLASSES]
    assert not allowed[k("water"), 0, 1] and allowed[k("building"), 0, 1]
    assert not allowed[:, 0, 2].any()


def test_partial_ce_equals_ce_with_one_allowed_class():
    logits = torch.randn(1, len(CLASSES), 2, 2)
    target = torch.tensor([[[0, 1], [2, 3]]])
    allowed = torch.nn.functional.one_hot(target, len(CLASSES)).permute(0, 3, 1, 2).bool()
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(partial_label_ce(logits, allowed), ce, atol=1e-6)


def test_geometry_round_trip():
    a = np.arange(9).reshape(3, 3)
    g = Geometry(k=1, flip=True)
    assert np.array_equal(g.apply(a), np.rot90(a, 1)[:, ::-1])


def test_config_rejects_unknown_keys_and_loads_shipped():
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({"stage2": {"epocs": 3}})
    cfg = load_config("tiny")
    assert cfg.loss_weights == (1.0, 2.0, 1.0) and cfg.stages == (0, 1, 2)
    assert cfg.augment.band_dropout == (BandDropout(("S1", "S2"), 0.2),)
    assert cfg.split is None and cfg.stage2.text_grad is False


def test_cosine_schedule():
    assert cosine_factor(0, 10, 100) == pytest.approx(0.1)
    assert cosine_factor(10, 10, 100) == pytest.approx(1.0)
    assert cosine_factor(100, 10, 100) == pytest.approx(0.0)


def test_stage2_mask_branch_has_its_own_learning_rate():
    """Stage 2: encoder + MSAM trunk at lr_vision, mask branch (MSAM decoder projection,
    TCP, target tokens, SAM decoder, fine-detail path, spectral head, correction gate)
    at lr_decoder; nothing trainable is left out of the optimizer."""
    from model.config import tiny
    from model.spex import SpexModel
    from model.stages import set_stage, trainable_groups
    from model.training.config import StageConfig
    from model.training.loop import build_optimizer

    model = SpexModel(tiny(bands=("B", "G", "R", "N", "S1")))
    trainable = set_stage(model, 2)
    groups = trainable_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[0] for p in groups["decoder"]} == {
        "msam",
        "tcp",
        "decoder",
        "detail",
        "target_tokens",
        "spectral",
        "mask_gate",
    }
    assert all(
        names[id(p)].startswith("msam.to_decoder.") or not names[id(p)].startswith("msam.")
        for p in groups["decoder"]
    )
    assert {names[id(p)].split(".")[0] for p in groups["vision"]} == {"encoder", "msam"}
    assert sum(len(v) for v in groups.values()) == len(trainable)
    opt = build_optimizer(groups, StageConfig(lr_vision=3e-4, lr_decoder=1e-3))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"vision": 3e-4, "decoder": 1e-3}
    assert {
        g["name"]: g["lr"]
        for g in build_optimizer(groups, StageConfig(lr_vision=2e-4)).param_groups
    } == {"vision": 2e-4, "decoder": 2e-4}


def test_balanced_weights_give_each_class_half():
    from model.training.data import balanced_weight

    masks = torch.zeros(2, 4, 4)
    masks[0, :1] = 1  # 4 positives, 12 negatives
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1, :2] = False  # sample 1: 8 labelled negatives only
    w = balanced_weight(masks, valid)
    assert float(w[0][masks[0] == 1].sum()) == pytest.approx(8.0)
    assert float(w[0][masks[0] == 0].sum()) == pytest.approx(8.0)
    assert float(w[1].sum()) == pytest.approx(4.0) and not w[1, :2].any()


def test_balanced_partial_ce_weighs_label_patterns_alike():
    logits = torch.zeros(1, len(CLASSES), 1, 4)
    logits[0, CLASSES.index("vegetation")] = 2.0
    allowed = torch.zeros(1, len(CLASSES), 1, 4, dtype=torch.bool)
    allowed[0, CLASSES.index("vegetation"), 0, :3] = True  # three vegetation pixels
    allowed[0, CLASSES.index("other"), 0, 3] = True  # one other
    plain = partial_label_ce(logits, allowed)
    balanced = partial_label_ce(logits, allowed, balance=True)
    label = [CLASSES.index(c) for c in ("vegetation", "vegetation", "vegetation", "other")]
    losses = torch.stack(
        [torch.logsumexp(logits[0, :, 0, i], 0) - logits[0, k, 0, i] for i, k in enumerate(label)]
    )
    assert plain == pytest.approx(float(losses.mean()), abs=1e-5)
    assert balanced == pytest.approx(float(0.5 * losses[0] + 0.5 * losses[3]), abs=1e-5)
