"""The spectral-index extractor: the APG's index + Otsu threshold as an Extractor.

This is the baseline every learned model must beat, and the extractor that needs no
weights. Two threshold modes:

- ``scene`` (default): one Otsu threshold from a decimated read of the whole scene, so
  that every tile agrees and the stitched mask has no seams;
- ``tile``: Otsu per tile, as the paper's APG does on its 512 px chips (tiles can then
  disagree at their borders; the stitcher's blending softens that).

It has no notion of probability, so it returns 1.0 on the target side and 0.0 elsewhere.
In scene mode it is a per-pixel extractor (index and threshold at each pixel alone), so
its tiles need no overlap and no blending (:func:`pipeline.extractor.is_per_pixel`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import xarray as xr

from pipeline.apg import binary_mask, otsu_threshold
from pipeline.extractor import TileBatch, TileResult
from pipeline.indices import compute_index, index_from_stack, load_index
from pipeline.scene import decimated_sample
from pipeline.targets import index_for, load_target

ThresholdMode = Literal["scene", "tile"]
# A decimated read of at most this many pixels (scene.DECIMATED_PIXELS, ~1 M) is plenty
# for a stable 256-bin Otsu threshold and keeps fit_scene's memory independent of the
# scene size.


class IndexExtractor:
    """Index + Otsu extractor; see the module docstring."""

    name = "index-otsu"
    version = "1"

    def __init__(self, threshold_mode: ThresholdMode = "scene") -> None:
        if threshold_mode not in ("scene", "tile"):
            raise ValueError(f"threshold_mode must be 'scene' or 'tile', not {threshold_mode!r}")
        self.threshold_mode: ThresholdMode = threshold_mode
        self.threshold: float | None = None
        self.index: str | None = None
        self.target: str | None = None
        self.sample_step: int | None = None

    @property
    def per_pixel(self) -> bool:
        """Scene mode only: a per-tile Otsu threshold makes a pixel depend on its tile."""
        return self.threshold_mode == "scene"

    def required_bands(self, target: str) -> tuple[str, ...]:
        return load_index(load_target(target).index).bands

    def fit_scene(self, scene: xr.DataArray, target: str) -> None:
        """Pick the index for this scene's bands; in scene mode, its Otsu threshold."""
        bands = [str(b) for b in scene["band"].values]
        self.index = index_for(target, bands, sensor=scene.attrs.get("sensor"))
        self.target = load_target(target).name
        if self.threshold_mode != "scene":
            return
        sample, step = decimated_sample(scene)
        self.sample_step = step
        self.threshold = otsu_threshold(compute_index(self.index, sample).values)

    def predict(self, batch: TileBatch) -> TileResult:
        if self.index is None or self.target != load_target(batch.target).name:
            raise RuntimeError("IndexExtractor.fit_scene must run for this target before predict")
        side = load_target(batch.target).side
        out = np.zeros(batch.valid.shape, dtype=np.float32)
        for i in range(batch.pixels.shape[0]):
            index = index_from_stack(self.index, batch.pixels[i], batch.bands)
            ok = batch.valid[i] & np.isfinite(index)
            threshold = (
                self.threshold if self.threshold_mode == "scene" else otsu_threshold(index[ok])
            )
            out[i] = binary_mask(index, threshold, side, ok) == 1
        return TileResult(probability=out, texts=(None,) * batch.pixels.shape[0])

    def provenance(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "extractor_version": self.version,
            "index": self.index,
            "threshold_mode": self.threshold_mode,
            "threshold": self.threshold,
            "scene_sample_step": self.sample_step,
        }
