"""Scene-level statistics of a spectral index: Otsu threshold and robust spread.

One unit for "how sure is the index here": the distance of a pixel's index from the
scene's Otsu threshold, in spreads of that index over the scene. The SPEX model's
spectral priors (model/evidence.py) and the pseudo-labels of unlabelled scenes
(pipeline/spie/pseudo.py) both speak it, so a prior's confidence and a pseudo-label's
margin mean the same thing.

The spread is (p90 - p10) / 2.563, the standard deviation of a normal distribution,
but insensitive to a few extreme pixels; it never goes below :data:`MIN_SPREAD`, so a
near-constant scene does not turn tiny index differences into huge distances.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.apg import otsu_threshold
from pipeline.indices import index_from_stack, missing_bands

__all__ = [
    "MIN_SPREAD",
    "IndexStats",
    "computable",
    "index_stats",
    "index_values",
    "stats_from_json",
    "stats_to_json",
]

MIN_SPREAD = 0.02
# The spread of a normal distribution between its 10th and 90th percentiles, in sigmas.
_P10_P90_SIGMAS = 2.563


@dataclass(frozen=True)
class IndexStats:
    """One index over one scene: Otsu threshold and spread."""

    threshold: float
    spread: float


def computable(index: str, bands: Sequence[str]) -> bool:
    """Whether ``bands`` hold both bands of ``index``."""
    return not missing_bands(index, list(bands))


def index_values(pixels: np.ndarray, bands: Sequence[str], index: str) -> np.ndarray:
    """``index`` of a band-first stack (any trailing shape), float32, NaN where undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(index_from_stack(index, pixels, list(bands)), dtype=np.float32)


def index_stats(
    pixels: np.ndarray,
    bands: Sequence[str],
    indices: Iterable[str],
    valid: np.ndarray | None = None,
) -> dict[str, IndexStats]:
    """Otsu threshold and spread of each of ``indices`` over a scene's pixels.

    ``pixels``: (C, ...) reflectance of the whole scene or a sample of it, NaN nodata;
    ``valid`` (optional, same trailing shape) excludes more pixels. Indices the bands
    cannot compute, or without any finite value, are left out.
    """
    ok = np.isfinite(pixels).all(axis=0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    out: dict[str, IndexStats] = {}
    for index in indices:
        if index in out or not computable(index, bands):
            continue
        values = index_values(pixels, bands, index)[ok]
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        threshold = otsu_threshold(values)
        assert threshold is not None
        p10, p90 = np.percentile(values, [10, 90])
        spread = max(float(p90 - p10) / _P10_P90_SIGMAS, MIN_SPREAD)
        out[index] = IndexStats(float(threshold), spread)
    return out


def stats_to_json(stats: Mapping[str, IndexStats]) -> dict[str, dict[str, float]]:
    return {k: asdict(v) for k, v in stats.items()}


def stats_from_json(data: Mapping[str, Any]) -> dict[str, IndexStats]:
    return {str(k): IndexStats(float(v["threshold"]), float(v["spread"])) for k, v in data.items()}
