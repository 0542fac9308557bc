"""Quality check of responses, and the regenerate-below-the-bar loop of the SPEX paper.

Rule-based score (always): the claims a response makes are checked against the
sample's facts by :mod:`pipeline.truthfulness`, the same rules that check SPEX's
generated descriptions at inference. Each check that applies counts once; the score is
the share passed:

* ``category``: the target's category word is mentioned (and no other target's is
  named in its place);
* ``length``: 40 to 2000 characters (neither a stub nor a rambling essay);
* ``count``: every "<n> ... regions/areas" claim equals the region count;
* ``absence``: "no <category>" is said if and only if there is none;
* ``percent``: every "<x>%" is within 3 points of a measured share (target share, a
  region's share of the patch, or the labelled share);
* ``sizes`` / ``locations`` / ``shapes``: every paper size class, 3x3 location or shape
  word named belongs to one of the described regions (to the largest one where the
  sentence is about the largest);
* ``bbox`` / ``spectral``: stated bounding boxes and spectral means match the measured
  ones (within the tolerances of :mod:`pipeline.truthfulness`);
* ``repeats``: no sentence is said twice.

An LLM judge (same chat client as the HTTP writer) can add its own 0..1 score; the
sample's score is then the lower of the two, so neither can wave a bad response through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.spie.errors import ResponseWriterError
from pipeline.spie.facts import SampleFacts
from pipeline.spie.llm_client import ChatClient
from pipeline.spie.responses import ResponseWriter, facts_payload
from pipeline.truthfulness import check_description

__all__ = ["DEFAULT_BAR", "LlmJudge", "QualityOutcome", "score_response", "write_checked"]

DEFAULT_BAR = 0.8
# Check names of the score, by the kind of claim (pipeline.truthfulness) they collect.
_CHECK_OF_KIND = {
    "count": "count",
    "percent": "percent",
    "size": "sizes",
    "location": "locations",
    "shape": "shapes",
    "bbox": "bbox",
    "spectral": "spectral",
}


@dataclass(frozen=True)
class QualityOutcome:
    """Chosen response, its score and checks, and how many writes it took."""

    text: str
    score: float
    attempts: int
    passed: bool
    checks: dict[str, bool] = field(default_factory=dict)
    judge_score: float | None = None


def score_response(text: str, facts: SampleFacts) -> tuple[float, dict[str, bool]]:
    """Rule-based score in [0, 1] and the result of each applicable check."""
    result = check_description(text, facts)
    kinds = result.kinds()
    checks: dict[str, bool] = {
        "category": result.target_named and kinds.get("category", True),
        "length": 40 <= len(text) <= 2000,
        # Said when (and only when) there is none; silence about an empty patch fails too.
        "absence": kinds.get("absence", facts.n_regions != 0),
    }
    for kind, name in _CHECK_OF_KIND.items():
        if kind in kinds:
            checks[name] = kinds[kind]
    if result.repeated:
        checks["repeats"] = False
    return sum(checks.values()) / len(checks), checks


JUDGE_INSTRUCTION = (
    "You check captions of satellite image patches against verified attributes. Reply "
    "with one number between 0 and 1: the share of the caption's statements that the "
    "attributes support (1 = every statement is supported, 0 = none is). Reply with the "
    "number only."
)


@dataclass(frozen=True)
class LlmJudge:
    """A 0..1 score from an LLM through the same chat client as the HTTP writer."""

    client: ChatClient
    temperature: float = 0.0
    top_p: float = 1.0

    def score(self, text: str, facts: SampleFacts) -> float:
        import json

        reply = self.client.complete(
            [
                {"role": "system", "content": JUDGE_INSTRUCTION},
                {
                    "role": "user",
                    "content": "Attributes:\n"
                    + json.dumps(facts_payload(facts))
                    + "\nCaption:\n"
                    + text,
                },
            ],
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=8,
        )
        m = re.search(r"\d+(?:\.\d+)?", reply)
        if m is None or not 0 <= float(m.group()) <= 1:
            raise ResponseWriterError(f"LLM judge answered {reply!r}, not a number in [0, 1]")
        return float(m.group())


def write_checked(
    writer: ResponseWriter,
    facts: SampleFacts,
    *,
    key: str,
    pixels: np.ndarray | None = None,
    bands: Sequence[str] = (),
    bar: float = DEFAULT_BAR,
    max_attempts: int = 3,
    judge: LlmJudge | None = None,
    on_attempt: Callable[[float], None] | None = None,
) -> QualityOutcome:
    """Write, score, and rewrite below ``bar`` (up to ``max_attempts``); keep the best."""
    best: QualityOutcome | None = None
    for attempt in range(max_attempts):
        text = writer.write(facts, key=key, attempt=attempt, pixels=pixels, bands=bands)
        score, checks = score_response(text, facts)
        judged = None
        if judge is not None:
            judged = judge.score(text, facts)
            score = min(score, judged)
        if on_attempt is not None:
            on_attempt(score)
        outcome = QualityOutcome(text, score, attempt + 1, score >= bar, checks, judged)
        if best is None or score > best.score:
            best = outcome
        if outcome.passed:
            return outcome
    assert best is not None
    return QualityOutcome(best.text, best.score, max_attempts, False, best.checks, best.judge_score)
