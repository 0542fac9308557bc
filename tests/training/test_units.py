"""Small pure pieces: band alignment, partial labels, config validation, schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.training.config import CLASSES, config_from_dict, load_config
from model.training.data import Geometry, align_bands, allowed_classes
from model.training.loop import cosine_factor
from model.training.mvpnet import partial_label_ce


def test_align_bands_zero_fills_missing():
    img = np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2)
    out, present = align_bands(img, ["N", "B"], ["B", "G", "N"])
    assert present == (True, False, True)
    assert np.array_equal(out[0], img[1]) and not out[1].any() and np.array_equal(out[2], img[0])


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
    with pytest.raises(ValueError, match="unknown keys"):
        config_from_dict({"stage2": {"epocs": 3}})
    cfg = load_config("tiny")
    assert cfg.loss_weights == (1.0, 2.0, 1.0) and cfg.stages == (0, 1, 2)


def test_cosine_schedule():
    assert cosine_factor(0, 10, 100) == pytest.approx(0.1)
    assert cosine_factor(10, 10, 100) == pytest.approx(1.0)
    assert cosine_factor(100, 10, 100) == pytest.approx(0.0)


def test_stage2_mask_branch_has_its_own_learning_rate():
    """Stage 2: encoder + MSAM trunk at lr_vision, mask branch (MSAM decoder projection,
    TCP, target tokens, SAM decoder, fine-detail path) at lr_decoder; nothing trainable
    is left out of the optimizer."""
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
