"""Splits are deterministic, official where available, and blocks keep a buffer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.spie.catalog import load_dataset
from pipeline.spie.patches import axis_origins, plan_patches
from pipeline.spie.readers import discover
from pipeline.spie.splits import ItemSplitter, assign_counts, block_layout, hash_split


def _gap(a, b) -> int:
    """Pixels between two patches (Chebyshev): 0 means touching or overlapping."""
    dr = max(b.row - (a.row + a.size), a.row - (b.row + b.size), -1) + 1
    dc = max(b.col - (a.col + a.size), a.col - (b.col + b.size), -1) + 1
    return max(dr, dc)


@pytest.mark.parametrize(
    ("h", "w", "size", "buffer"),
    [(768, 1536, 128, 8), (443, 489, 128, 8), (101, 100, 32, 8), (1000, 700, 64, 3)],
)
def test_block_split_keeps_other_splits_a_buffer_away(
    h: int, w: int, size: int, buffer: int
) -> None:
    split = replace(load_dataset("s2-l1c-berlin").split, buffer_px=buffer)
    patches = plan_patches(h, w, size, split, None)
    assert patches == plan_patches(h, w, size, split, None)  # deterministic
    assert {p.split for p in patches} == {"train", "val", "test"}
    for a in patches:
        assert a.row >= 0 and a.row + a.size <= h and a.col >= 0 and a.col + a.size <= w
        for b in patches:
            if a is b:
                continue
            gap = _gap(a, b)
            assert gap >= 0  # patches never overlap
            if a.split != b.split:
                assert gap >= buffer, (a, b)


def test_block_split_depends_on_seed_only_through_the_order() -> None:
    split = load_dataset("s2-l1c-berlin").split
    a = block_layout(768, 1536, 128, split)
    b = block_layout(768, 1536, 128, replace(split, seed=1))
    assert [(x.r0, x.c0) for x in a] == [(x.r0, x.c0) for x in b]
    assert [x.split for x in a] != [x.split for x in b]
    counts = {s: sum(x.split == s for x in a) for s in ("train", "val", "test")}
    assert counts == assign_counts(len(a), split.fractions)


def test_too_small_scene_for_blocks_says_what_to_do() -> None:
    split = load_dataset("s2-l1c-slovenia").split
    with pytest.raises(Exception, match="use a smaller patch size"):
        plan_patches(101, 100, 128, split, None)


def test_hash_split_is_stable_and_near_the_fractions() -> None:
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    first = [hash_split(f"img{i}", fractions, 0) for i in range(2000)]
    assert first == [hash_split(f"img{i}", fractions, 0) for i in range(2000)]
    share = np.mean([s == "train" for s in first])
    assert 0.76 < share < 0.84
    assert hash_split("AOI_2_Vegas_img1", fractions, 0) == "test"  # pinned: never changes


def test_official_splits_come_from_folders_and_lists(paper_roots: dict) -> None:
    spec = load_dataset("chesapeake")
    splitter = ItemSplitter(spec, paper_roots["chesapeake"])
    got = {Path(i.id).parent.name: splitter(i) for i in discover(spec, paper_roots["chesapeake"])}
    assert got == {f"de_1m_2013_extended-debuffered-{s}_tiles": s for s in ("train", "val", "test")}
    spec = load_dataset("segmunich")
    items = discover(spec, paper_roots["segmunich"])
    splitter = ItemSplitter(spec, paper_roots["segmunich"])
    assert [splitter(i) for i in items] == ["train"] * 4 + ["val"] * 2


def test_axis_origins_centre_patches_without_overlap() -> None:
    assert axis_origins(0, 300, 128) == [22, 150]
    assert axis_origins(10, 100, 128) == []
    assert axis_origins(0, 100, 128, pad_small=True) == [0]
