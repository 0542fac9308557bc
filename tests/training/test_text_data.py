"""The text side of the training data: balanced targets, several true descriptions per
patch across epochs, and responses cut at whole sentences."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from model.responses import truncate_responses
from model.tokenizer import train_tokenizer
from model.training.data import SpieIndex, balance_targets, sample_text
from pipeline.spie.facts import sample_facts
from pipeline.spie.quality import score_response
from pipeline.truthfulness import split_sentences


def test_balance_targets_repeats_the_rare_ones(sample_spie: Path) -> None:
    train = SpieIndex(sample_spie, split="train").rows
    balanced = balance_targets(train, seed=0)
    counts = Counter(r["target"] for r in balanced)
    assert len(set(counts.values())) == 1  # every target as often as the most frequent
    assert counts["water"] == max(Counter(r["target"] for r in train).values())
    assert balanced == balance_targets(train, seed=0)  # seeded


def test_each_epoch_brings_another_true_description(sample_spie: Path) -> None:
    index = SpieIndex(sample_spie, split="train")
    row = next(r for r in index.rows if r["target"] == "vegetation")
    image, mask = index.image(row), index.mask(row)
    bands = index.bands[row["subset"]]
    facts = sample_facts(mask, image, bands, row["target"])
    texts = {sample_text(row, image, mask, bands, variant=e)[1] for e in range(6)}
    assert len(texts) > 1
    assert all(score_response(t, facts)[0] == 1.0 for t in texts)
    assert all(t.startswith("Vegetation ") for t in texts)  # the target comes first


def test_responses_are_cut_at_whole_sentences() -> None:
    tok = train_tokenizer(2048)
    text = (
        "Water covers a small part of the patch, in a few regions. The largest region is "
        "small and lies in the top-left. The next largest lie in the center and the "
        "bottom-right. In numbers: about 12% of the patch, 4 regions."
    )
    (short,) = truncate_responses([text], tok, 32)
    assert len(tok(short, add_special_tokens=False)["input_ids"]) <= 32
    assert short.endswith(".") and text.startswith(short)
    assert split_sentences(short) == split_sentences(text)[: len(split_sentences(short))]
    (whole,) = truncate_responses([text], tok, 400)
    assert whole == text
    (cut,) = truncate_responses(["word " * 50], tok, 8)  # no sentence fits: token cut
    assert len(tok(cut, add_special_tokens=False)["input_ids"]) <= 8
