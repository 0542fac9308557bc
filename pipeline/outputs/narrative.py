"""The scene in words: a short paragraph on where the target is, from the stitched mask.

Every number in it is read from the report (itself measured on the finished mask), and
every sentence is filled from a template, so the paragraph is deterministic and true by
construction: it says how much of the scene's valid area the target covers and in how
many regions, where the largest regions lie (with their areas and coordinates), how the
target is spread over the scene's 3 x 3 grid, and how much of the scene is nodata. The
model's tile descriptions follow it in the report, each with its check, so the reader
always has one statement of the facts next to the generated text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.apg import LOCATION_NAMES

__all__ = ["area_phrase", "scene_distribution", "scene_narrative"]

#: Share of the target that one ninth must hold for "most of it lies in ...".
_MOST = 0.5
#: Below this share for the best ninth, the target is "spread across the scene".
_SPREAD = 0.2


def scene_distribution(is_target: np.ndarray, row_area: np.ndarray) -> dict[str, float]:
    """Share of the target's area in each cell of the scene's 3 x 3 grid (thirds of the
    rows and columns, the APG's location names); empty when there is no target."""
    height, width = is_target.shape
    rows = [0, height // 3, 2 * height // 3, height]
    cols = [0, width // 3, 2 * width // 3, width]
    areas: dict[str, float] = {}
    for i in range(3):
        per_row = row_area[rows[i] : rows[i + 1]]
        block = is_target[rows[i] : rows[i + 1]]
        for j in range(3):
            counts = np.count_nonzero(block[:, cols[j] : cols[j + 1]], axis=1)
            areas[LOCATION_NAMES[i][j]] = float(counts @ per_row)
    total = sum(areas.values())
    if total <= 0:
        return {}
    return {name: round(a / total, 6) for name, a in areas.items()}


def area_phrase(m2: float) -> str:
    """'2.31 km2', '4.7 ha' or '350 m2', whichever reads best."""
    if m2 >= 1e6:
        return f"{m2 / 1e6:,.2f} km2"
    if m2 >= 1e4:
        return f"{m2 / 1e4:,.1f} ha"
    return f"{m2:,.0f} m2"


def _pct(share: float) -> str:
    return "less than 0.1 %" if 0 < share < 0.001 else f"{100 * share:.1f} %"


def _lonlat(lonlat: Sequence[float]) -> str:
    lon, lat = lonlat
    return f"{abs(lat):.4f}° {'N' if lat >= 0 else 'S'}, {abs(lon):.4f}° {'E' if lon >= 0 else 'W'}"


def _listing(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _spread(category: str, distribution: Mapping[str, float]) -> str | None:
    cells = sorted(distribution.items(), key=lambda kv: (-kv[1], kv[0]))
    if not cells:
        return None
    best_name, best = cells[0]
    if best >= _MOST:
        return f"Most of the {category} ({_pct(best)}) lies in the {best_name} of the scene."
    if best < _SPREAD:
        return (
            f"The {category} is spread across the scene: no cell of a 3 x 3 grid holds more "
            f"than {_pct(best)} of it."
        )
    chosen, total = [], 0.0
    for name, share in cells[:3]:
        chosen.append(f"the {name}")
        total += share
        if total >= 0.6:
            break
    return f"{_pct(total)} of the {category} lies in {_listing(chosen)} of the scene."


def scene_narrative(report: Mapping[str, Any]) -> str:
    """The paragraph (see the module docstring) for a report of
    :func:`pipeline.outputs.report.build_report`."""
    cat = str(report["category"])
    tot = report["totals"]
    share = tot["target_share_of_valid"]
    if share is None:
        return "The scene holds no valid pixel, so nothing could be extracted."
    if tot["regions"] == 0:
        text = [
            f"No {cat} was extracted: all {area_phrase(tot['valid_area_m2'])} of the scene's "
            "valid area is other land cover."
        ]
    else:
        n = tot["regions"]
        text = [
            f"{cat.capitalize()} covers {_pct(share)} of the scene's valid area "
            f"({area_phrase(tot['target_area_m2'])} of {area_phrase(tot['valid_area_m2'])}), "
            f"in {n:,} separate region{'s' if n != 1 else ''}."
        ]
        regions = report["regions"]
        big = regions[0]
        where = f"the {big['location']} of the scene, around {_lonlat(big['centroid_lonlat'])}"
        if n == 1:
            text.append(f"It covers {area_phrase(big['area_m2'])} and lies in {where}.")
        else:
            text.append(
                f"The largest region, {area_phrase(big['area_m2'])} "
                f"({_pct(big['share_of_target'] or 0.0)} of all the {cat}), lies in {where}."
            )
        nxt = [f"the {r['location']} ({area_phrase(r['area_m2'])})" for r in regions[1:3]]
        if nxt:
            text.append(f"The next largest lie in {_listing(nxt)}.")
        spread = _spread(cat, report.get("distribution") or {})
        if spread and n > 1:
            text.append(spread)
    nodata = tot["nodata_share"] or 0.0
    if nodata > 0:
        text.append(f"{_pct(nodata).capitalize()} of the scene is nodata and was not analysed.")
    return " ".join(text)
