"""Where patches are cut: a pure function of the image size, the patch size and the split.

Training patches do not overlap (near-duplicate patches would weigh some pixels twice and
let a model memorise them); the inference tile grid of :mod:`pipeline.tiling` overlaps
for blending, which is a different need. Along each axis ``n = length // size`` patches
are placed side by side and the leftover is split evenly between both ends, so the
patches sit centred in the image (or block) and never depend on anything but sizes.
An image smaller than one patch yields one patch at the origin, padded with nodata by the
reader (NaN pixels, nodata mask), so every patch of a subset has the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.spie.catalog import SplitSpec
from pipeline.spie.splits import block_layout

__all__ = ["Patch", "axis_origins", "plan_patches"]


@dataclass(frozen=True)
class Patch:
    """One patch: top-left corner in the image, size, split and block (-1 if none)."""

    row: int
    col: int
    size: int
    split: str
    block: int = -1


def axis_origins(start: int, stop: int, size: int, *, pad_small: bool = False) -> list[int]:
    """Origins of non-overlapping ``size`` patches centred in ``[start, stop)``."""
    length = stop - start
    if length < size:
        return [start] if pad_small and length > 0 else []
    n = length // size
    first = start + (length - n * size) // 2
    return [first + k * size for k in range(n)]


def plan_patches(
    height: int,
    width: int,
    size: int,
    split: SplitSpec,
    item_split: str | None,
    *,
    what: str = "image",
) -> list[Patch]:
    """Patches of one image, row-major; blocks when ``item_split`` is ``None``."""
    if item_split is not None:
        return [
            Patch(r, c, size, item_split)
            for r in axis_origins(0, height, size, pad_small=True)
            for c in axis_origins(0, width, size, pad_small=True)
        ]
    patches = []
    for block in block_layout(height, width, size, split, what):
        r0, r1, c0, c1 = block.usable
        for r in axis_origins(r0, r1, size):
            for c in axis_origins(c0, c1, size):
                patches.append(Patch(r, c, size, block.split, block.index))
    return patches
