"""Response writers: the answer text of each SPIE sample.

Pluggable through :class:`ResponseWriter` (a ``name`` and a ``write`` method):

* :class:`GroundedWriter` (default, offline, deterministic): describes the target from
  :class:`~pipeline.spie.facts.SampleFacts` only (region count, share of the patch, the
  largest regions' size class, location, bounding box and shape, the spectral contrast),
  with phrasing drawn from a ``random.Random`` seeded by (seed, sample key, attempt).
  Every sentence is filled from a measured fact, so every statement is true of the
  sample (and :mod:`pipeline.truthfulness` can check each one); the phrasing varies so
  a model does not learn one fixed sentence, and the sentences come in order of
  importance so that a short token budget keeps whole, informative sentences.
* :class:`HttpWriter`: asks a user's OpenAI-compatible multimodal LLM, as the SPEX paper
  does with its auxiliary instructions: the request carries an *auxiliary* system
  instruction (not the training instruction) plus the verified attributes and an RGB
  quicklook of the patch, with the caller's temperature and top-p.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from pipeline.spie.facts import RegionFact, SampleFacts
from pipeline.spie.llm_client import ChatClient
from pipeline.truthfulness import count_phrase, coverage_phrase

__all__ = [
    "AUXILIARY_INSTRUCTION",
    "GroundedWriter",
    "HttpWriter",
    "ResponseWriter",
    "facts_payload",
    "quicklook_png",
]

NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
)

#: The auxiliary instruction sent to an external LLM. Deliberately different from the
#: training instruction (pipeline.apg.INSTRUCTION_TEMPLATE): the LLM gets verified facts
#: and is asked to stay within them; SPEX later learns to answer the APG instruction.
AUXILIARY_INSTRUCTION = (
    "You are a remote-sensing analyst writing ground-truth captions for a training set. "
    "You receive one satellite image patch and a JSON list of VERIFIED attributes of the "
    "{category} regions in it, measured from a reference map: the number of regions, "
    "the share of the labelled area they cover, and for the largest regions their size "
    "class, 3x3-grid location, normalised bounding box (x0, y0, x1, y1; origin top-left) "
    "and shape, plus a spectral contrast. Write one paragraph of 3 to 6 sentences that "
    "describes the {category} regions: how many, how much of the patch, where, how big, "
    "what shape, and how they differ spectrally from their surroundings. Use only the "
    "attributes given; do not invent numbers, places or classes. Use the exact size-class "
    "and location words given."
)


class ResponseWriter(Protocol):
    """Anything that writes a response for one sample (``attempt`` counts retries)."""

    @property
    def name(self) -> str:
        """Recorded with each response: which writer made it."""
        ...

    def write(
        self,
        facts: SampleFacts,
        *,
        key: str,
        attempt: int,
        pixels: np.ndarray | None = None,
        bands: Sequence[str] = (),
    ) -> str: ...


def _count(n: int, rng: random.Random) -> str:
    return NUMBER_WORDS[n] if n <= 10 and rng.random() < 0.5 else str(n)


def percent_phrase(share: float) -> str:
    """'less than 1%', 'about 7%' (whole points below 10 %), 'about 35%' (steps of 5
    above): coarse enough to learn, always within the check's 3-point tolerance."""
    if 0 < share < 0.01:
        return "less than 1%"
    pct = 100 * share
    return f"about {round(pct) if pct < 10 else 5 * round(pct / 5)}%"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _box(r: RegionFact) -> str:
    x0, y0, x1, y1 = r.bbox
    return f"({x0:.2f}, {y0:.2f}) to ({x1:.2f}, {y1:.2f})"


def _listing(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class GroundedWriter:
    """The default deterministic writer (see module docstring).

    Sentences come in order of importance, each complete, so that any prefix of whole
    sentences is itself a good description. The first two speak the coarse, checkable
    vocabulary of :mod:`pipeline.truthfulness` (coverage and count in words, the largest
    region's size class and location), start with the target's name and have one fixed
    phrasing: a small model with a short token budget learns these, and spends its
    capacity on the facts rather than on synonyms (with several phrasings, the tiny LM
    mixed them: "It lies in the center and lies in the center."). The rest (the next
    regions, the exact share and count, shape, bounding box, spectral contrast) serve
    longer budgets and have several phrasings each; ``key`` and ``attempt`` pick one.
    """

    seed: int = 0
    name: str = "grounded-v3"

    def write(
        self,
        facts: SampleFacts,
        *,
        key: str,
        attempt: int = 0,
        pixels: np.ndarray | None = None,
        bands: Sequence[str] = (),
    ) -> str:
        rng = random.Random(f"{self.seed}|{key}|{attempt}")
        cat = facts.category
        area = "patch" if facts.valid_share >= 0.999 else "labelled area"
        if facts.n_regions == 0:
            return f"There is no {cat} in this patch; all of the {area} is other land cover."
        n = facts.n_regions
        cover = coverage_phrase(facts.positive_share)
        regions = count_phrase(n)
        big = facts.regions[0]
        lead = "It" if n == 1 else "The largest region"
        out = [
            f"{cat.capitalize()} covers {cover} of the {area}, in {regions}.",
            f"{lead} is {big.size} and lies in the {big.location}.",
        ]
        others = facts.regions[1:4]
        if others:
            places = list(dict.fromkeys(f"the {r.location}" for r in others))
            same = Counter((r.size, r.location) for r in others)
            sized = [
                f"{_article(size)} {size} one in the {where}"
                if k == 1
                else f"{NUMBER_WORDS[k]} {size} ones in the {where}"
                for (size, where), k in same.items()
            ]
            out.append(
                rng.choice(
                    [
                        f"The next largest lie in {_listing(places)}."
                        if len(others) > 1
                        else f"The other one lies in {places[0]}.",
                        f"Further regions include {_listing(sized)}.",
                    ]
                )
            )
        pct = percent_phrase(facts.positive_share)
        count = f"{_count(n, rng)} region" + ("s" if n > 1 else "")
        out.append(
            rng.choice(
                [
                    f"In numbers: {pct} of the {area}, {count}.",
                    f"Measured: {pct} of the {area} in {count}.",
                ]
            )
        )
        subject = "Its" if n == 1 else "The largest region's"
        out.append(
            rng.choice([f"{subject} outline is {big.shape}.", f"{subject} shape is {big.shape}."])
        )
        out.append(
            rng.choice(
                [
                    f"{subject} bounding box runs from {_box(big)}.",
                    f"{subject} bounding box spans {_box(big)} in normalised coordinates.",
                ]
            )
        )
        if facts.spectral is not None:
            s = facts.spectral
            rel = "higher" if s.inside > s.outside else "lower"
            their = "Its" if n == 1 else "Their"
            out.append(
                rng.choice(
                    [
                        f"{their} mean {s.quantity} is {s.inside:.2f}, against {s.outside:.2f} "
                        "in the surroundings.",
                        f"Compared with the surroundings, the {cat} shows a {rel} {s.quantity} "
                        f"({s.inside:.2f} versus {s.outside:.2f}).",
                        f"Spectrally, the {cat} has a mean {s.quantity} of {s.inside:.2f}, "
                        f"{rel} than the {s.outside:.2f} of the other pixels.",
                    ]
                )
            )
        return " ".join(out)


def facts_payload(facts: SampleFacts) -> dict:
    """The verified attributes as JSON-ready data (what an external LLM is shown)."""
    payload: dict = {
        "category": facts.category,
        "number_of_regions": facts.n_regions,
        "share_of_labelled_area_percent": round(100 * facts.positive_share, 1),
        "largest_regions": [
            {
                "size": r.size,
                "location": r.location,
                "shape": r.shape,
                "bounding_box": [round(v, 3) for v in r.bbox],
            }
            for r in facts.regions[:5]
        ],
    }
    if facts.spectral is not None:
        payload["spectral_contrast"] = {
            "quantity": facts.spectral.quantity,
            "mean_inside": round(facts.spectral.inside, 3),
            "mean_outside": round(facts.spectral.outside, 3),
        }
    return payload


def quicklook_png(pixels: np.ndarray, bands: Sequence[str]) -> bytes:
    """An 8-bit RGB PNG of the patch (R, G, B if present, else the first three bands)."""
    codes = list(bands)
    idx = [codes.index(c) for c in ("R", "G", "B") if c in codes]
    if len(idx) < 3:
        idx = [min(i, len(codes) - 1) for i in range(3)]
    rgb = np.stack([pixels[i] for i in idx]).astype(np.float64)
    finite = rgb[np.isfinite(rgb)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    scaled = np.clip((rgb - lo) / max(hi - lo, 1e-9), 0, 1)
    scaled = np.nan_to_num(scaled, nan=0.0)
    top = np.iinfo(np.uint8).max
    img = Image.fromarray((scaled * top).astype(np.uint8).transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class HttpWriter:
    """Responses from an OpenAI-compatible chat endpoint (see module docstring)."""

    client: ChatClient
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 400
    send_image: bool = True
    instruction: str = AUXILIARY_INSTRUCTION
    seed: int = 0
    name: str = "http"

    def messages(
        self, facts: SampleFacts, pixels: np.ndarray | None, bands: Sequence[str]
    ) -> list[dict]:
        """The chat messages for one sample (public so tests can inspect them)."""
        text = "Verified attributes:\n" + json.dumps(facts_payload(facts), indent=1)
        content: list[dict] = [{"type": "text", "text": text}]
        if self.send_image and pixels is not None:
            data = base64.b64encode(quicklook_png(pixels, bands)).decode("ascii")
            content.append(
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
            )
        return [
            {"role": "system", "content": self.instruction.format(category=facts.category)},
            {"role": "user", "content": content},
        ]

    def write(
        self,
        facts: SampleFacts,
        *,
        key: str,
        attempt: int = 0,
        pixels: np.ndarray | None = None,
        bands: Sequence[str] = (),
    ) -> str:
        seed = int.from_bytes(f"{self.seed}|{key}|{attempt}".encode()[:8].ljust(8, b"\0"), "big")
        return self.client.complete(
            self.messages(facts, pixels, bands),
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=seed % 2**31,
        )
