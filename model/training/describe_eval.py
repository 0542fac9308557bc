"""How true are SPEX's descriptions? Generated text checked on SPIE patches.

For every sample of the chosen subsets (a held-out scene: every split of it), the model
writes its description exactly as the extraction job does (APG instruction, greedy
decoding with the checkpoint's settings), and the text is checked by
:func:`pipeline.truthfulness.check_description` twice:

* against the patch's *reference* facts (the ground-truth mask, as SPIE's grounded
  writer sees it): is the text true of the land cover?
* against the model's *own* mask (its probability >= 0.5): is the text true of what it
  extracted, as the inference-time check in the report judges it? (Meaningful once the
  mask branch is trained, i.e. after stage 2.)

Figures: the share of true statements among the checkable ones, the share of
descriptions that name the requested target, how many repeat a sentence, how many pass,
per-kind truth rates (count, percent, size, location, ...), and whether descriptions
differ where the tiles differ: the number of distinct texts against the number of
distinct fact signatures (region count, coverage phrase, largest region's size and
location), and the share of pairs of samples with differing signatures but the same
text. Scores cover only labelled pixels: unlabelled ones (nodata in the reference mask)
are nodata to the check, as in SPIE.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from model.training.data import SpieIndex, subset_sensor
from pipeline.extractor import TileBatch
from pipeline.mask_codes import MASK_NODATA
from pipeline.spie.facts import SampleFacts, sample_facts
from pipeline.spie.responses import percent_phrase
from pipeline.truthfulness import DescriptionCheck, check_description, summarise_checks

__all__ = ["evaluate_descriptions", "fact_signature"]


def fact_signature(facts: SampleFacts) -> tuple[Any, ...]:
    """What a short description says about a patch: tiles with different signatures
    should get different descriptions."""
    big = facts.regions[0] if facts.regions else None
    return (
        facts.target,
        facts.n_regions,
        percent_phrase(facts.positive_share) if facts.n_regions else "none",
        big.size if big else None,
        big.location if big else None,
    )


def _kind_rates(checks: Sequence[DescriptionCheck]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter] = {}
    for check in checks:
        for claim in check.claims:
            out.setdefault(claim.kind, Counter())["true" if claim.true else "false"] += 1
    return {k: {"true": v["true"], "false": v["false"]} for k, v in sorted(out.items())}


def _identical_for_differing(texts: Sequence[str], signatures: Sequence[tuple]) -> float | None:
    pairs = same = 0
    for i, j in combinations(range(len(texts)), 2):
        if signatures[i] != signatures[j]:
            pairs += 1
            same += texts[i] == texts[j]
    return round(same / pairs, 4) if pairs else None


def evaluate_descriptions(
    spie: str | Path,
    checkpoint: str | Path,
    *,
    subsets: Sequence[str],
    split: str | None = None,
    settings: Any = None,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, Any]:
    """Figures (module docstring) and one row per sample; ``settings`` (a
    :class:`model.llm.GenerationSettings`) overrides the checkpoint's greedy decoding."""
    from model.checkpoint import load_checkpoint
    from model.inference import SpexExtractor
    from pipeline.apg import build_instruction, run_apg
    from pipeline.errors import SpexInputError
    from pipeline.targets import load_target

    index = SpieIndex(spie, split=split, subsets=list(subsets))
    rows = index.rows[:limit] if limit else index.rows
    if not rows:
        raise ValueError(f"{spie}: no samples for subsets {list(subsets)} (split {split})")
    state: dict[str, str | None] = {"sensor": None}

    def prompt(pixels, bands, target, valid) -> tuple[str, np.ndarray | None]:
        try:
            apg = run_apg(pixels, bands, target, valid=valid, sensor=state["sensor"])
        except SpexInputError:
            return build_instruction(load_target(target).category, "[]"), None
        return apg.instruction, apg.mask

    extractor = SpexExtractor(
        load_checkpoint(checkpoint),
        device="cpu",
        settings=settings,
        prompt_fn=prompt,
        batch_size=batch_size,
    )
    samples: list[dict[str, Any]] = []
    truth_checks: list[DescriptionCheck] = []
    own_checks: list[DescriptionCheck] = []
    signatures: list[tuple] = []
    for row in rows:
        bands = index.bands[row["subset"]]
        image, mask = index.image(row), index.mask(row)
        valid = np.isfinite(image).all(axis=0)
        state["sensor"] = subset_sensor(row["subset"])
        batch = TileBatch(image[None], valid[None], bands, row["target"], state["sensor"])
        result = extractor.predict(batch)
        text = result.texts[0] or ""
        truth = sample_facts(mask, image, bands, row["target"])
        own = np.where(valid, (result.probability[0] >= 0.5).astype(np.uint8), MASK_NODATA)
        own = own.astype(np.uint8)
        own_facts = sample_facts(own, image, bands, row["target"])
        tc, oc = check_description(text, truth), check_description(text, own_facts)
        truth_checks.append(tc)
        own_checks.append(oc)
        signatures.append(fact_signature(truth))
        samples.append(
            {
                "sample_id": row["sample_id"],
                "subset": row["subset"],
                "split": row["split"],
                "target": row["target"],
                "text": text,
                "reference": row["response"],
                "check_reference": tc.as_dict(),
                "check_own_mask": oc.as_dict(),
            }
        )
    texts = [s["text"] for s in samples]
    return {
        "checkpoint": str(checkpoint),
        "subsets": list(subsets),
        "split": split,
        "samples": len(samples),
        "reference": summarise_checks(truth_checks),
        "own_mask": summarise_checks(own_checks),
        "kinds_reference": _kind_rates(truth_checks),
        "kinds_own_mask": _kind_rates(own_checks),
        "distinct_texts": len(set(texts)),
        "distinct_signatures": len(set(signatures)),
        "identical_text_for_differing_tiles": _identical_for_differing(texts, signatures),
        "rows": samples,
    }
