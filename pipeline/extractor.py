"""The one extractor interface of the pipeline.

Anything that turns a batch of tiles into per-pixel target probabilities plugs into the
same extraction job and flow: the spectral-index baseline, the vision-only MVPNet
baseline and SPEX itself. The job only ever talks to this protocol, so a new extractor
never touches tiling, stitching or outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr


@dataclass(frozen=True)
class TileBatch:
    """B tiles cut from one scene, in canonical band order.

    pixels: float32 (B, C, H, W) reflectance, NaN where the source is nodata.
    valid: bool (B, H, W), True where every band holds data.
    bands: canonical band codes, one per channel (B, G, R, N, S1, ...).
    target: a target name of ``catalogs/targets.yaml``.
    sensor: sensor catalog name, or None when unknown.
    describe: whether descriptions are wanted; an extractor that writes text skips the
    work that only the text needs when False (and returns None texts), never the work
    its probabilities depend on.
    """

    pixels: np.ndarray
    valid: np.ndarray
    bands: tuple[str, ...]
    target: str
    sensor: str | None = None
    describe: bool = True

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4:
            raise ValueError(f"TileBatch.pixels must be (B, C, H, W), got {self.pixels.shape}")
        b, c, h, w = self.pixels.shape
        if self.valid.shape != (b, h, w):
            raise ValueError(f"TileBatch.valid must be {(b, h, w)}, got {self.valid.shape}")
        if len(self.bands) != c:
            raise ValueError(f"TileBatch has {c} channels but {len(self.bands)} band names")


@dataclass(frozen=True)
class TileResult:
    """What an extractor returns for a batch.

    probability: float32 (B, H, W) in [0, 1]; values where the batch is invalid are
    ignored by the stitcher (nodata stays nodata).
    texts: one description per tile, or None where the extractor writes no text.
    """

    probability: np.ndarray
    texts: tuple[str | None, ...]


@runtime_checkable
class Extractor(Protocol):
    """Turns tiles into target probabilities; see the module docstring."""

    name: str

    def required_bands(self, target: str) -> tuple[str, ...]:
        """Canonical band codes the extractor needs for ``target``."""
        ...

    def fit_scene(self, scene: xr.DataArray, target: str) -> None:
        """Derive scene-level state (e.g. one Otsu threshold from a decimated read).

        Called once per scene before any tile, so that all tiles agree. Extractors with
        no scene-level state do nothing.
        """
        ...

    def predict(self, batch: TileBatch) -> TileResult:
        """Per-pixel probabilities (and optional text) for a batch of tiles."""
        ...

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable facts that identify the extractor and its settings
        (name, version/weights hash, thresholds) for COG tags and STAC properties."""
        ...


def is_per_pixel(extractor: Extractor) -> bool:
    """Whether the extractor's value at a pixel depends on that pixel alone (its optional
    ``per_pixel`` attribute, False when absent).

    Such an extractor gives every tile the same value at a shared pixel, so the job plans
    its tiles without overlap and stitches without blending (see
    :mod:`pipeline.stitching`); anything that looks at a neighbourhood (a CNN, SPEX, a
    per-tile threshold) must not claim it."""
    return bool(getattr(extractor, "per_pixel", False))
