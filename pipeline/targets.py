"""Extraction targets, as ``catalogs/targets.yaml`` (their one list) defines them.

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
from importlib.abc import Traversable
from importlib.resources import files
from typing import Any, Literal

from pipeline.catalog_io import check_keys, read_catalog_yaml
from pipeline.errors import CatalogError, MissingBandError
from pipeline.indices import load_index, require_bands

__all__ = [
    "Target",
    "index_for",
    "load_target",
    "load_targets",
    "target_names",
]

Side = Literal["above", "below"]


#: The targets catalog (a module attribute, so a test can point it at a temporary copy).
CATALOG: Traversable = files("catalogs").joinpath("targets.yaml")
_KEYS = {"index", "side", "category", "class_id", "colour"}


@dataclass(frozen=True)
class Target:
    """One extraction target: ``index`` thresholded by Otsu, target pixels on ``side``;
    ``category`` the instruction's word, ``class_id`` its stage-0 class, ``colour`` its
    RGB display colour (None: the quicklook's default)."""

    name: str
    index: str
    side: Side
    category: str
    class_id: int
    colour: tuple[int, int, int] | None = None


@cache
def load_targets() -> dict[str, Target]:
    """Read and validate the targets catalog once."""
    raw = read_catalog_yaml(CATALOG, "target")
    targets: dict[str, Target] = {}
    for name, entry in raw.items():
        where = f"target {name!r} in {CATALOG}"
        check_keys(entry, where, allowed=_KEYS, needed=("index", "class_id"))
        side = entry.get("side", "above")
        if side not in ("above", "below"):
            raise CatalogError(f"{where}: side must be 'above' or 'below', not {side!r}")
        index = load_index(str(entry["index"])).name  # unknown index -> CatalogError
        targets[str(name)] = Target(
            name=str(name),
            index=index,
            side=side,
            category=str(entry.get("category", name)),
            class_id=_class_id(entry["class_id"], where),
            colour=_colour(entry.get("colour"), where),
        )
    ids = [t.class_id for t in targets.values()]
    if len(set(ids)) != len(ids):
        raise CatalogError(f"{CATALOG}: class_id values must differ between targets, got {ids}")
    return targets


def _class_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CatalogError(f"{where}: class_id must be an integer >= 1 (0 is 'other')")
    return value


def _colour(value: Any, where: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    channels = value if isinstance(value, list) and len(value) == 3 else []
    if not channels or not all(type(v) is int and v in range(256) for v in channels):
        raise CatalogError(f"{where}: colour must be [red, green, blue] in 0..255, got {value!r}")
    return (value[0], value[1], value[2])


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
