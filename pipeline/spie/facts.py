"""What is true of one SPIE sample: the facts every response is written from and checked on.

Facts come from the *ground-truth* mask (not the APG's coarse mask) and the image:

* connected target regions (8-connected, :func:`pipeline.apg.extract_regions`): count,
  and for the 10 largest their paper size class, 3x3 location, normalised bounding box;
* a shape word per region, defined here so that it is checkable:
  ``elongated`` if the bounding box's long side is >= 3x its short side, else
  ``compact`` if the region fills >= 60 % of its bounding box, else ``irregular``;
* the target's share of the labelled (valid) pixels and the labelled share of the patch;
* the spectral contrast: mean of the target's index inside vs outside the target (or,
  when the sensor cannot compute that index, the band whose mean differs most).

Both the grounded writer and the rule-based quality check read these, so a response can
only state what was measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.apg import RegionAttributes, extract_regions
from pipeline.bands import band_name
from pipeline.indices import index_from_stack
from pipeline.mask_codes import MASK_NODATA, MASK_OTHER, MASK_TARGET
from pipeline.targets import index_for, load_target

__all__ = ["RegionFact", "SampleFacts", "SpectralContrast", "sample_facts", "shape_word"]

ELONGATED_RATIO = 3.0
COMPACT_FILL = 0.6


@dataclass(frozen=True)
class RegionFact:
    """One ground-truth region as a response may describe it."""

    size: str
    location: str
    centroid: tuple[float, float]
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 normalised
    area_ratio: float
    shape: str


@dataclass(frozen=True)
class SpectralContrast:
    """Mean of ``quantity`` over target pixels vs the other valid pixels."""

    quantity: str  # e.g. "NDVI" or "near infrared reflectance"
    inside: float
    outside: float


@dataclass(frozen=True)
class SampleFacts:
    """Everything a response about one (patch, target) may claim."""

    target: str
    category: str
    n_regions: int
    regions: tuple[RegionFact, ...]
    positive_share: float  # target pixels / valid (labelled) pixels
    valid_share: float  # valid pixels / patch pixels
    positive_px: int
    spectral: SpectralContrast | None = None

    @property
    def sizes(self) -> set[str]:
        return {r.size for r in self.regions}

    @property
    def locations(self) -> set[str]:
        return {r.location for r in self.regions}


def shape_word(region: RegionAttributes, height: int, width: int) -> str:
    """'elongated', 'compact' or 'irregular' by the rule in the module docstring."""
    (x0, y0), _, (x1, y1), _ = region.bbox
    w = max(1, round((x1 - x0) * width))
    h = max(1, round((y1 - y0) * height))
    if max(w, h) >= ELONGATED_RATIO * min(w, h):
        return "elongated"
    fill = (region.area_px or 0) / (w * h)
    return "compact" if fill >= COMPACT_FILL else "irregular"


def _contrast(
    mask: np.ndarray,
    pixels: np.ndarray,
    bands: Sequence[str],
    target: str,
    index: np.ndarray | None,
) -> SpectralContrast | None:
    inside, outside = mask == MASK_TARGET, mask == MASK_OTHER
    if not inside.any() or not outside.any():
        return None
    name = load_target(target).index
    values = index
    if values is None:
        try:
            index_for(target, list(bands))
            values = index_from_stack(name, pixels, list(bands))
        except Exception:  # MissingBandError and friends: fall back to one band
            values = None
    if values is not None:
        a, b = values[inside], values[outside]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size and b.size:
            return SpectralContrast(name, float(a.mean()), float(b.mean()))
    best = None
    for k, code in enumerate(bands):
        a, b = pixels[k][inside], pixels[k][outside]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size and b.size:
            diff = abs(float(a.mean()) - float(b.mean()))
            if best is None or diff > best[0]:
                best = (diff, code, float(a.mean()), float(b.mean()))
    if best is None:
        return None
    name = band_name(best[1])
    return SpectralContrast(f"{name} reflectance", best[2], best[3])


def sample_facts(
    mask: np.ndarray,
    pixels: np.ndarray,
    bands: Sequence[str],
    target: str,
    *,
    index: np.ndarray | None = None,
) -> SampleFacts:
    """Facts of one sample from its uint8 mask (mask codes) and its (band, H, W) pixels."""
    height, width = mask.shape
    regions, n_total = extract_regions(mask)
    valid = int(np.count_nonzero(mask != MASK_NODATA))
    positive = int(np.count_nonzero(mask == MASK_TARGET))
    facts = tuple(
        RegionFact(
            size=r.size,
            location=r.location,
            centroid=r.centroid,
            bbox=(r.bbox[0][0], r.bbox[0][1], r.bbox[2][0], r.bbox[2][1]),
            area_ratio=float(r.area_ratio or 0.0),
            shape=shape_word(r, height, width),
        )
        for r in regions
    )
    return SampleFacts(
        target=target,
        category=load_target(target).category,
        n_regions=n_total,
        regions=facts,
        positive_share=positive / valid if valid else 0.0,
        valid_share=valid / mask.size,
        positive_px=positive,
        spectral=_contrast(mask, pixels, bands, target, index),
    )
