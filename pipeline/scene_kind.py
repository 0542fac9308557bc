"""Which kind of scene a path is, decided in one place.

A Zarr store is a folder, like a folder of band files, so the two are told apart by
the store's own marker files: ``zarr.json`` (Zarr v3), ``.zgroup``/``.zarray`` and
``.zattrs``/``.zmetadata`` (v2, consolidated or not). The scene opener and the region
catalogs' scene discovery both ask here, so a store one of them accepts the other does.
"""

from __future__ import annotations

from pathlib import Path

#: Files a Zarr store (v2 or v3) has at its root.
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")


def is_zarr_store(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr store (a folder holding a Zarr marker file)."""
    p = Path(path)
    return p.is_dir() and any((p / marker).exists() for marker in ZARR_MARKERS)
