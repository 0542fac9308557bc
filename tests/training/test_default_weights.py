"""The shipped default weights load through the pipeline and extract on the bundled
Sentinel-2 sample; the shipped MVPNet baseline loads and predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "model" / "weights" / "default"
MVPNET = REPO / "model" / "weights" / "mvpnet"
SAMPLE = REPO / "samples" / "s2_l1c_berlin_20170216.tif"

pytestmark = pytest.mark.skipif(
    not (WEIGHTS / "model.safetensors").is_file(), reason="default weights not present"
)


def test_default_weights_size_record_and_evidence():
    """The shipped weights say how they were made and, per target, whether the
    leave-one-scene-out promotion rule made them the default, with the per-scene table."""
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert total <= 30 * 2**20
    import json

    from model.checkpoint import read_training
    from model.registry import DEFAULT_FOR

    record = read_training(WEIGHTS)
    assert record is not None and record["kind"] == "spex-staged"
    default_for = json.loads((WEIGHTS / DEFAULT_FOR).read_text())
    evidence = default_for["evidence"]
    assert set(evidence) == {"water", "vegetation", "building"}
    for target, d in evidence.items():
        assert (target in default_for["targets"]) == d["serve"]
        both = [s for s in d["scenes"] if s["delta"] is not None]
        assert both, f"{target}: no held-out scene in the evidence"
        if d["serve"]:  # the rule: mean above the index, no scene below it by > 0.05
            assert d["candidate_mean"] > d["baseline_mean"]
            assert all(s["delta"] >= -d["max_scene_loss"] for s in both)


def test_default_weights_extract_sample(tmp_path, monkeypatch):
    """`--model default` (what `spex extract` and the extract-* deployments use) runs the
    shipped SPEX for the targets it serves and finds the sample's water; the other
    targets run the spectral index."""
    from model.inference import SpexExtractor
    from model.registry import ModelRef, ModelRegistry, shipped_default_targets
    from pipeline.extract import ExtractionSettings, load_extractor, run_extraction
    from pipeline.index_extractor import IndexExtractor
    from pipeline.targets import target_names

    monkeypatch.setenv("SPEX_MODEL_REGISTRY", str(tmp_path / "empty-registry"))  # none promoted
    serves = shipped_default_targets(WEIGHTS)
    assert serves is not None
    for target in target_names():
        extractor = load_extractor("default", target=target)
        assert isinstance(extractor, SpexExtractor if target in serves else IndexExtractor)
        if target in serves:
            assert ModelRegistry().resolve("default", target) == ModelRef.checkpoint(WEIGHTS)
            assert extractor.provenance()["training"]["kind"] == "spex-staged"
    # 'spex' is the shipped weights for any target, default or not.
    assert ModelRegistry().resolve("spex", "building") == ModelRef.checkpoint(WEIGHTS)

    settings = ExtractionSettings(
        target="water", model="default", tile=256, overlap=32, batch_size=8
    )
    paths = run_extraction(SAMPLE, settings, tmp_path / "out")
    with rasterio.open(paths["mask"]) as src:
        mask = src.read(1)
    assert set(np.unique(mask)) <= {0, 1, 255}
    assert mask.shape == (768, 768) and np.mean(mask == 255) < 0.01
    # The Berlin crop holds lakes and the Spree: the default (model or index) must find
    # water, and not call most of the scene water (figures: docs/evaluation.md).
    assert 0.005 < np.mean(mask == 1) < 0.5
    if "water" in serves:
        return
    # The rule kept the index for water: the shipped SPEX itself must still load and
    # extract the sample.
    paths = run_extraction(
        SAMPLE,
        ExtractionSettings(target="water", model="spex", tile=256, overlap=32),
        tmp_path / "spex",
    )
    with rasterio.open(paths["mask"]) as src:
        spex_mask = src.read(1)
    assert set(np.unique(spex_mask)) <= {0, 1, 255} and 0.005 < np.mean(spex_mask == 1) < 0.5


def test_mvpnet_weights_predict_sample():
    from model.training.mvpnet import MVPNetExtractor
    from pipeline.extractor import TileBatch
    from pipeline.scene import open_scene

    if not (MVPNET / "mvpnet.json").is_file():
        pytest.skip("MVPNet weights not present")
    scene = open_scene(SAMPLE)
    px = np.asarray(scene.isel(y=slice(0, 128), x=slice(0, 128)).values, dtype=np.float32)
    bands = tuple(str(b) for b in scene["band"].values)
    batch = TileBatch(px[None], np.isfinite(px).all(axis=0)[None], bands, "vegetation")
    extractor = MVPNetExtractor.from_folder(MVPNET)
    extractor.fit_scene(scene, "vegetation")
    prob = extractor.predict(batch).probability
    assert prob.shape == (1, 128, 128) and np.all((prob >= 0) & (prob <= 1))
