"""Is a description true? Its statements, checked one by one against measured facts.

One implementation of every rule, used in two places: the SPIE quality check
(:func:`pipeline.spie.quality.score_response`, which scores the training responses
against the ground-truth facts of a patch) and the inference-time check of SPEX's
generated descriptions (:mod:`pipeline.outputs.descriptions`, which scores each tile's
text against the facts of the tile's *final* mask). A rule changed here changes both.

A description is split into sentences; each sentence yields the checkable *statements*
(claims) it makes, each true or false against :class:`~pipeline.spie.facts.SampleFacts`:

* ``category``: naming another target's category word ("vegetation" in a water
  description) is a false statement about what was extracted;
* ``count``: "<n> [separate|distinct] [<category>] regions/areas/patches/..." must equal
  the number of connected regions; the words "a few" / "several" / "many" must fall in
  their ranges (:data:`COUNT_WORDS`);
* ``coverage``: "<coverage words> of the patch" ("most", "a small part", ...) must fit
  the target's share of the valid pixels (:data:`COVERAGE_WORDS`);
* ``absence``: "no <category>" / "contains no" / "absent" is true iff there is none;
* ``percent``: every "<x>%" must lie within :data:`PERCENT_TOLERANCE` points of a
  measured share (the target's share of the valid pixels, a listed region's share of
  the patch, or the valid share); "less than 1%" also matches a share in (0, 1 %);
* ``size`` / ``location`` / ``shape``: every paper size class, 3x3 location or shape word
  must belong to one of the listed (largest) regions; in a sentence about "the largest"
  region it must be that region's;
* ``bbox``: "(x0, y0) to (x1, y1)" must match a listed region's normalised bounding box
  within :data:`BBOX_TOLERANCE`;
* ``spectral``: "mean <quantity> ... <a> ... <b>" must name the measured quantity and give
  the inside and outside means within :data:`SPECTRAL_TOLERANCE` (and "higher"/"lower"
  the right way round); with no measured contrast the sentence says nothing checkable.

A sentence with no checkable claim is one *unverifiable* statement. The description's
score is the share of true statements among the checkable ones (None when there is
none). Two description-level properties are reported beside it: whether the requested
target is named, and what is repeated (a sentence said twice, or a phrase of 8 words
said twice: a defect of the text, not a statement about the image). A description
*passes* when it names the target, repeats nothing, makes at least one checkable
statement and none is false.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pipeline.apg import HUGE, LOCATION_NAMES, SIZE_CLASSES
from pipeline.spie.facts import RegionFact, SampleFacts
from pipeline.targets import load_targets

__all__ = [
    "BBOX_TOLERANCE",
    "PERCENT_TOLERANCE",
    "SPECTRAL_TOLERANCE",
    "Claim",
    "DescriptionCheck",
    "Statement",
    "check_description",
    "normalise_sentence",
    "split_sentences",
    "summarise_checks",
]

#: Percentage points between a stated and a measured share (the writer rounds to 5 above
#: 10 %, so its own statements stay within this).
PERCENT_TOLERANCE = 3.0
#: Normalised units between a stated and a measured bounding-box coordinate.
BBOX_TOLERANCE = 0.05
#: Index (or reflectance) units between a stated and a measured spectral mean.
SPECTRAL_TOLERANCE = 0.05
#: Words in a phrase that, said twice, makes a repetition even inside one sentence.
REPEATED_PHRASE_WORDS = 8

#: Coverage in words: phrase -> (lowest share it is written for, share range in which it
#: is true). The writing bins are disjoint; the truth ranges are wider, as the percent
#: rule's 3-point tolerance is, and nested where the words are ("most" is true of almost
#: all), so a description at the precision a small model can deliver is checkable.
COVERAGE_WORDS: dict[str, tuple[float, tuple[float, float]]] = {
    "almost all": (0.9, (0.85, 1.0)),
    "most": (0.6, (0.5, 1.0)),
    "about half": (0.4, (0.35, 0.65)),
    "about a third": (0.25, (0.2, 0.45)),
    "a small part": (0.1, (0.05, 0.3)),
    "a tiny part": (0.0, (1e-9, 0.12)),
}
#: Region counts in words: phrase -> (lowest count it is written for, true range).
COUNT_WORDS: dict[str, tuple[int, tuple[int, int]]] = {
    "many": (10, (7, 10**9)),
    "several": (5, (3, 10)),
    "a few": (3, (2, 5)),
}

NUMBER_WORDS = {
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
SHAPES = ("elongated", "compact", "irregular")
_SIZES = sorted([n for _, n in SIZE_CLASSES] + [HUGE], key=len, reverse=True)
_LOCS = sorted({n for row in LOCATION_NAMES for n in row}, key=len, reverse=True)
_NUMBER = r"(\d+|a single|single|one|two|three|four|five|six|seven|eight|nine|ten)"
_REGION_NOUNS = r"(?:regions?|areas?|patches|bodies|parcels|zones)"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_BBOX = re.compile(
    r"\(\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*\)\s*(?:to|-)\s*"
    r"\(\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*\)"
)
_DECIMAL = re.compile(r"(?<![\d.])-?\d+\.\d+")
_LARGEST = re.compile(r"^\s*(?:the\s+)?largest\b|^\s*the\s+biggest\b")


@dataclass(frozen=True)
class Claim:
    """One checkable statement: what was said, whether it is true, and what is true."""

    kind: str
    said: str
    true: bool
    fact: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "said": self.said, "true": self.true, "fact": self.fact}


@dataclass(frozen=True)
class Statement:
    """One sentence and the claims found in it."""

    sentence: str
    claims: tuple[Claim, ...]

    @property
    def verdict(self) -> str:
        """'false' if any claim is false, 'true' if it has claims and all hold, else
        'unverifiable'."""
        if not self.claims:
            return "unverifiable"
        return "true" if all(c.true for c in self.claims) else "false"

    def as_dict(self) -> dict[str, Any]:
        return {
            "sentence": self.sentence,
            "verdict": self.verdict,
            "claims": [c.as_dict() for c in self.claims],
        }


@dataclass(frozen=True)
class DescriptionCheck:
    """The verdict on one description (see the module docstring for the counting)."""

    statements: tuple[Statement, ...]
    target_named: bool
    repeated: tuple[str, ...]

    @property
    def claims(self) -> list[Claim]:
        return [c for s in self.statements for c in s.claims]

    @property
    def n_true(self) -> int:
        return sum(c.true for c in self.claims)

    @property
    def n_false(self) -> int:
        return sum(not c.true for c in self.claims)

    @property
    def n_unverifiable(self) -> int:
        return sum(not s.claims for s in self.statements)

    @property
    def score(self) -> float | None:
        """Share of true statements among the checkable ones (None: nothing checkable)."""
        checked = self.n_true + self.n_false
        return self.n_true / checked if checked else None

    @property
    def passed(self) -> bool:
        return self.target_named and not self.repeated and self.n_true > 0 and self.n_false == 0

    def kinds(self) -> dict[str, bool]:
        """Per kind of claim: whether every claim of that kind holds."""
        out: dict[str, bool] = {}
        for c in self.claims:
            out[c.kind] = out.get(c.kind, True) and c.true
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, score, flags and every sentence with its claims."""
        return {
            "score": None if self.score is None else round(self.score, 4),
            "passed": self.passed,
            "true": self.n_true,
            "false": self.n_false,
            "unverifiable": self.n_unverifiable,
            "target_named": self.target_named,
            "repeated_sentences": list(self.repeated),
            "statements": [s.as_dict() for s in self.statements],
        }


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after . ! ? followed by space; decimals stay whole)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def normalise_sentence(sentence: str) -> str:
    """Lower case, single spaces, no trailing punctuation: the form compared for repeats."""
    return re.sub(r"\s+", " ", sentence.lower()).strip().rstrip(".!?;, ")


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


@cache
def _categories() -> tuple[str, ...]:
    return tuple(sorted({t.category.lower() for t in load_targets().values()}))


def names_category(text: str, category: str) -> bool:
    """Whether ``text`` names ``category`` (word start, so 'buildings' counts)."""
    return re.search(rf"\b{re.escape(category.lower())}", text.lower()) is not None


# -- one function per rule ----------------------------------------------------------------


def category_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    """Another target's category named where the requested one is not."""
    own = facts.category.lower()
    if names_category(sentence, own):
        return []
    return [
        Claim("category", other, False, f"the description is about {own}")
        for other in _categories()
        if other != own and names_category(sentence, other)
    ]


def coverage_phrase(share: float) -> str:
    """The words for a target share (of the valid pixels) > 0; see COVERAGE_WORDS."""
    return next(p for p, (lo, _) in COVERAGE_WORDS.items() if share >= lo)


def count_phrase(n: int) -> str:
    """'a single region', 'two regions', 'a few regions', ... for n >= 1 regions."""
    if n == 1:
        return "a single region"
    if n == 2:
        return "two regions"
    return next(f"{p} regions" for p, (lo, _) in COUNT_WORDS.items() if n >= lo)


def regions_phrase(n: int) -> str:
    """'0 regions', '1 region', '12 regions' (what the mask holds, in the report)."""
    return f"{n} region" if n == 1 else f"{n} regions"


def count_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    cat = re.escape(facts.category.lower())
    fact = regions_phrase(facts.n_regions)
    words = "|".join(re.escape(w) for w in COUNT_WORDS)
    pattern = (
        rf"\b({_NUMBER[1:-1]}|{words})\s+(?:separate\s+|distinct\s+|individual\s+)?"
        rf"(?:{cat}\w*\s+)?{_REGION_NOUNS}\b"
    )
    out = []
    for m in re.finditer(pattern, sentence.lower()):
        token = m.group(1)
        if token in COUNT_WORDS:
            lo, hi = COUNT_WORDS[token][1]
            ok = lo <= facts.n_regions <= hi
        else:
            ok = (int(token) if token.isdigit() else NUMBER_WORDS[token]) == facts.n_regions
        out.append(Claim("count", m.group(0), ok, fact))
    return out


def coverage_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    """'<coverage words> of the patch/labelled area/tile/image' against the share."""
    words = "|".join(re.escape(w) for w in COVERAGE_WORDS)
    pattern = rf"\b({words}) of the (?:patch|labelled area|tile|image)\b"
    fact = f"{100 * facts.positive_share:.1f}% of the valid pixels"
    out = []
    for m in re.finditer(pattern, sentence.lower()):
        lo, hi = COVERAGE_WORDS[m.group(1)][1]
        out.append(Claim("coverage", m.group(1), lo <= facts.positive_share <= hi, fact))
    return out


_NONE = r"\bno {cat}\b|\bcontains? no\b|\bnot contain\b|\babsent\b"


def says_absent(text: str, facts: SampleFacts) -> bool:
    cat = re.escape(facts.category.lower())
    return re.search(_NONE.format(cat=cat), text.lower()) is not None


def absence_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    if not says_absent(sentence, facts):
        return []
    fact = "none" if facts.n_regions == 0 else regions_phrase(facts.n_regions)
    return [Claim("absence", f"no {facts.category}", facts.n_regions == 0, fact)]


def _share_truths(facts: SampleFacts) -> list[float]:
    truths = [100 * facts.positive_share, 100 * facts.valid_share]
    truths += [100 * r.area_ratio for r in facts.regions]
    if 0 < facts.positive_share < 0.01:
        truths.append(1.0)  # "less than 1%"
    return truths


def percent_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    truths = _share_truths(facts)
    fact = f"{100 * facts.positive_share:.1f}% of the valid pixels"
    return [
        Claim(
            "percent",
            f"{m.group(1)}%",
            min(abs(float(m.group(1)) - t) for t in truths) <= PERCENT_TOLERANCE,
            fact,
        )
        for m in re.finditer(r"(\d+(?:\.\d+)?)\s*%", sentence.lower())
    ]


def _about_largest(sentence: str) -> bool:
    return _LARGEST.search(sentence.lower()) is not None


def _attribute_claims(
    kind: str, sentence: str, names: Sequence[str], facts: SampleFacts, attr: str
) -> list[Claim]:
    said = _named(sentence, names)
    if not said:
        return []
    regions = facts.regions
    if not regions:
        return [Claim(kind, s, False, f"no {facts.category} region") for s in said]
    if _about_largest(sentence):
        value = getattr(regions[0], attr)
        return [Claim(kind, s, s == value, f"largest region: {value}") for s in said]
    values = sorted({getattr(r, attr) for r in regions})
    return [Claim(kind, s, s in values, "listed regions: " + ", ".join(values)) for s in said]


def size_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    # "a small part of the patch" is a coverage claim, not a size class.
    words = "|".join(re.escape(w) for w in COVERAGE_WORDS)
    sentence = re.sub(rf"\b(?:{words}) of the\b", " ", sentence, flags=re.IGNORECASE)
    return _attribute_claims("size", sentence, _SIZES, facts, "size")


def location_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    return _attribute_claims("location", sentence, _LOCS, facts, "location")


def shape_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    return _attribute_claims("shape", sentence, SHAPES, facts, "shape")


def _box_matches(box: tuple[float, ...], region: RegionFact) -> bool:
    return all(abs(a - b) <= BBOX_TOLERANCE for a, b in zip(box, region.bbox, strict=True))


def bbox_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    out = []
    for m in _BBOX.finditer(sentence):
        box = tuple(float(v) for v in m.groups())
        hit = any(_box_matches(box, r) for r in facts.regions)
        near = facts.regions[0].bbox if facts.regions else None
        fact = "no region" if near is None else "largest box " + ", ".join(f"{v:.2f}" for v in near)
        out.append(Claim("bbox", m.group(0), hit, fact))
    return out


def spectral_claims(sentence: str, facts: SampleFacts) -> list[Claim]:
    """'mean <quantity> ... a ... b': inside and outside means, and higher/lower."""
    s = facts.spectral
    low = sentence.lower()
    quantities = {t.index.lower() for t in load_targets().values()}
    if s is not None:
        quantities.add(s.quantity.lower())
    named = [q for q in quantities if re.search(rf"\b{re.escape(q)}\b", low)]
    if not named or _BBOX.search(sentence):
        return []
    numbers = [float(v) for v in _DECIMAL.findall(sentence)]
    if len(numbers) < 2:
        return []
    said = f"{named[0]} {numbers[0]:.2f} vs {numbers[1]:.2f}"
    if s is None:
        return []  # nothing measured to compare with: unverifiable
    fact = f"{s.quantity} {s.inside:.2f} inside vs {s.outside:.2f} outside"
    ok = (
        s.quantity.lower() in named
        and abs(numbers[0] - s.inside) <= SPECTRAL_TOLERANCE
        and abs(numbers[1] - s.outside) <= SPECTRAL_TOLERANCE
    )
    if "higher" in low or "lower" in low:
        ok = ok and (("higher" in low) == (s.inside > s.outside))
    return [Claim("spectral", said, ok, fact)]


RULES = (
    category_claims,
    absence_claims,
    count_claims,
    coverage_claims,
    percent_claims,
    size_claims,
    location_claims,
    shape_claims,
    bbox_claims,
    spectral_claims,
)


def sentence_claims(sentence: str, facts: SampleFacts) -> tuple[Claim, ...]:
    """Every checkable claim of one sentence, rule by rule."""
    return tuple(c for rule in RULES for c in rule(sentence, facts))


def repetitions(text: str) -> tuple[str, ...]:
    """Sentences said twice (normalised), or, when none is, the first phrase of
    :data:`REPEATED_PHRASE_WORDS` words said twice within one sentence (a loop that never
    ends its sentence: "The image contains The image contains ...")."""
    seen: set[str] = set()
    repeated: list[str] = []
    for s in split_sentences(text):
        key = normalise_sentence(s)
        if key in seen and key not in repeated:
            repeated.append(key)
        seen.add(key)
    if repeated:
        return tuple(repeated)
    n = REPEATED_PHRASE_WORDS
    for sentence in split_sentences(text):
        words = re.findall(r"[a-z0-9%'.-]+", sentence.lower())
        seen_grams: set[tuple[str, ...]] = set()
        for i in range(len(words) - n + 1):
            gram = tuple(words[i : i + n])
            if gram in seen_grams:  # said again (overlapping too: a loop of a shorter period)
                return (" ".join(gram),)
            seen_grams.add(gram)
    return ()


def check_description(text: str, facts: SampleFacts) -> DescriptionCheck:
    """Check every sentence of ``text`` against ``facts``."""
    return DescriptionCheck(
        statements=tuple(Statement(s, sentence_claims(s, facts)) for s in split_sentences(text)),
        target_named=names_category(text, facts.category),
        repeated=repetitions(text),
    )


def summarise_checks(checks: Iterable[DescriptionCheck | dict[str, Any]]) -> dict[str, Any]:
    """Totals over many descriptions (objects or their ``as_dict``): statements true,
    false and unverifiable, the share true, descriptions passed, target named, repeats."""
    n = n_true = n_false = n_unver = passed = named = repeats = 0
    for c in checks:
        d = c.as_dict() if isinstance(c, DescriptionCheck) else c
        n += 1
        n_true += d["true"]
        n_false += d["false"]
        n_unver += d["unverifiable"]
        passed += bool(d["passed"])
        named += bool(d["target_named"])
        repeats += bool(d["repeated_sentences"])
    checked = n_true + n_false
    return {
        "descriptions": n,
        "descriptions_passed": passed,
        "statements_true": n_true,
        "statements_false": n_false,
        "statements_unverifiable": n_unver,
        "share_true": round(n_true / checked, 4) if checked else None,
        "target_named_share": round(named / n, 4) if n else None,
        "descriptions_with_repeats": repeats,
    }
