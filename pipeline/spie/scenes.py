"""Whole labelled images of a data set, in memory: what scene-level evaluation reads.

The SPIE builder cuts images into patches; leave-one-scene-out evaluation and the
pseudo-label benchmark need each image whole (scene-level statistics, the extraction
job's own tiling) with its per-target truth. The data sets here are small (the largest
image is ~45 MB as float32), so an image is read whole, through the same readers and
radiometry as the builder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.mask_codes import MASK_NODATA
from pipeline.spie.catalog import DatasetSpec, load_dataset
from pipeline.spie.readers import Item, discover, open_image, read_class_ids, target_mask

__all__ = ["LabelledImage", "labelled_images"]


@dataclass
class LabelledImage:
    """One image of a data set: reflectance (C, H, W) with NaN nodata, and its labels."""

    dataset: DatasetSpec
    item: Item
    pixels: np.ndarray
    bands: list[str]
    class_ids: np.ndarray | None  # None for pseudo-labelled sets

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.pixels).all(axis=0)

    def truth(self, target: str) -> np.ndarray:
        """uint8 (H, W) mask codes: target, other, or nodata (unlabelled, ignored, no data)."""
        if self.class_ids is None:
            raise ValueError(f"{self.dataset.name} has no labels (pseudo-labelled set)")
        mask = target_mask(self.class_ids, self.dataset, target)
        mask[~self.valid] = MASK_NODATA
        return mask

    def as_scene(self) -> xr.DataArray:
        """The image as the pipeline's scene array (dims band, y, x; no CRS needed)."""
        return xr.DataArray(
            self.pixels,
            dims=("band", "y", "x"),
            coords={"band": self.bands},
            attrs={"sensor": self.dataset.sensor_name},
        )


def labelled_images(
    dataset: str | Path | DatasetSpec, root: str | Path | None = None
) -> Iterator[LabelledImage]:
    """Every image of ``dataset`` (catalog name, path or spec), read whole, in order."""
    spec = dataset if isinstance(dataset, DatasetSpec) else load_dataset(dataset)
    folder = spec.root_or_default(root)
    for item in discover(spec, folder):
        image = open_image(spec, item)
        pixels = np.ascontiguousarray(image.whole())
        ids = None if spec.pseudo else read_class_ids(spec, item, image)
        yield LabelledImage(spec, item, pixels, list(image.bands), ids)
