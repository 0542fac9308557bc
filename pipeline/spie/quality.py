"""Quality check of responses, and the regenerate-below-the-bar loop of the SPEX paper.

Rule-based score (always): the claims a response makes are parsed and compared with the
sample's facts. Each check that applies counts once; the score is the share passed:

* ``category``: the target's category word is mentioned;
* ``length``: 40 to 2000 characters (neither a stub nor a rambling essay);
* ``count``: the first "<n> ... regions/areas" claim equals the region count;
* ``absence``: "no <category>" is said if and only if there is none;
* ``percent``: every "<x>%" is within 3 points of a measured share (target share, a
  region's share of the patch, or the labelled share);
* ``sizes`` / ``locations``: every paper size class / 3x3 location named belongs to
  one of the described regions.

An LLM judge (same chat client as the HTTP writer) can add its own 0..1 score; the
sample's score is then the lower of the two, so neither can wave a bad response through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.apg import LOCATION_NAMES, SIZE_CLASSES
from pipeline.spie.errors import ResponseWriterError
from pipeline.spie.facts import SampleFacts
from pipeline.spie.llm_client import ChatClient
from pipeline.spie.responses import ResponseWriter, facts_payload

__all__ = ["DEFAULT_BAR", "LlmJudge", "QualityOutcome", "score_response", "write_checked"]

DEFAULT_BAR = 0.8
PERCENT_TOLERANCE = 3.0
_WORDS = {
    "a single": 1,
    "single": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_SIZES = sorted([n for _, n in SIZE_CLASSES] + ["huge"], key=len, reverse=True)
_LOCS = sorted({n for row in LOCATION_NAMES for n in row}, key=len, reverse=True)


@dataclass(frozen=True)
class QualityOutcome:
    """Chosen response, its score and checks, and how many writes it took."""

    text: str
    score: float
    attempts: int
    passed: bool
    checks: dict[str, bool] = field(default_factory=dict)
    judge_score: float | None = None


def _named(text: str, names: Sequence[str]) -> list[str]:
    """Names found in ``text`` (longest first, each span used once, '-' or ' ' joins)."""
    found = []
    lowered = text.lower().replace("centre", "center")
    for name in names:
        pattern = r"\b" + re.escape(name).replace(r"\-", r"[- ]").replace(r"\ ", r"[- ]") + r"\b"
        for m in list(re.finditer(pattern, lowered)):
            found.append(name)
            lowered = lowered[: m.start()] + " " * (m.end() - m.start()) + lowered[m.end() :]
    return found


def score_response(text: str, facts: SampleFacts) -> tuple[float, dict[str, bool]]:
    """Rule-based score in [0, 1] and the result of each applicable check."""
    low = text.lower()
    cat = re.escape(facts.category.lower())
    checks: dict[str, bool] = {
        "category": re.search(rf"\b{cat}", low) is not None,
        "length": 40 <= len(text) <= 2000,
    }
    number = r"(\d+|a single|single|one|two|three|four|five|six|seven|eight|nine|ten)"
    count = re.search(
        rf"\b{number}\s+(?:separate\s+|distinct\s+|individual\s+)?(?:{cat}\s+)?"
        r"(?:regions?|areas?|patches|bodies|parcels|zones)\b",
        low,
    )
    if count:
        token = count.group(1)
        value = int(token) if token.isdigit() else _WORDS[token]
        checks["count"] = value == facts.n_regions
    says_none = re.search(rf"\bno {cat}\b|\bcontains? no\b|\bnot contain\b|\babsent\b", low)
    checks["absence"] = bool(says_none) == (facts.n_regions == 0)
    percents = [float(p) for p in re.findall(r"(\d+(?:\.\d+)?)\s*%", low)]
    if percents:
        truths = [100 * facts.positive_share, 100 * facts.valid_share]
        truths += [100 * r.area_ratio for r in facts.regions]
        if 0 < facts.positive_share < 0.01:
            truths.append(1.0)  # "less than 1%"
        checks["percent"] = all(
            min(abs(p - t) for t in truths) <= PERCENT_TOLERANCE for p in percents
        )
    sizes = _named(text, _SIZES)
    if sizes:
        checks["sizes"] = set(sizes) <= facts.sizes
    locations = _named(text, _LOCS)
    if locations:
        checks["locations"] = set(locations) <= facts.locations
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
