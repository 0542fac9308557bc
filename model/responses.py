"""The responses SPEX reads and writes: descriptions cut to the token budget, and the
forced response its mask is decoded from at inference.

Why a forced response: the mask branch (TCP -> SAM decoder) reads the final-layer hidden
states of a response. In training that response is the grounded writer's description of
the label mask (teacher forcing); generating one at inference costs a decoding step per
token (most of SPEX's CPU time) and makes the mask depend on whether text was asked for.
The extractor instead forces the writer's description of the APG's coarse mask, the
closest thing to the training response that exists before the mask does, in one
prefill pass. The descriptions users read are generated afterwards, from the final
mask's own regions (:mod:`model.inference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: The writer's phrasing of forced responses: one fixed key and attempt, so the same
#: window always gets the same words (deterministic masks).
FORCED_KEY = "forced-response"


def forced_response(
    coarse_mask: np.ndarray,
    pixels: np.ndarray,
    bands: Sequence[str],
    target: str,
    tokenizer: Any,
    n_tokens: int | None,
) -> str:
    """The grounded writer's description of ``coarse_mask`` (the APG's mask of the
    window, coded as :mod:`pipeline.mask_codes`), cut to ``n_tokens`` tokens as in
    training."""
    from pipeline.spie.facts import sample_facts
    from pipeline.spie.responses import GroundedWriter

    facts = sample_facts(coarse_mask, pixels, list(bands), target)
    text = GroundedWriter().write(facts, key=FORCED_KEY, attempt=0)
    return truncate_responses([text], tokenizer, n_tokens)[0]


def truncate_responses(responses: list[str], tokenizer: Any, n_tokens: int | None) -> list[str]:
    """Cut responses to the whole sentences that fit in ``n_tokens`` tokens (the first
    ``n_tokens`` tokens when not even one sentence fits): inference generates at most
    ``max_new_tokens`` tokens and the TCP pools over the response's hidden states, so
    training on the same span keeps the mask branch's input alike in both passes, and
    whole sentences teach the model to end its description (the end token) rather than
    stop mid-claim. The grounded writer puts its most important sentences first."""
    from pipeline.truthfulness import split_sentences

    if not n_tokens:
        return responses

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    out = []
    for text in responses:
        if count(text) <= n_tokens:
            out.append(text)
            continue
        sentences = split_sentences(text)
        kept = ""
        for k in range(1, len(sentences) + 1):
            candidate = " ".join(sentences[:k])
            if count(candidate) > n_tokens:
                break
            kept = candidate
        if not kept:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            kept = tokenizer.decode(ids[:n_tokens])
        out.append(kept)
    return out
