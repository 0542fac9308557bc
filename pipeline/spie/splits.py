"""Deterministic train/val/test splits: official ones where a data set has them.

* ``pattern``: the split is part of the path (Chesapeake's ``...-train_tiles`` folders).
* ``lists``: official list files name the images of each split (SegMunich).
* ``hash``: per image, a seeded SHA-256 of the image id against the fractions; stable
  across machines and Python versions (no ``hash()``, no global RNG).
* ``blocks``: for single-scene sets, a scene is cut into a regular grid of blocks and
  whole blocks go to one split, in a seeded order. Patches are later cut *inside* a block
  and kept ``buffer_px`` away from every block of another split (edge and corner
  neighbours), so no test pixel touches (or comes within the buffer of) a training patch.
  The blocks depend only on the image size and the settings, so every date of a
  multi-date set on one grid gets the same blocks and no date leaks into another split.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.spie.catalog import SPLITS, DatasetSpec, SplitSpec, resolve_inside
from pipeline.spie.errors import DatasetError
from pipeline.spie.readers import Item

__all__ = ["Block", "ItemSplitter", "assign_counts", "block_layout", "hash_split"]


@dataclass(frozen=True)
class Block:
    """A block of the scene (rows r0:r1, cols c0:c1) and the part patches may use."""

    index: int
    split: str
    r0: int
    r1: int
    c0: int
    c1: int
    usable: tuple[int, int, int, int]  # (r0, r1, c0, c1) after the buffer


def hash_split(key: str, fractions: dict[str, float], seed: int) -> str:
    """Split of ``key``: a uniform number from SHA-256(seed, key) against the fractions."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    acc = 0.0
    chosen = None
    for split in SPLITS:
        if fractions.get(split, 0.0) <= 0:
            continue
        acc += fractions[split]
        chosen = split
        if u < acc:
            return split
    assert chosen is not None
    return chosen


def assign_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Blocks per split: rounded shares, at least one for every split with a share > 0."""
    wanted = [s for s in SPLITS if fractions.get(s, 0.0) > 0]
    if n < len(wanted):
        raise DatasetError(f"{n} block(s) cannot hold the {len(wanted)} splits {wanted}")
    counts = {s: max(1, round(fractions[s] * n)) for s in wanted}
    main = "train" if "train" in counts else wanted[0]
    counts[main] += n - sum(counts.values())
    while counts[main] < 1:  # rounding gave the small splits too much: take it back
        donor = max((s for s in counts if s != main), key=lambda s: counts[s])
        counts[donor] -= 1
        counts[main] += 1
    return counts


def block_layout(
    height: int, width: int, patch: int, split: SplitSpec, what: str = "image"
) -> list[Block]:
    """The blocks of a ``height`` x ``width`` image and their splits (see module doc)."""
    buffer = split.buffer_px
    block = split.block_px or patch + 2 * buffer
    if block < patch + buffer:
        raise DatasetError(f"split.block_px {block} must be >= patch {patch} + buffer {buffer}")
    n_r, n_c = height // block, width // block
    if n_r * n_c < sum(1 for v in split.fractions.values() if v > 0):
        raise DatasetError(
            f"{what} is {height}x{width} px: blocks of {block} px give {n_r}x{n_c} block(s), "
            f"too few for a {'/'.join(k for k, v in split.fractions.items() if v > 0)} split; "
            "use a smaller patch size (--patch-size) or split.block_px"
        )
    rows = [round(i * height / n_r) for i in range(n_r + 1)]
    cols = [round(j * width / n_c) for j in range(n_c + 1)]
    n = n_r * n_c
    counts = assign_counts(n, split.fractions)
    order = np.random.default_rng(split.seed).permutation(n)
    labels = [""] * n
    k = 0
    for name in SPLITS:
        for _ in range(counts.get(name, 0)):
            labels[int(order[k])] = name
            k += 1
    grid = np.array(labels, dtype=object).reshape(n_r, n_c)
    half = math.ceil(buffer / 2)

    def differs(i0: int, i1: int, j0: int, j1: int, mine: str) -> bool:
        part = grid[max(i0, 0) : max(i1, 0), max(j0, 0) : max(j1, 0)]
        return any(v != mine for v in part.ravel())

    blocks = []
    for i in range(n_r):
        for j in range(n_c):
            mine = grid[i, j]
            top = half if differs(i - 1, i, j - 1, j + 2, mine) else 0
            bottom = half if differs(i + 1, i + 2, j - 1, j + 2, mine) else 0
            left = half if differs(i - 1, i + 2, j - 1, j, mine) else 0
            right = half if differs(i - 1, i + 2, j + 1, j + 2, mine) else 0
            blocks.append(
                Block(
                    index=i * n_c + j,
                    split=str(mine),
                    r0=rows[i],
                    r1=rows[i + 1],
                    c0=cols[j],
                    c1=cols[j + 1],
                    usable=(
                        rows[i] + top,
                        rows[i + 1] - bottom,
                        cols[j] + left,
                        cols[j + 1] - right,
                    ),
                )
            )
    return blocks


def _read_list(root: Path, rel: str, spec: DatasetSpec) -> set[str]:
    path = resolve_inside(root, rel)
    if not path.is_file():
        raise DatasetError(f"data set {spec.name}: split list {rel} is missing (looked for {path})")
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(Path(line).name)
            names.add(Path(line).stem)
    return names


class ItemSplitter:
    """The split of each image for the per-image methods (``None`` for ``blocks``)."""

    def __init__(self, spec: DatasetSpec, root: Path) -> None:
        self.spec = spec
        self.lists = (
            {s: _read_list(root.resolve(), rel, spec) for s, rel in spec.split.lists.items()}
            if spec.split.method == "lists"
            else {}
        )

    def __call__(self, item: Item) -> str | None:
        """Split of ``item``; ``None`` when not listed (lists) or decided per block."""
        split = self.spec.split
        if split.method == "blocks":
            return None
        if split.method == "hash":
            return hash_split(item.id, split.fractions, split.seed)
        if split.method == "pattern":
            value = item.groups.get(str(split.group))
            if value is None:
                raise DatasetError(f"image {item.id}: pattern group {split.group!r} is empty")
            return split.values.get(value, value)
        for name in SPLITS:
            names = self.lists.get(name, set())
            if item.image.name in names or item.image.stem in names:
                return name
        return None
