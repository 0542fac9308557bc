"""Tile descriptions checked against the final mask, for the report and the STAC item.

An extractor that writes text (SPEX) describes each tile before the mask is stitched.
What the analyst receives is the *final* mask, blended across tile overlaps, so that
is what each description is checked against: for every tile with a text, the tile's
window of the finished mask COG and of the scene are read (one tile in memory at a
time), the facts are measured with the very function SPIE uses for its ground truth
(:func:`pipeline.spie.facts.sample_facts`: connected regions, size classes, 3x3
locations, coverage, and the spectral contrast of the APG's index for the target), and
the text is scored by :func:`pipeline.truthfulness.check_description`.

Each description record gains ``check`` (the verdict, every sentence and claim) and
``facts`` (what the mask says in the terms a description uses), so a reader, or the
vector writer that attaches a tile's text and score to its polygons, never has to
recompute them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import xarray as xr
from rasterio.windows import Window

from pipeline.spie.facts import SampleFacts, sample_facts
from pipeline.truthfulness import check_description, regions_phrase, summarise_checks

__all__ = ["check_descriptions", "checked_markdown", "facts_summary", "summarise_descriptions"]


def facts_summary(facts: SampleFacts) -> dict[str, Any]:
    """The tile's measured facts in the words a description uses (JSON-ready)."""
    return {
        "regions": facts.n_regions,
        "target_share": round(facts.positive_share, 4),
        "largest": (
            {"size": facts.regions[0].size, "location": facts.regions[0].location}
            if facts.regions
            else None
        ),
    }


def check_descriptions(
    records: Iterable[Mapping[str, Any]],
    mask_path: str | Path,
    scene: xr.DataArray,
    target: str,
) -> list[dict[str, Any]]:
    """Each record (``row``, ``col``, ``height``, ``width``, ``text``) with ``check`` and
    ``facts`` added; records without text are returned unchanged."""
    bands: Sequence[str] = [str(b) for b in scene["band"].values]
    out: list[dict[str, Any]] = []
    with rasterio.open(mask_path) as src:
        for record in records:
            rec = dict(record)
            text = rec.get("text")
            if not text:
                out.append(rec)
                continue
            row, col = int(rec["row"]), int(rec["col"])
            height, width = int(rec["height"]), int(rec["width"])
            mask = src.read(1, window=Window(col, row, width, height))
            pixels = np.asarray(
                scene[:, row : row + height, col : col + width].data.compute(
                    scheduler="synchronous"
                ),
                dtype=np.float32,
            )
            facts = sample_facts(mask, pixels, bands, target)
            rec["check"] = check_description(str(text), facts).as_dict()
            rec["facts"] = facts_summary(facts)
            out.append(rec)
    return out


def summarise_descriptions(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Scene-level totals of the checked descriptions (None when none was checked):
    :func:`pipeline.truthfulness.summarise_checks` plus how many texts are distinct."""
    checked = [r for r in records if r.get("check")]
    if not checked:
        return None
    summary = summarise_checks(r["check"] for r in checked)
    summary["distinct_texts"] = len({r["text"] for r in checked})
    return summary


def _verdict_line(check: Mapping[str, Any]) -> str:
    n_true, n_false = check["true"], check["false"]
    checked = n_true + n_false
    counts = f"{n_true} of {checked} checkable statements true" if checked else "nothing checkable"
    if check["passed"]:
        return f"**Check: passed** ({counts})."
    reasons = []
    if n_false:
        reasons.append(f"{n_false} false")
    if not check["target_named"]:
        reasons.append("the target is not named")
    if check["repeated_sentences"]:
        reasons.append(f"{len(check['repeated_sentences'])} sentence(s) repeated")
    if not checked:
        reasons.append("no statement could be checked")
    return f"**Check: FAILED** ({counts}; {', '.join(reasons)}): not a statement of fact."


def checked_markdown(description: Mapping[str, Any]) -> list[str]:
    """Markdown lines of one checked description: the verdict, then every sentence
    marked true, FALSE (with what the mask says) or unverifiable, then the mask's facts."""
    check = description["check"]
    lines = [_verdict_line(check), ""]
    for st in check["statements"]:
        if st["verdict"] == "false":
            wrong = "; ".join(
                f"{c['kind']} '{c['said']}', mask: {c['fact']}"
                for c in st["claims"]
                if not c["true"]
            )
            mark = f"[FALSE: {wrong}]"
        else:
            mark = f"[{st['verdict']}]"
        lines.append(f"> {mark} {st['sentence']}".replace("\n", " "))
        lines.append(">")
    if lines[-1] == ">":
        lines.pop()
    facts = description.get("facts")
    if facts:
        largest = facts["largest"]
        where = f", the largest {largest['size']} in the {largest['location']}" if largest else ""
        lines += [
            "",
            f"Mask in this tile: {regions_phrase(facts['regions'])}, "
            f"{100 * facts['target_share']:.1f} % of the valid pixels{where}.",
        ]
    return lines
