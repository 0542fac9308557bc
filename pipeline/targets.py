"""Extraction targets (water, vegetation, building) as ``catalogs/targets.yaml`` defines them.

A target names the spectral index the APG thresholds, the side of the Otsu threshold on
which the target lies, and the category word used in the instruction text. When a scene
cannot compute the target's index (buildings on Gaofen-2 PMS or NAIP, which have no
SWIR), :func:`index_for` refuses with :class:`MissingBandError`: another index would not
measure the same surface, so substituting one silently would give plausible-looking but
wrong masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Literal

from pipeline.catalog_io import read_catalog_yaml
from pipeline.errors import CatalogError, MissingBandError
from pipeline.indices import load_index, require_bands

__all__ = ["Target", "index_for", "load_target", "load_targets", "target_names"]

Side = Literal["above", "below"]


@dataclass(frozen=True)
class Target:
    """One extraction target: ``index`` thresholded by Otsu, target pixels on ``side``."""

    name: str
    index: str
    side: Side
    category: str


@cache
def load_targets() -> dict[str, Target]:
    """Read and validate ``catalogs/targets.yaml`` once."""
    resource = files("catalogs").joinpath("targets.yaml")
    raw = read_catalog_yaml(resource, "target")
    targets: dict[str, Target] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "index" not in entry:
            raise CatalogError(f"target {name!r} in {resource} needs an 'index' key")
        side = entry.get("side", "above")
        if side not in ("above", "below"):
            raise CatalogError(
                f"target {name!r} in {resource}: side must be 'above' or 'below', not {side!r}"
            )
        index = load_index(str(entry["index"])).name  # unknown index -> CatalogError
        targets[str(name)] = Target(
            name=str(name), index=index, side=side, category=str(entry.get("category", name))
        )
    return targets


def target_names() -> list[str]:
    """Valid target names, in catalog order."""
    return list(load_targets())


def load_target(name: str | Target) -> Target:
    """The target called ``name`` (case-insensitive); unknown names list the valid ones."""
    if isinstance(name, Target):
        return name
    targets = load_targets()
    key = str(name).strip().lower()
    if key not in targets:
        raise CatalogError(f"unknown target {name!r}; valid targets: {', '.join(targets)}")
    return targets[key]


def index_for(
    target: str | Target, available_bands: Sequence[str], *, sensor: str | None = None
) -> str:
    """Name of the index to compute for ``target`` on a scene with ``available_bands``.

    Raises :class:`MissingBandError` naming the target, the index and the absent band
    when the scene cannot compute it. Never falls back to another index.
    """
    t = load_target(target)
    try:
        require_bands(t.index, list(available_bands), sensor=sensor)
    except MissingBandError as exc:
        raise MissingBandError(
            f"cannot extract {t.name}: {exc}; no substitute index is used"
        ) from exc
    return t.index
