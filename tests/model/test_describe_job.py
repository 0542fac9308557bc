"""Descriptions through the extraction job on the bundled Sentinel-2 sample: every tile's
text is checked against its window of the final mask (recomputed here independently),
the report and the STAC item carry the verdicts, and ``--no-describe`` gives the same
mask and probability bytes while skipping the text-only work."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from pipeline.extract import ExtractionSettings, plan_extraction, run_extraction
from pipeline.scene import open_scene
from pipeline.spie.facts import sample_facts
from pipeline.truthfulness import check_description

REPO = Path(__file__).resolve().parents[2]
SCENE = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
TILE, OVERLAP = 256, 32


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(ckpt: Path, **kw) -> ExtractionSettings:
    return ExtractionSettings(
        target="water", model=str(ckpt), tile=TILE, overlap=OVERLAP, formats=("cog", "prob"), **kw
    )


def _sha(path: str | None) -> str:
    return hashlib.sha256(Path(str(path)).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def described(brief_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("describe")
    return run_extraction(str(SCENE), _settings(brief_checkpoint), out)


def test_every_description_is_checked_against_the_final_mask(described: dict) -> None:
    report = json.loads(Path(str(described["report"])).read_text())
    descriptions = report["descriptions"]
    assert len(descriptions) == 16
    scene = open_scene(str(SCENE))
    bands = [str(b) for b in scene["band"].values]
    with rasterio.open(str(described["mask"])) as src:
        final = src.read(1)
    for d in descriptions:
        rows = slice(d["row_off"], d["row_off"] + d["height"])
        cols = slice(d["col_off"], d["col_off"] + d["width"])
        pixels = np.asarray(scene[:, rows, cols].values, dtype=np.float32)
        facts = sample_facts(final[rows, cols], pixels, bands, "water")
        assert d["check"] == json.loads(json.dumps(check_description(d["text"], facts).as_dict()))
        assert d["facts"]["regions"] == facts.n_regions
    # The scene's figures are the sums of the tiles' checks. (The brief, smoke-level
    # checkpoint of these tests barely writes language; what trained weights reach on
    # scenes held out of training is measured by bench/describe.py, docs/descriptions.md.)
    truth = report["truthfulness"]
    assert truth["descriptions"] == 16
    assert truth["statements_true"] == sum(d["check"]["true"] for d in descriptions)
    assert truth["statements_false"] == sum(d["check"]["false"] for d in descriptions)
    assert truth["descriptions_passed"] == sum(d["check"]["passed"] for d in descriptions)
    named = sum(d["check"]["target_named"] for d in descriptions) / 16
    assert truth["target_named_share"] == pytest.approx(named, abs=1e-4)
    # tiny's decoding never names another target than the one asked for
    claims = [c for d in descriptions for s in d["check"]["statements"] for c in s["claims"]]
    assert not [c for c in claims if c["kind"] == "category"]
    item = json.loads(Path(str(described["stac"])).read_text())
    summary = item["properties"]["spex:descriptions"]
    assert summary["requested"] is True and summary["count"] == 16
    assert summary["share_true"] == truth["share_true"]
    md = Path(str(described["report"])).with_suffix(".md").read_text()
    assert md.index("## The scene in words") < md.index("## Descriptions of the tiles")
    assert report["narrative"] in md
    assert md.count("**Check: ") == 16


def test_no_describe_gives_the_same_masks_and_skips_the_text(
    brief_checkpoint: Path, described: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model.inference import SpexExtractor

    decoded: list[int] = []
    checks: list[int] = []
    plan = plan_extraction(str(SCENE), _settings(brief_checkpoint, describe=False), tmp_path)
    tokenizer = plan.extractor.model.llm.tokenizer
    real_decode = tokenizer.decode
    monkeypatch.setattr(
        tokenizer, "decode", lambda *a, **k: decoded.append(1) or real_decode(*a, **k)
    )
    import pipeline.extract as job

    real_check = job.check_descriptions
    monkeypatch.setattr(
        job, "check_descriptions", lambda *a, **k: checks.append(1) or real_check(*a, **k)
    )
    assert isinstance(plan.extractor, SpexExtractor)
    for batch in plan.pending_batches():
        job.run_batch(plan, [t.index for t in batch])
    paths = job.finalise(plan)
    assert decoded == [] and checks == []  # no detokenising, no check
    assert not plan.texts_dir.exists()
    assert _sha(paths["mask"]) == _sha(described["mask"])
    assert _sha(paths["probability"]) == _sha(described["probability"])
    report = json.loads(Path(str(paths["report"])).read_text())
    assert report["descriptions"] == [] and report["descriptions_requested"] is False
    assert report["truthfulness"] is None
    assert (
        report["narrative"] == json.loads(Path(str(described["report"])).read_text())["narrative"]
    )
    item = json.loads(Path(str(paths["stac"])).read_text())
    assert item["properties"]["spex:descriptions"] == {"requested": False, "count": 0}

    # Asking for descriptions afterwards recomputes the tiles (same bytes) with text.
    monkeypatch.undo()
    again = plan_extraction(str(SCENE), _settings(brief_checkpoint), tmp_path)
    assert len(again.pending_batches()) == len(plan.grid.batches(4))
    paths = run_extraction(str(SCENE), _settings(brief_checkpoint), tmp_path)
    assert _sha(paths["mask"]) == _sha(described["mask"])
    assert len(json.loads(Path(str(paths["report"])).read_text())["descriptions"]) == 16
    # ... and a finished job is a no-op for the same setting.
    assert plan_extraction(str(SCENE), _settings(brief_checkpoint), tmp_path).done
