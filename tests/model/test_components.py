"""SPEX model components: shapes, the SAM import/override, stage freezing, LoRA merge,
tokenizer. Tiny configs (64 px inputs, a few generated tokens) keep this fast on CPU."""

from __future__ import annotations

import pytest
import torch
from tiny_models import BANDS4, GEN, SIZE, build, random_inputs

from model.config import SpexConfig, tiny
from model.encoder import STRIDES
from model.llm import GenerationSettings
from model.msam import visual_tokens
from model.sam_decoder import MaskDecoder, SpexMaskDecoder
from model.spex import SpexModel
from model.stages import set_stage
from model.tcp import pool_tokens
from model.tokenizer import IM_END, IM_START, train_tokenizer

BANDS13 = ("A", "B", "G", "R", "RE1", "RE2", "RE3", "N", "N2", "WV", "C", "S1", "S2")


@pytest.fixture(scope="module")
def model4() -> SpexModel:
    return build()


@pytest.mark.parametrize("bands", [BANDS4, BANDS13], ids=["4band", "13band"])
def test_shapes_and_dtypes_through_the_model(bands: tuple[str, ...]) -> None:
    model = build(bands)
    assert model.config.input_channels == 2 * len(bands) + 4 + 3
    x, prior = random_inputs(model, 2)
    feats = model.encoder(x)
    assert [f.shape[-1] for f in feats] == [SIZE // s for s in STRIDES]
    fused = model.msam(feats)
    assert fused.shape == (2, model.llm.hidden_size, SIZE // 16, SIZE // 16)
    assert visual_tokens(fused, 4).shape == (2, 4, model.llm.hidden_size)
    assert model.msam.decoder_embedding(fused).shape[1] == model.config.decoder.transformer_dim

    pred = model.infer(
        x,
        ["describe the water", "a longer instruction about water"],
        GEN,
        targets=["water", "water"],
        prior=prior,
    )
    assert pred.mask_logits.shape == (2, SIZE, SIZE)
    assert pred.mask_logits.dtype == torch.float32
    assert len(pred.texts) == 2 and all(isinstance(t, str) for t in pred.texts)
    assert pred.tokens.shape[0] == 2 and pred.tokens.shape[1] <= GEN.max_new_tokens

    out = model(
        x,
        ["a", "bb"],
        ["Water at the center.", "No water."],
        torch.zeros(2, SIZE, SIZE),
        targets=["water", "building"],
        prior=prior,
        prior_present=torch.tensor([True, False]),
    )
    for loss in (out.loss, out.text_loss, out.bce_loss, out.dice_loss):
        assert loss is not None and loss.ndim == 0 and torch.isfinite(loss)
    assert out.mask_logits.shape == (2, SIZE, SIZE)

    with pytest.raises(ValueError, match="evidence channels"):
        model.encode(torch.rand(1, model.config.input_channels + 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="prior logits"):
        model(x, ["a", "b"], ["c", "d"], torch.zeros(2, SIZE, SIZE), targets=["water"] * 2)


def test_untrained_correction_is_zero_so_the_mask_is_the_prior() -> None:
    """Before training the correction gate and the spectral head's last layer are zero:
    the mask logits are the prior's exactly, whatever the image and the description
    (the extractor test on real imagery checks the same against index + Otsu)."""
    model = build()
    x, prior = random_inputs(model, 2, seed=3)
    maps, fused = model.encode_maps(x)
    hidden = torch.rand(2, 5, model.llm.hidden_size)
    keep = torch.ones(2, 5, dtype=torch.bool)
    logits = model.decode_mask(maps, fused, hidden, keep, x, ["water", "building"], prior)
    assert torch.equal(logits, prior)


def test_batched_decoder_equals_stock_path() -> None:
    torch.manual_seed(1)
    dec = SpexMaskDecoder(32, depth=1, num_heads=2, mlp_dim=64, iou_head_hidden_dim=32).eval()
    md = dec.mask_decoder
    img = torch.randn(3, 32, 4, 4)
    pe = dec.pe_layer((4, 4)).unsqueeze(0)
    sparse = torch.randn(3, 4, 32)
    dense = dec.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 4, 4)
    with torch.no_grad():
        batched, iou = md.predict_masks(img, pe, sparse, dense.expand(3, -1, -1, -1))
        for i in range(3):  # B = 1 through the stock (repeating) path, per image
            stock, stock_iou = MaskDecoder.predict_masks(
                md, img[i : i + 1], pe, sparse[i : i + 1], dense
            )
            torch.testing.assert_close(batched[i : i + 1], stock, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[i : i + 1], stock_iou, atol=1e-5, rtol=1e-5)
        assert dec(img, sparse).shape == (3, 1, 16, 16)
        # The dense mask prompt: SAM's mask-prompt encoder where a sample has one, the
        # no-mask embedding where it has not.
        mask = torch.randn(3, 1, 16, 16)
        none = torch.zeros(3, dtype=torch.bool)
        torch.testing.assert_close(dec(img, sparse, None, mask, none), dec(img, sparse))
        some = torch.tensor([True, False, True])
        prompted = dec(img, sparse, None, mask, some)
        assert not torch.allclose(prompted[0], dec(img, sparse)[0])
        torch.testing.assert_close(prompted[1], dec(img, sparse)[1])


def test_detail_path_reaches_the_mask_and_is_optional() -> None:
    """The fine-detail path adds stride-4 features of the right shape to SAM's upscaled
    embedding (the mask changes with it); a config without it builds the stock decoder,
    which is how checkpoints written before the path existed still load."""
    model = build()
    assert model.detail is not None
    with torch.no_grad():
        model.mask_gate.fill_(1.0)  # let SAM's correction reach the mask
    x, prior = random_inputs(model, 1)
    maps, fused = model.encode_maps(x)
    detail = model.detail(maps)
    assert detail.shape == (1, model.config.decoder.transformer_dim // 8, SIZE // 4, SIZE // 4)
    hidden = torch.rand(1, 5, model.llm.hidden_size)
    keep = torch.ones(1, 5, dtype=torch.bool)
    with_detail = model.decode_mask(maps, fused, hidden, keep, x, ["water"], prior)
    model.detail, saved = None, model.detail
    without = model.decode_mask(maps, fused, hidden, keep, x, ["water"], prior)
    model.detail = saved
    assert not torch.allclose(with_detail, without)

    plain = SpexModel(SpexConfig.from_dict({**tiny(bands=BANDS4).to_dict(), "decoder": {}}))
    assert plain.detail is None
    assert not any(n.startswith("detail.") for n in plain.state_dict())
    with pytest.raises(ValueError, match="at least one target"):
        SpexModel(tiny(bands=BANDS4, prompt_targets=()))
    with pytest.raises(ValueError, match="predates evidence inputs"):
        SpexConfig.from_dict({k: v for k, v in tiny().to_dict().items() if k != "inputs"})


def test_target_token_steers_the_mask_and_unknown_targets_fail() -> None:
    """Same image, same description, another target -> another mask; the model's target
    list is the targets catalog's; a target it has no token for is a clear error."""
    from pipeline.targets import target_names

    model = build()
    assert set(model.config.prompt_targets) == set(target_names())
    with torch.no_grad():
        model.mask_gate.fill_(1.0)
    x, prior = random_inputs(model, 1)
    maps, fused = model.encode_maps(x)
    hidden = torch.rand(1, 5, model.llm.hidden_size)
    keep = torch.ones(1, 5, dtype=torch.bool)
    water = model.decode_mask(maps, fused, hidden, keep, x, ["water"], prior)
    building = model.decode_mask(maps, fused, hidden, keep, x, ["building"], prior)
    assert not torch.allclose(water, building)
    with pytest.raises(ValueError, match="trained for targets"):
        model.decode_mask(maps, fused, hidden, keep, x, ["glacier"], prior)
    with pytest.raises(ValueError, match="one target per tile"):
        model.decode_mask(maps, fused, hidden, keep, x, [], prior)


def test_segment_anything_package_init_not_required() -> None:
    import sys

    from model import sam_decoder

    try:
        import torchvision  # noqa: F401
    except Exception:
        assert "segment_anything" not in sys.modules  # the package __init__ never ran
        assert sam_decoder.MaskDecoder.__module__.startswith("_spex_sam_modeling")


@pytest.mark.parametrize("stage", [1, 2])
def test_stage_gradients_reach_exactly_the_unfrozen_parts(model4: SpexModel, stage: int) -> None:
    model = model4
    model.zero_grad(set_to_none=True)
    trainable = set_stage(model, stage)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(names) == len(trainable) > 0
    x, prior = random_inputs(model, 2)
    masks = (torch.rand(2, SIZE, SIZE) > 0.5).float() if stage == 2 else None
    out = model(
        x,
        ["water please", "water"],
        ["A small lake.", "None."],
        masks,
        targets=["water", "water"],
        prior=prior,
        prior_present=torch.tensor([True, False]),  # SAM's mask prompt and no-mask both
    )
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == names

    parts = {n.split(".")[0] for n in names}
    lora = {n for n in names if "lora_" in n}
    if stage == 1:
        assert parts == {"encoder", "msam", "llm"}
        assert lora and all("lora_" in n for n in names if n.startswith("llm."))
        assert not any(n.startswith("msam.to_decoder") for n in names)
    else:
        assert parts == {
            "encoder", "msam", "tcp", "decoder", "detail", "target_tokens", "spectral",
            "mask_gate",
        }  # fmt: skip
        assert not lora
    model.zero_grad(set_to_none=True)
    model.requires_grad_(True)


def test_lora_merge_unmerge_keeps_outputs(model4: SpexModel) -> None:
    model = model4
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # LoRA B starts at zero; make the adapter matter
    x, prior = random_inputs(model, 1)
    ins = ["Based on the provided image, describe the water regions."]
    with torch.no_grad():
        model.mask_gate.fill_(1.0)  # the description reaches the mask through SAM
    before = model.infer(x, ins, GEN, targets=["water"], prior=prior)
    model.llm.peft.merge_adapter()
    merged = model.infer(x, ins, GEN, targets=["water"], prior=prior)
    model.llm.peft.unmerge_adapter()
    after = model.infer(x, ins, GEN, targets=["water"], prior=prior)
    with torch.no_grad():
        model.mask_gate.zero_()
    torch.testing.assert_close(merged.mask_logits, before.mask_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after.mask_logits, before.mask_logits, atol=1e-5, rtol=1e-5)
    assert merged.texts == before.texts == after.texts
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.zero_()


def test_sampling_is_seeded(model4: SpexModel) -> None:
    x, prior = random_inputs(model4, 2)
    s = GenerationSettings(max_new_tokens=6, do_sample=True, repetition_penalty=1.1, seed=3)
    a = model4.infer(x, ["water", "water"], s, targets=["water", "water"], prior=prior)
    b = model4.infer(x, ["water", "water"], s, targets=["water", "water"], prior=prior)
    assert a.texts == b.texts
    assert torch.equal(a.mask_logits, b.mask_logits)


def test_tcp_pooling() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    pooled = pool_tokens(t, 3)
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]))
    assert pool_tokens(t[:2], 4).shape == (4, 2)
    assert torch.equal(pool_tokens(t[:0], 4), torch.zeros(4, 2))


def test_tokenizer_is_deterministic_chatml() -> None:
    tok = train_tokenizer(2048)
    train_tokenizer.cache_clear()
    again = train_tokenizer(2048)
    assert tok.get_vocab() == again.get_vocab()
    assert len(tok.encode(IM_START, add_special_tokens=False)) == 1
    assert tok.eos_token == IM_END
    text = "A very tiny water region at the top-left: {'Centroid': (0.125, 0.5)} é"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"


def test_config_round_trip() -> None:
    cfg = tiny(bands=BANDS13)
    assert SpexConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        SpexConfig.from_dict({**cfg.to_dict(), "nope": 1})


def test_paper_config_builds_with_paper_sizes() -> None:
    """The paper model, built on the meta device (no memory, no weights)."""
    from model.config import paper
    from model.spex import count_parameters

    with torch.device("meta"):
        model = SpexModel(paper())
    counts = count_parameters(model)
    assert 1.5e9 < counts["llm"] < 1.6e9  # Qwen2.5-1.5B dims
    assert model.config.decoder.transformer_dim == 256
    fused = model.encode(torch.zeros(1, model.config.input_channels, 512, 512, device="meta"))
    assert fused.shape == (1, 1536, 32, 32)
    assert visual_tokens(fused, model.config.visual_token_budget).shape == (1, 1024, 1536)


def test_tokenizer_corpus_speaks_the_apg_vocabulary() -> None:
    """The tokenizer's synthetic corpus uses the APG's own location and size names."""
    from model.tokenizer import LOCATIONS, SIZES
    from pipeline.apg import LOCATION_NAMES, SIZE_CLASSES

    assert set(LOCATIONS) == {name for row in LOCATION_NAMES for name in row}
    assert set(SIZES) == {name for _, name in SIZE_CLASSES} | {"huge"}
