"""Attribute Prompt Generator (APG), as the SPEX paper (arXiv 2508.05202, sec. 3.1) defines it.

For one tile and one target the APG

1. computes the target's spectral index (catalogs/targets.yaml -> catalogs/indices.yaml);
2. thresholds it with Otsu over the valid (finite) pixels, or with a threshold passed in
   (whole-scene extraction computes one scene-level Otsu threshold and reuses it per tile,
   so tiles agree at their seams);
3. labels the connected regions of the coarse mask and describes each one by its size
   class, centroid, 3x3-grid location and bounding box;
4. prints the 10 largest as the *spectral prompt* and wraps it in the instruction
   template the SPEX model is trained on.

Conventions (chosen here, documented because the paper leaves them open):

- **Connectivity**: 8-connectivity (``skimage.measure.label(connectivity=2)``); diagonal
  neighbours belong to one region, as one expects of a river or a field boundary drawn
  at pixel resolution.
- **Side of the threshold**: ``above`` means ``index > t`` (skimage's convention for
  ``threshold_otsu``); ``below`` means ``index <= t``, the complement over valid pixels.
- **Area ratio** ``S = N_r / (H * W)`` with ``H * W`` the full tile size, nodata included.
- **Centroid**: mean column and mean row of the region's pixel *centres*, normalised by
  ``W`` and ``H`` (``C_x = (mean(col) + 0.5) / W``), so a full tile has centroid (0.5, 0.5).
- **Bounding box**: axis-aligned, pixel *edges* normalised by ``W`` and ``H``:
  ``x_min = min(col) / W``, ``x_max = (max(col) + 1) / W`` (same for y); a full tile's box
  is the unit square. Corners are listed (x_min, y_min), (x_max, y_min), (x_max, y_max),
  (x_min, y_max): top-left, then clockwise in image coordinates (y down). The authors'
  demo prompts seem to use rotated minimum-area rectangles; axis-aligned boxes are
  cheaper, unambiguous and parse back exactly.
- **Location**: thirds of ``W`` and ``H``, half-open (``C_x < 1/3`` left, ``< 2/3``
  center, else right); names in :data:`LOCATION_NAMES`.
- **Order**: area descending; ties by the raster-scan position of the region's first
  pixel, so the output never depends on the labelling implementation.
- **Prompt text**: a Python-style list of dicts with keys 'Size of area', 'Centroid',
  'Location', 'Bounding box', coordinates printed with 3 decimals (the authors' demo
  style); :func:`parse_spectral_prompt` reads it back with ``ast.literal_eval`` (no eval).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from pipeline.errors import SpexInputError
from pipeline.indices import index_from_stack
from pipeline.mask_codes import MASK_NODATA, MASK_OTHER, MASK_TARGET
from pipeline.targets import Target, index_for, load_target

__all__ = [
    "INSTRUCTION_TEMPLATE",
    "LOCATION_NAMES",
    "MAX_REGIONS",
    "OTSU_BINS",
    "PROMPT_DECIMALS",
    "SIZE_CLASSES",
    "ApgResult",
    "RegionAttributes",
    "binary_mask",
    "build_instruction",
    "extract_regions",
    "format_spectral_prompt",
    "generate_prompt",
    "location_name",
    "otsu_threshold",
    "parse_spectral_prompt",
    "run_apg",
    "size_class",
]

#: Size classes of the SPEX paper (sec. 3.1): ``(upper bound of S, name)``, each bin
#: half-open on the left and closed on the right, e.g. very tiny is (0, 0.0305]. The
#: bounds are powers-of-two fractions of the tile (0.0305 ~ 1/32.8, 0.0610, 0.1221,
#: 0.2441 ~ 1/4, ...) as printed in the paper; anything above the last bound is "huge".
SIZE_CLASSES: tuple[tuple[float, str], ...] = (
    (0.0305, "very tiny"),
    (0.0610, "small"),
    (0.1221, "somewhat large"),
    (0.2441, "medium"),
    (0.3662, "large"),
    (0.6104, "very large"),
)
HUGE = "huge"

#: Names of the 3x3 location grid, indexed ``[row_third][column_third]`` (rows top-down).
LOCATION_NAMES: tuple[tuple[str, str, str], ...] = (
    ("top-left", "top-center", "top-right"),
    ("middle-left", "center", "middle-right"),
    ("bottom-left", "bottom-center", "bottom-right"),
)

#: The paper keeps the 10 largest regions per tile.
MAX_REGIONS = 10
#: Otsu histogram bins (skimage's default, fixed here so thresholds are reproducible).
OTSU_BINS = 256
#: Decimals of the normalised coordinates in the prompt text.
PROMPT_DECIMALS = 3
#: Instruction template of the paper; ``[category]`` and ``[spectral prompt]`` are filled.
INSTRUCTION_TEMPLATE = (
    "Based on the provided image and the attributes of the [category] regions, "
    "please provide a detailed description of them: [spectral prompt]"
)

_KEYS = ("Size of area", "Centroid", "Location", "Bounding box")
_SIZE_NAMES = frozenset([name for _, name in SIZE_CLASSES] + [HUGE])
_LOCATIONS = frozenset(n for row in LOCATION_NAMES for n in row)

Point = tuple[float, float]


@dataclass(frozen=True)
class RegionAttributes:
    """Attributes of one connected region, as the spectral prompt states them.

    ``size``, ``centroid``, ``location`` and ``bbox`` are what the prompt carries and what
    equality compares. ``area_ratio``, ``area_px`` and ``label`` are kept for reports
    when the region was measured (``None`` when parsed back from text).
    """

    size: str
    centroid: Point
    location: str
    bbox: tuple[Point, Point, Point, Point]
    area_ratio: float | None = field(default=None, compare=False)
    area_px: int | None = field(default=None, compare=False)
    label: int | None = field(default=None, compare=False)

    def rounded(self, decimals: int = PROMPT_DECIMALS) -> RegionAttributes:
        """Copy with coordinates rounded as the prompt prints them."""

        def r(p: Point) -> Point:
            return (round(p[0], decimals), round(p[1], decimals))

        return replace(
            self,
            centroid=r(self.centroid),
            bbox=(r(self.bbox[0]), r(self.bbox[1]), r(self.bbox[2]), r(self.bbox[3])),
        )

    def as_prompt_dict(self) -> dict[str, Any]:
        """The dict printed in the prompt (keys in the authors' demo style)."""
        return {
            "Size of area": self.size,
            "Centroid": self.centroid,
            "Location": self.location,
            "Bounding box": list(self.bbox),
        }


@dataclass
class ApgResult:
    """Everything the APG derived from one tile."""

    target: str
    index: str
    threshold: float | None
    mask: np.ndarray  # uint8 mask codes (pipeline.mask_codes)
    regions: list[RegionAttributes]
    spectral_prompt: str
    instruction: str
    n_regions_total: int = 0  # connected regions before keeping the largest ones


def size_class(area_ratio: float) -> str:
    """Paper size class of a region covering ``area_ratio`` of the tile."""
    if not area_ratio > 0:
        raise ValueError(f"area ratio must be > 0, got {area_ratio!r}")
    for upper, name in SIZE_CLASSES:
        if area_ratio <= upper:
            return name
    return HUGE


def location_name(cx: float, cy: float) -> str:
    """3x3-grid location of a normalised centroid (thirds, half-open intervals)."""

    def third(v: float) -> int:
        return 0 if v < 1 / 3 else (1 if v < 2 / 3 else 2)

    return LOCATION_NAMES[third(cy)][third(cx)]


def otsu_threshold(values: Any, *, nbins: int = OTSU_BINS) -> float | None:
    """Otsu threshold of the finite values in ``values`` (any shape, e.g. a decimated sample).

    Values are cast to float64 before the histogram so that the same pixels give the
    same threshold whatever their storage dtype. Returns ``None`` when no value is
    finite; a constant sample returns that constant (nothing lies strictly above it).
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return None
    if flat.min() == flat.max():
        return float(flat[0])
    return float(threshold_otsu(flat, nbins=nbins))


def binary_mask(
    index: np.ndarray, threshold: float | None, side: str, valid: np.ndarray | None = None
) -> np.ndarray:
    """uint8 mask (:mod:`pipeline.mask_codes`): target where the target side of
    ``threshold``, other elsewhere, nodata where there is none.

    Nodata = non-finite index or ``valid`` False. With ``threshold`` None (no valid
    pixel to threshold) every valid pixel is 0.
    """
    ok = np.isfinite(index)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    mask = np.full(index.shape, MASK_NODATA, dtype=np.uint8)
    mask[ok] = MASK_OTHER
    if threshold is not None:
        with np.errstate(invalid="ignore"):
            hit = index > threshold if side == "above" else index <= threshold
        mask[ok & hit] = MASK_TARGET
    return mask


_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected regions of a boolean mask, numbered 1.. in raster order of their first
    pixel, and their count.

    The same labels as scikit-image's ``label(mask, connectivity=2)`` (checked on the
    extraction masks), from scipy directly: skimage's first call imports
    ``skimage.morphology`` and with it ``scipy.spatial`` (0.1 s on the 2-core machine)."""
    labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    return labels, int(n)


def extract_regions(
    mask: np.ndarray, *, max_regions: int = MAX_REGIONS
) -> tuple[list[RegionAttributes], int]:
    """The ``max_regions`` largest 8-connected regions of target pixels, and the total count.

    Areas come from one ``bincount``; per-region statistics are computed only for the
    regions kept, inside their bounding slices, so noisy masks with thousands of specks
    stay cheap.
    """
    if mask.ndim != 2:
        raise SpexInputError(f"APG mask must be 2-D, got shape {mask.shape}")
    height, width = mask.shape
    labels, n = label_regions(mask == MASK_TARGET)
    if n == 0:
        return [], 0
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    ids = np.arange(1, n + 1)
    # area desc, then scan position of the region's first pixel, which is the label's
    # order (label_regions numbers regions in raster order)
    order = np.lexsort((ids, -areas[1:]))
    keep = ids[order[:max_regions]]
    slices = ndimage.find_objects(labels)
    total = height * width
    regions = []
    for lab in keep:
        sl = slices[lab - 1]
        rows, cols = np.nonzero(labels[sl] == lab)
        rows = rows + sl[0].start
        cols = cols + sl[1].start
        n_px = int(areas[lab])
        ratio = n_px / total
        cx = (cols.mean() + 0.5) / width
        cy = (rows.mean() + 0.5) / height
        x0, x1 = sl[1].start / width, sl[1].stop / width
        y0, y1 = sl[0].start / height, sl[0].stop / height
        regions.append(
            RegionAttributes(
                size=size_class(ratio),
                centroid=(float(cx), float(cy)),
                location=location_name(float(cx), float(cy)),
                bbox=((x0, y0), (x1, y0), (x1, y1), (x0, y1)),
                area_ratio=ratio,
                area_px=n_px,
                label=int(lab),
            )
        )
    return regions, int(n)


def _fmt_point(p: Point) -> str:
    return f"({p[0]:.{PROMPT_DECIMALS}f}, {p[1]:.{PROMPT_DECIMALS}f})"


def format_spectral_prompt(regions: Sequence[RegionAttributes]) -> str:
    """Print regions as the spectral prompt: a Python-style list of dicts, 3 decimals.

    Example: ``[{'Size of area': 'small', 'Centroid': (0.412, 0.087), 'Location':
    'top-center', 'Bounding box': [(0.301, 0.000), (0.520, 0.000), (0.520, 0.190),
    (0.301, 0.190)]}]``. An empty list prints as ``[]``.
    """
    items = []
    for r in regions:
        box = ", ".join(_fmt_point(p) for p in r.bbox)
        items.append(
            "{"
            f"'Size of area': {r.size!r}, 'Centroid': {_fmt_point(r.centroid)}, "
            f"'Location': {r.location!r}, 'Bounding box': [{box}]"
            "}"
        )
    return "[" + ", ".join(items) + "]"


def _point(value: Any, what: str) -> Point:
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise SpexInputError(f"spectral prompt: {what} must be a pair of numbers, got {value!r}")
    return (float(value[0]), float(value[1]))


def parse_spectral_prompt(text: str) -> list[RegionAttributes]:
    """Read a spectral prompt printed by :func:`format_spectral_prompt` back into regions.

    Uses ``ast.literal_eval`` (literals only, never code) and checks keys, size classes,
    locations and coordinate pairs; anything else raises :class:`SpexInputError`.
    """
    try:
        data = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise SpexInputError(f"spectral prompt is not a Python literal: {exc}") from exc
    if not isinstance(data, list):
        raise SpexInputError(f"spectral prompt must be a list, got {type(data).__name__}")
    regions = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or set(item) != set(_KEYS):
            raise SpexInputError(f"spectral prompt item {i} must be a dict with keys {_KEYS}")
        size, location, box = item["Size of area"], item["Location"], item["Bounding box"]
        if size not in _SIZE_NAMES:
            raise SpexInputError(f"spectral prompt item {i}: unknown size class {size!r}")
        if location not in _LOCATIONS:
            raise SpexInputError(f"spectral prompt item {i}: unknown location {location!r}")
        if not isinstance(box, list | tuple) or len(box) != 4:
            raise SpexInputError(f"spectral prompt item {i}: bounding box needs 4 corners")
        corners = tuple(_point(p, f"item {i} bounding box corner") for p in box)
        regions.append(
            RegionAttributes(
                size=size,
                centroid=_point(item["Centroid"], f"item {i} centroid"),
                location=location,
                bbox=corners,  # type: ignore[arg-type]
            )
        )
    return regions


def build_instruction(category: str, regions: Sequence[RegionAttributes] | str) -> str:
    """Fill the paper's instruction template with a category and a spectral prompt."""
    prompt = regions if isinstance(regions, str) else format_spectral_prompt(regions)
    return INSTRUCTION_TEMPLATE.replace("[category]", category).replace("[spectral prompt]", prompt)


def generate_prompt(
    index: np.ndarray,
    target: str | Target,
    *,
    threshold: float | None = None,
    valid: np.ndarray | None = None,
    max_regions: int = MAX_REGIONS,
) -> ApgResult:
    """APG steps 2-4 on an already computed 2-D index tile.

    ``threshold`` None means Otsu over this tile's valid pixels; a given threshold is
    used as is. All-nodata or constant tiles yield no regions, never an error.
    """
    t = load_target(target)
    values = np.asarray(index)
    if values.ndim != 2:
        raise SpexInputError(f"APG index tile must be 2-D, got shape {values.shape}")
    ok = np.isfinite(values)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != values.shape:
            raise SpexInputError(f"valid mask shape {valid.shape} != tile shape {values.shape}")
        ok &= valid
    used = otsu_threshold(values[ok]) if threshold is None else float(threshold)
    mask = binary_mask(values, used, t.side, ok)
    regions, n_total = extract_regions(mask, max_regions=max_regions)
    prompt = format_spectral_prompt(regions)
    return ApgResult(
        target=t.name,
        index=t.index,
        threshold=used,
        mask=mask,
        regions=regions,
        spectral_prompt=prompt,
        instruction=build_instruction(t.category, prompt),
        n_regions_total=n_total,
    )


def run_apg(
    pixels: Any,
    bands: Sequence[str],
    target: str | Target,
    *,
    threshold: float | None = None,
    valid: np.ndarray | None = None,
    sensor: str | None = None,
) -> ApgResult:
    """The whole APG on one tile: ``pixels`` is ``(band, H, W)`` with ``bands`` its codes.

    Raises :class:`MissingBandError` when the tile cannot compute the target's index
    (e.g. buildings without SWIR); never substitutes another index.
    """
    name = index_for(target, bands, sensor=sensor)
    stack = np.asarray(pixels)
    if stack.ndim != 3 or stack.shape[0] != len(bands):
        raise SpexInputError(
            f"APG expects pixels of shape (band, H, W) with {len(bands)} bands, got {stack.shape}"
        )
    index = index_from_stack(name, stack, bands, sensor=sensor)
    return generate_prompt(index, target, threshold=threshold, valid=valid)
