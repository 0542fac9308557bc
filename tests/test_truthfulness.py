"""The truthfulness check on a real tile: hand-made true and false descriptions of the
vegetation in a 256 px window of the bundled Berlin sample (OSM labels as the mask),
scored statement by statement; the SPIE quality score built on the same rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.spie.facts import SampleFacts, sample_facts
from pipeline.spie.quality import score_response
from pipeline.truthfulness import (
    check_description,
    normalise_sentence,
    split_sentences,
    summarise_checks,
)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
BANDS = ["B", "G", "R", "N", "S1", "S2"]
VEGETATION = [1, 2, 3, 4, 5]  # farm, meadow, grass, scrub, forest
ROW, COL, SIZE = 512, 512, 256


@pytest.fixture(scope="module")
def tile() -> tuple[np.ndarray, np.ndarray]:
    """(pixels, labels) of the window; 0 in the labels is unlabelled."""
    window = rasterio.windows.Window(COL, ROW, SIZE, SIZE)
    with rasterio.open(SAMPLES / "s2_l1c_berlin_20170216.tif") as src:
        pixels = src.read(window=window).astype(np.float32) / 10000
    with rasterio.open(SAMPLES / "s2_l1c_berlin_20170216_osm_labels.tif") as src:
        labels = src.read(1, window=window)
    return pixels, labels


@pytest.fixture(scope="module")
def facts(tile) -> SampleFacts:
    pixels, labels = tile
    mask = np.isin(labels, VEGETATION).astype(np.uint8)
    mask[labels == 0] = 255
    return sample_facts(mask, pixels, BANDS, "vegetation")


def test_the_tile_is_what_the_descriptions_below_assume(facts: SampleFacts) -> None:
    assert facts.n_regions == 8
    assert facts.positive_share == pytest.approx(0.886, abs=0.001)
    big = facts.regions[0]
    assert (big.size, big.location, big.shape) == ("medium", "bottom-right", "irregular")
    assert [round(v, 2) for v in big.bbox] == [0.16, 0.40, 1.00, 1.00]
    assert [r.location for r in facts.regions[1:3]] == ["top-center", "middle-left"]
    assert facts.spectral is not None and facts.spectral.quantity == "NDVI"
    assert (round(facts.spectral.inside, 2), round(facts.spectral.outside, 2)) == (0.13, 0.00)


TRUE_TEXT = (
    "Vegetation covers about 89% of the labelled area in eight separate regions. "
    "The largest is medium and lies in the bottom-right. "
    "The next largest lie in the top-center and the middle-left. "
    "The largest region's outline is irregular. "
    "Its bounding box runs from (0.16, 0.40) to (1.00, 1.00). "
    "Their mean NDVI is 0.13, against 0.00 in the surroundings."
)


def test_a_true_description_is_true_statement_by_statement(facts: SampleFacts) -> None:
    check = check_description(TRUE_TEXT, facts)
    assert [s.verdict for s in check.statements] == ["true"] * 6
    kinds = sorted(c.kind for c in check.claims)
    expected = ["percent", "count", "size", "location", "location", "location", "shape"]
    assert kinds == sorted([*expected, "bbox", "spectral"])
    assert check.n_true == 9 and check.n_false == 0 and check.score == 1.0
    assert check.target_named and not check.repeated and check.passed
    assert score_response(TRUE_TEXT, facts)[0] == 1.0


def test_false_statements_are_caught_one_by_one(facts: SampleFacts) -> None:
    text = (
        "Vegetation covers about 40% of the labelled area in three regions. "
        "The largest is small and lies in the top-left. "
        "There is no water here. "
        "Its bounding box runs from (0.00, 0.00) to (0.20, 0.20). "
        "Their mean NDVI is 0.60, against 0.00 in the surroundings. "
        "The fields look pleasant in winter."
    )
    check = check_description(text, facts)
    verdicts = [s.verdict for s in check.statements]
    assert verdicts == ["false", "false", "false", "false", "false", "unverifiable"]
    wrong = {(c.kind, c.said) for c in check.claims if not c.true}
    assert wrong == {
        ("percent", "40%"),
        ("count", "three regions"),
        ("size", "small"),
        ("location", "top-left"),
        ("category", "water"),
        ("bbox", "(0.00, 0.00) to (0.20, 0.20)"),
        ("spectral", "ndvi 0.60 vs 0.00"),
    }
    assert check.n_true == 0 and check.score == 0.0 and check.n_unverifiable == 1
    assert not check.passed
    # The SPIE quality score of the same text fails on the same rules.
    score, checks = score_response(text, facts)
    assert score < 0.5 and not checks["count"] and not checks["percent"]


def test_mixed_description_scores_its_share_of_true_statements(facts: SampleFacts) -> None:
    # true: 89%, medium, bottom-right; false: 3 regions, huge
    text = (
        "Vegetation covers about 89% of the labelled area in three regions. "
        "The largest is medium and lies in the bottom-right. "
        "Some regions are huge."
    )
    check = check_description(text, facts)
    assert (check.n_true, check.n_false) == (3, 2)
    assert check.score == pytest.approx(0.6)
    assert [s.verdict for s in check.statements] == ["false", "true", "false"]


def test_description_level_defects(facts: SampleFacts) -> None:
    looping = (
        "The patch contains one vegetation regions. In total, vegetation regions. "
        "In total, vegetation regions."
    )
    check = check_description(looping, facts)
    assert check.repeated == ("in total, vegetation regions",)
    assert check.target_named and not check.passed
    assert check.kinds() == {"count": False}
    wrong_target = check_description("Water covers about 89% of the labelled area.", facts)
    assert not wrong_target.target_named
    assert {c.kind for c in wrong_target.claims if not c.true} == {"category"}
    nothing = check_description("A quiet rural landscape.", facts)
    assert nothing.score is None and not nothing.passed and nothing.n_unverifiable == 1
    total = summarise_checks([check, wrong_target, nothing])
    assert total["descriptions"] == 3 and total["descriptions_with_repeats"] == 1
    assert total["target_named_share"] == pytest.approx(1 / 3, abs=1e-4)  # only the loop


def test_absence_is_checked_both_ways(tile) -> None:
    pixels, labels = tile
    none = np.where(labels == 0, 255, 0).astype(np.uint8)  # no water in the labelled area
    empty = sample_facts(none, pixels, BANDS, "water")
    assert check_description("There is no water in this patch.", empty).passed
    some = np.isin(labels, [7]).astype(np.uint8)
    wet = sample_facts(some, pixels, BANDS, "water")
    check = check_description("There is no water in this patch.", wet)
    assert wet.n_regions > 0 and check.n_false == 1 and not check.passed


def test_sentences_split_on_full_stops_not_decimals() -> None:
    text = "It spans (0.16, 0.40) to (1.00, 1.00). Its mean NDVI is 0.13! Done?"
    assert split_sentences(text) == [
        "It spans (0.16, 0.40) to (1.00, 1.00).",
        "Its mean NDVI is 0.13!",
        "Done?",
    ]
    assert normalise_sentence("  In  total, Water.") == "in total, water"
