"""Decoding controls: n-gram blocking, the other-target ban, the paper's sampling, and
text off (same tokens, same mask, no decoding into text)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import BANDS4, SIZE, build

from model.checkpoint import save_checkpoint
from model.config import SpexConfig
from model.inference import SpexExtractor
from model.llm import GenerationSettings, bad_word_tokens, banned_ngram_tokens
from model.spex import SpexModel
from pipeline.extractor import TileBatch


def test_banned_ngram_tokens() -> None:
    # row 0: "1 2 3 1 2" -> the 3-gram "1 2 3" exists, so after "1 2" the 3 is banned
    assert banned_ngram_tokens([[1, 2, 3, 1, 2], [5, 6]], 3) == [[3], []]
    assert banned_ngram_tokens([[4, 4, 4]], 2) == [[4]]
    assert banned_ngram_tokens([[1, 2, 3, 4]], 3) == [[]]


def test_bad_word_tokens() -> None:
    words = [[7], [8, 9]]  # a one-token word and a two-token word
    assert bad_word_tokens([[1, 8], [1, 2]], [words, words]) == [[7, 9], [7]]
    assert bad_word_tokens([[]], [[[8, 9]]]) == [[]]


def _prompt(model: SpexModel, n: int):
    torch.manual_seed(1)
    x = torch.rand(n, model.config.input_channels, SIZE, SIZE)  # an evidence stack
    from model.msam import visual_tokens

    fused = model.encode(x)
    ins = ["Describe the water regions: []"] * n
    return model.llm.pack(visual_tokens(fused, 16), ins, model.config.system_prompt)


def test_generation_never_repeats_a_blocked_ngram_and_never_says_a_bad_word() -> None:
    model = build()
    prompt = _prompt(model, 3)
    free = model.llm.generate(prompt, GenerationSettings(max_new_tokens=24))
    n = 3
    blocked = model.llm.generate(
        prompt, GenerationSettings(max_new_tokens=24, no_repeat_ngram_size=n)
    )
    for row, m in zip(blocked.tokens, blocked.mask, strict=True):
        ids = row[m].tolist()
        grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
        assert len(grams) == len(set(grams))
    # the untrained model loops, so blocking changed something
    assert not torch.equal(free.tokens, blocked.tokens[:, : free.tokens.shape[1]])
    most = int(torch.mode(free.tokens[free.mask]).values)
    banned = model.llm.generate(
        prompt, GenerationSettings(max_new_tokens=24), bad_words=[[[most]]] * 3
    )
    assert most not in banned.tokens[banned.mask].tolist()


def test_paper_sampling_is_seeded_and_differs_from_greedy() -> None:
    model = build()
    prompt = _prompt(model, 2)
    paper = GenerationSettings.paper(max_new_tokens=12, seed=4)
    assert (paper.temperature, paper.top_p, paper.do_sample) == (0.3, 0.9, True)
    a = model.llm.generate(prompt, paper)
    b = model.llm.generate(prompt, paper)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts
    other = model.llm.generate(prompt, replace(paper, seed=5))
    greedy = model.llm.generate(prompt, GenerationSettings(max_new_tokens=12))
    assert not (torch.equal(other.tokens, a.tokens) and torch.equal(greedy.tokens, a.tokens))


def test_settings_come_from_the_checkpoint_config(tmp_path: Path) -> None:
    model = build()
    assert model.config.no_repeat_ngram_size == 8 and model.config.only_requested_target
    ex = SpexExtractor(model, device="cpu")
    assert ex.settings.no_repeat_ngram_size == 8 and ex.settings.only_requested_target
    # A configuration written before these existed decodes as before: both off.
    data = model.config.to_dict()
    del data["no_repeat_ngram_size"], data["only_requested_target"]
    old = SpexConfig.from_dict(data)
    settings = GenerationSettings.for_model(old)
    assert settings.no_repeat_ngram_size == 0 and not settings.only_requested_target
    # ... also through a saved checkpoint folder
    save_checkpoint(model, tmp_path / "ckpt")
    cfg_file = tmp_path / "ckpt" / "config.json"
    stored = json.loads(cfg_file.read_text())
    del stored["spex"]["no_repeat_ngram_size"], stored["spex"]["only_requested_target"]
    cfg_file.write_text(json.dumps(stored))
    reloaded = SpexExtractor.from_checkpoint(tmp_path / "ckpt", device="cpu")
    assert reloaded.settings.no_repeat_ngram_size == 0


def test_other_target_words_spare_the_requested_one() -> None:
    ex = SpexExtractor(build(), device="cpu")
    tok = ex.model.llm.tokenizer
    said = {tok.decode(seq).strip().lower() for seq in ex._other_target_words("water")}
    assert {"vegetation", "building", "buildings"} <= said and not any("water" in w for w in said)


def test_text_off_gives_the_same_mask_without_text() -> None:
    ex = SpexExtractor(build(), device="cpu")
    rng = np.random.default_rng(0)
    px = rng.uniform(0.0, 0.4, (2, len(BANDS4), 96, 96)).astype(np.float32)
    valid = np.ones((2, 96, 96), bool)
    on = ex.predict(TileBatch(px, valid, BANDS4, "water"))
    off = ex.predict(TileBatch(px, valid, BANDS4, "water", describe=False))
    np.testing.assert_array_equal(on.probability, off.probability)
    assert off.texts == (None, None) and all(isinstance(t, str) for t in on.texts)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_invalid_settings_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        GenerationSettings(temperature=bad)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        GenerationSettings(no_repeat_ngram_size=-1)
