"""SPEX weights I/O (local pretrained formats, checkpoints, clear errors) and the SPEX
extractor (determinism, batch invariance, a real Sentinel-2 tile)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import BANDS4, GEN, SIZE, build, random_inputs
from transformers import ConvNextBackbone, ConvNextConfig, Qwen2Config, Qwen2ForCausalLM

from model.checkpoint import (
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from model.config import tiny
from model.inference import SpexExtractor
from model.sam_decoder import SpexMaskDecoder
from model.spex import SpexModel
from model.tokenizer import train_tokenizer
from pipeline.errors import SpexInputError
from pipeline.extractor import Extractor, TileBatch

# Batched and single runs pad prompts differently (left padding), so float sums differ
# in the last bits; masks must agree to this absolute tolerance on probabilities.
BATCH_TOL = 1e-5


@pytest.fixture(scope="module")
def model4() -> SpexModel:
    return build()


def synthetic_tiles(n: int = 4, h: int = 48, w: int = 40) -> TileBatch:
    """Tiles with a bright-NIR field and a water patch (low NIR), plus a nodata corner."""
    rng = np.random.default_rng(0)
    px = rng.uniform(0.02, 0.08, size=(n, 4, h, w)).astype(np.float32)
    px[:, 3] += 0.3  # vegetation-like background
    for i in range(n):
        r0, c0 = 5 + 3 * i, 4 + 2 * i
        px[i, 1, r0 : r0 + 12, c0 : c0 + 10] += 0.1  # green up
        px[i, 3, r0 : r0 + 12, c0 : c0 + 10] = 0.01  # NIR down: water
    px[:, :, -4:, -4:] = np.nan
    valid = np.isfinite(px).all(axis=1)
    return TileBatch(pixels=px, valid=valid, bands=BANDS4, target="water", sensor=None)


# -- local pretrained formats ---------------------------------------------------------
def test_loads_each_local_pretrained_format(tmp_path: Path) -> None:
    torch.manual_seed(5)
    tok = train_tokenizer(2048)
    qwen_dir = tmp_path / "qwen"
    qcfg = Qwen2Config(
        vocab_size=len(tok) + 16,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    qwen = Qwen2ForCausalLM(qcfg)
    qwen.save_pretrained(qwen_dir)
    tok.save_pretrained(qwen_dir)

    sam = SpexMaskDecoder(64, depth=2, num_heads=4, mlp_dim=256, iou_head_hidden_dim=64)
    sam_state = {f"mask_decoder.{k}": v for k, v in sam.mask_decoder.state_dict().items()}
    sam_state["prompt_encoder.no_mask_embed.weight"] = sam.no_mask_embed.weight.data
    for k, v in sam.mask_downscaling.state_dict().items():
        sam_state[f"prompt_encoder.mask_downscaling.{k}"] = v
    sam_state["image_encoder.patch_embed.proj.weight"] = torch.zeros(2, 3, 1, 1)  # ignored
    sam_path = tmp_path / "sam_vit_tiny.pth"
    torch.save(sam_state, sam_path)

    bb_dir = tmp_path / "backbone"
    bb = ConvNextBackbone(
        ConvNextConfig(
            num_channels=3,
            hidden_sizes=[8, 16, 24, 32],
            depths=[1, 1, 1, 1],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
    )
    bb.save_pretrained(bb_dir)

    cfg = tiny(bands=BANDS4, input_size=SIZE)
    cfg = replace(
        cfg,
        llm=replace(cfg.llm, pretrained_path=str(qwen_dir)),
        decoder=replace(cfg.decoder, pretrained_path=str(sam_path)),
        encoder=replace(cfg.encoder, pretrained_path=str(bb_dir)),
    )
    model = SpexModel(cfg).eval()

    got = model.llm.causal_lm.model.layers[1].mlp.down_proj.weight
    torch.testing.assert_close(got, qwen.model.layers[1].mlp.down_proj.weight)
    torch.testing.assert_close(
        model.decoder.mask_decoder.transformer.layers[0].self_attn.q_proj.weight,
        sam.mask_decoder.transformer.layers[0].self_attn.q_proj.weight,
    )
    torch.testing.assert_close(model.decoder.no_mask_embed.weight, sam.no_mask_embed.weight)
    torch.testing.assert_close(  # SAM's mask-prompt encoder: the prior's dense prompt
        model.decoder.mask_downscaling[3].weight, sam.mask_downscaling[3].weight
    )
    enc = model.encoder.backbone
    torch.testing.assert_close(
        enc.encoder.stages[2].layers[0].pwconv1.weight,
        bb.encoder.stages[2].layers[0].pwconv1.weight,
    )
    stem = enc.embeddings.patch_embeddings.weight
    n = model.config.input_channels
    assert stem.shape[1] == n  # RGB stem widened to the evidence channels
    expected = bb.embeddings.patch_embeddings.weight.mean(1, keepdim=True) * 3 / n
    torch.testing.assert_close(stem[:, :1], expected)
    assert model.config.llm.hf_config is not None and model.config.encoder.hf_config is not None

    # A checkpoint of it is self-contained: it reloads without the original folders.
    x, prior = random_inputs(model, 1)
    with torch.no_grad():
        model.mask_gate.fill_(0.5)
    ref = model.infer(x, ["water"], GEN, targets=["water"], prior=prior)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(model, ckpt)
    for folder in (qwen_dir, bb_dir):
        for f in folder.iterdir():
            f.unlink()
    sam_path.unlink()
    again = load_checkpoint(ckpt).infer(x, ["water"], GEN, targets=["water"], prior=prior)
    assert again.texts == ref.texts
    torch.testing.assert_close(again.mask_logits, ref.mask_logits)


def test_sam_checkpoint_without_decoder_or_wrong_width(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"image_encoder.w": torch.zeros(1)}, path)
    dec = SpexMaskDecoder(64, depth=2, num_heads=4, mlp_dim=256, iou_head_hidden_dim=64)
    with pytest.raises(CheckpointError, match="mask_decoder"):
        dec.load_sam_checkpoint(path)
    wide = SpexMaskDecoder(32, depth=2, num_heads=4, mlp_dim=256, iou_head_hidden_dim=64)
    torch.save({f"mask_decoder.{k}": v for k, v in wide.mask_decoder.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match=r"mask_decoder\..*shape"):
        dec.load_sam_checkpoint(path)


# -- checkpoints and their errors -----------------------------------------------------
def test_checkpoint_round_trip_and_clear_errors(model4: SpexModel, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    weights = save_checkpoint(model4, ckpt)
    loaded = load_checkpoint(ckpt)
    for (n1, t1), (n2, t2) in zip(
        model4.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(t1, t2)

    # Wrong shape: the message names the tensor and both shapes.
    state = load_file(str(weights))
    state["tcp.mlp.0.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad_shape"
    bad.mkdir()
    save_file(state, str(bad / WEIGHTS))
    (bad / "config.json").write_text((ckpt / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"'tcp\.mlp\.0\.weight' has shape \(3, 3\)"):
        load_checkpoint(bad)

    # Missing tensor.
    del state["tcp.mlp.0.weight"]
    save_file(state, str(bad / WEIGHTS))
    with pytest.raises(CheckpointError, match=r"missing tensor 'tcp\.mlp\.0\.weight'"):
        load_checkpoint(bad)

    # Weights for 4 bands, config listing 6: reported in channel and band terms.
    data = json.loads((ckpt / "config.json").read_text())
    data["spex"]["bands"] = ["B", "G", "R", "N", "S1", "S2"]
    (ckpt / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"weights take 15 input channels .* makes 19"):
        load_checkpoint(ckpt)

    with pytest.raises(CheckpointError, match="not a SPEX checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    assert issubclass(CheckpointError, SpexInputError)


def test_scene_missing_a_required_band_is_a_clear_error() -> None:
    """The model's other bands are zero-filled and flagged; the required ones are not."""
    six = ("B", "G", "R", "N", "S1", "S2")
    ex = SpexExtractor(build(six), device="cpu", settings=GEN)
    assert ex.required_bands("water") == ("G", "R", "N")
    assert ex.predict(synthetic_tiles(1)).probability.shape == (1, 48, 40)  # no SWIR: fine
    tiles = synthetic_tiles(1)
    no_nir = TileBatch(tiles.pixels[:, :3], tiles.valid, tiles.bands[:3], "water")
    with pytest.raises(CheckpointError, match=r"requires bands G,R,N, .* missing N"):
        ex.predict(no_nir)
    with pytest.raises(SpexInputError, match="trained for targets"):
        ex.required_bands("glacier")


def test_untrained_extractor_reproduces_index_otsu_on_a_real_scene() -> None:
    """The mask is a correction of the scene's index + Otsu prior that starts at zero:
    an untrained SPEX gives exactly the index extractor's mask on the bundled
    Sentinel-2 sample, across windows and tiles (native resolution, no resizing)."""
    from pipeline.index_extractor import IndexExtractor
    from pipeline.scene import open_scene

    scene = open_scene(Path(__file__).resolve().parents[2] / "samples/s2_l1c_berlin_20170216.tif")
    bands = tuple(str(b) for b in scene["band"].values)
    px = np.asarray(scene.isel(y=slice(100, 260), x=slice(300, 440)).values, np.float32)
    batch = TileBatch(px[None], np.isfinite(px).all(axis=0)[None], bands, "water")
    spex = SpexExtractor(build(("B", "G", "R", "N", "S1", "S2")), device="cpu", settings=GEN)
    index = IndexExtractor(threshold_mode="scene")
    for ex in (spex, index):
        ex.fit_scene(scene, "water")
    got = spex.predict(batch).probability >= 0.5
    want = index.predict(batch).probability >= 0.5
    assert 0.01 < want.mean() < 0.99  # the crop holds water and land
    assert np.array_equal(got, want)
    assert spex.provenance()["scene_index_stats"]["NDWI"]["threshold"] == pytest.approx(
        index.threshold, abs=1e-6
    )


# -- the extractor --------------------------------------------------------------------
def test_extractor_is_deterministic_and_batch_invariant(model4: SpexModel) -> None:
    ex = SpexExtractor(model4, device="cpu", settings=GEN, batch_size=4)
    assert isinstance(ex, Extractor)
    tiles = synthetic_tiles(4)
    a = ex.predict(tiles)
    b = ex.predict(tiles)
    assert a.probability.shape == (4, 48, 40) and a.probability.dtype == np.float32
    assert np.array_equal(a.probability, b.probability)
    assert a.texts == b.texts and len(a.texts) == 4

    singles = [
        ex.predict(TileBatch(tiles.pixels[i : i + 1], tiles.valid[i : i + 1], tiles.bands, "water"))
        for i in range(4)
    ]
    single_probs = np.concatenate([s.probability for s in singles])
    np.testing.assert_allclose(a.probability, single_probs, atol=BATCH_TOL, rtol=0)
    assert a.texts == tuple(s.texts[0] for s in singles)
    assert (a.probability[:, -4:, -4:] == 0).all()  # nodata stays out

    prov = ex.provenance()
    assert prov["config"] == "tiny" and len(prov["weights_sha256"]) == 64
    json.dumps(prov)


def test_extractor_on_a_real_sentinel2_tile(shared_data: Path, tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    path = shared_data / "s2-l1c-slovenia" / "S2L1C_ref_scene2.tif"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    codes = {
        "B01": "A", "B02": "B", "B03": "G", "B04": "R", "B05": "RE1", "B06": "RE2",
        "B07": "RE3", "B08": "N", "B8A": "N2", "B09": "WV", "B10": "C", "B11": "S1",
        "B12": "S2",
    }  # fmt: skip
    with rasterio.open(path) as src:
        window = ((0, min(128, src.height)), (0, min(128, src.width)))
        pixels = src.read(window=window).astype(np.float32)
        bands = tuple(codes[d] for d in src.descriptions)
    batch = TileBatch(
        pixels=pixels[None],
        valid=np.isfinite(pixels).all(axis=0)[None],
        bands=bands,
        target="water",
        sensor="sentinel-2",
    )
    model = build(bands)
    ckpt = tmp_path / "ckpt13"
    save_checkpoint(model, ckpt)
    ex = SpexExtractor.from_checkpoint(ckpt, device="cpu", settings=GEN)
    result = ex.predict(batch)
    h, w = pixels.shape[1:]
    assert result.probability.shape == (1, h, w)
    assert np.isfinite(result.probability).all()
    assert result.probability.min() >= 0.0 and result.probability.max() <= 1.0
    assert len(result.texts) == 1 and isinstance(result.texts[0], str)
    prov = ex.provenance()
    assert prov["bands"] == list(bands)
    assert len(prov["weights_sha256"]) == 64
