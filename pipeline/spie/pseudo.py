"""Confident pseudo-labels of unlabelled scenes (the rule of catalogs/pseudo_labels.yaml).

Why: labelled scenes are few; unlabelled ones are many and cover other sensors, seasons
and places. Where the spectral index is far from its scene's Otsu threshold, a second
index agrees and the index's published physical bound holds (a scene without water
still has an Otsu threshold), the index + Otsu mask is much more often right than on
average
(bench/pseudo_labels.py measures it on the labelled scenes), so those pixels can teach a
model what the sensor's targets look like. Everywhere else the mask is nodata (no label),
so the model learns nothing there from the index itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np

from pipeline.catalog_io import check_keys, read_catalog_yaml
from pipeline.errors import CatalogError
from pipeline.indices import load_index
from pipeline.mask_codes import MASK_NODATA, MASK_OTHER, MASK_TARGET
from pipeline.spie.index_stats import IndexStats, index_stats, index_values
from pipeline.targets import load_target

__all__ = ["PseudoRule", "load_pseudo_rule", "pseudo_mask", "pseudo_stats"]


@dataclass(frozen=True)
class PseudoRule:
    """The rule's parameters (see catalogs/pseudo_labels.yaml)."""

    margin: float
    missing_confirm_extra: float
    confirm: dict[str, tuple[str, str]]  # target -> (index, side)
    # target -> (positive_min, negative_max) of the target's own index (None: no bound)
    bounds: dict[str, tuple[float | None, float | None]]


@cache
def load_pseudo_rule() -> PseudoRule:
    """Read and validate ``catalogs/pseudo_labels.yaml`` once."""
    resource = files("catalogs").joinpath("pseudo_labels.yaml")
    raw = read_catalog_yaml(resource, "pseudo-label")
    where = str(resource)
    check_keys(
        raw,
        where,
        allowed={"margin", "missing_confirm_extra", "confirm", "bounds"},
        needed={"margin", "missing_confirm_extra", "confirm"},
    )
    try:
        confirm = {}
        for target, entry in raw["confirm"].items():
            load_target(str(target))
            check_keys(entry, f"{where} confirm.{target}", allowed={"index", "side"})
            side = str(entry["side"])
            if side not in ("above", "below"):
                raise CatalogError(f"{resource}: confirm.{target}.side must be above or below")
            confirm[str(target)] = (load_index(str(entry["index"])).name, side)
        bounds = {}
        for target, entry in (raw.get("bounds") or {}).items():
            load_target(str(target))
            check_keys(entry, f"{where} bounds.{target}", allowed={"positive_min", "negative_max"})
            lo, hi = entry.get("positive_min"), entry.get("negative_max")
            bounds[str(target)] = (
                None if lo is None else float(lo),
                None if hi is None else float(hi),
            )
        return PseudoRule(
            float(raw["margin"]), float(raw["missing_confirm_extra"]), confirm, bounds
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"{resource}: malformed pseudo-label rule ({exc})") from exc


def pseudo_stats(
    pixels: np.ndarray, bands: Sequence[str], targets: Sequence[str], valid: np.ndarray
) -> dict[str, IndexStats]:
    """Scene statistics of every index the rule needs for ``targets``."""
    rule = load_pseudo_rule()
    needed = [load_target(t).index for t in targets]
    needed += [rule.confirm[t][0] for t in targets if t in rule.confirm]
    return index_stats(pixels, bands, needed, valid)


def _signed_z(
    pixels: np.ndarray,
    bands: Sequence[str],
    index: str,
    side: str,
    stats: Mapping[str, IndexStats],
) -> np.ndarray | None:
    st = stats.get(index)
    if st is None:
        return None
    z = (index_values(pixels, bands, index) - st.threshold) / st.spread
    return -z if side == "below" else z


def pseudo_mask(
    pixels: np.ndarray,
    bands: Sequence[str],
    valid: np.ndarray,
    target: str,
    stats: Mapping[str, IndexStats],
) -> np.ndarray:
    """uint8 (H, W) mask codes: target where confident, other where confidently not,
    nodata where unsure or without data.

    ``stats``: the scene's statistics (:func:`pseudo_stats` over the whole scene). A
    scene that cannot compute the target's index gets no pseudo-label at all.
    """
    rule = load_pseudo_rule()
    t = load_target(target)
    out = np.full(pixels.shape[1:], MASK_NODATA, np.uint8)
    z = _signed_z(pixels, bands, t.index, t.side, stats)
    if z is None:
        return out
    values = index_values(pixels, bands, t.index)
    ok = np.asarray(valid, bool) & np.isfinite(z)
    confirm = rule.confirm.get(t.name)
    zc = _signed_z(pixels, bands, *confirm, stats) if confirm else None
    with np.errstate(invalid="ignore"):
        if zc is None:
            need = rule.margin + rule.missing_confirm_extra
            pos, neg = z >= need, z <= -need
        else:
            pos = (z >= rule.margin) & (zc > 0)
            neg = (z <= -rule.margin) & (zc < 0)
        lo, hi = rule.bounds.get(t.name, (None, None))
        if lo is not None:
            pos &= values > lo
        if hi is not None:
            neg &= values < hi
    out[ok & pos] = MASK_TARGET
    out[ok & neg] = MASK_OTHER
    return out


def describe_rule() -> dict[str, Any]:
    """The rule as plain data (provenance of a pseudo-labelled subset)."""
    rule = load_pseudo_rule()
    return {
        "margin": rule.margin,
        "missing_confirm_extra": rule.missing_confirm_extra,
        "confirm": {t: {"index": i, "side": s} for t, (i, s) in rule.confirm.items()},
        "bounds": {
            t: {"positive_min": lo, "negative_max": hi} for t, (lo, hi) in rule.bounds.items()
        },
    }
