"""Stitching tile probabilities into whole-scene outputs, with resume.

Blending window
    Each tile gets a weight that is exactly 1.0 in its interior and along the scene's
    outer edges, and ramps with a raised cosine (``sin²``) only across the overlaps it
    really shares with a neighbour. Sampled at pixel centres, ``(i + 0.5) / n``, the ramp
    is strictly inside (0, 1), so every pixel keeps a positive total weight, and the two
    ramps of neighbouring tiles are complementary (``sin² + cos² = 1``). A raised cosine
    rather than a linear ramp because its slope is zero where the ramp meets the flat
    part, so disagreeing neighbours blend without a visible kink at the overlap's border.

Store layout and concurrency (why per-tile slots)
    The Zarr store does *not* accumulate ``probability * weight`` into scene-sized
    arrays while tiles arrive: two workers adding into the same overlap would race, and
    float sums in arrival order would make the bytes depend on scheduling. Instead every
    tile owns one slot ``probability[index]`` / ``valid[index]`` of shape
    ``(tile_h, tile_w)``, stored as exactly one chunk. Workers (threads, processes or Dask
    workers on a shared filesystem) therefore write disjoint chunk files and never touch
    each other's data. Only the single :meth:`TileStore.finalise` pass blends, window by
    window, summing the tiles that cover each window *in tile-index order*; the result is
    independent of write order, worker count and resume history, byte for byte.

Resume
    After a tile's chunks are written and fsynced, a marker ``finished/<index>.json``
    holding a checksum of the tile data is written atomically (temp + rename). A tile
    without a marker is simply recomputed. The store records the job ``fingerprint``;
    reopening with a different one is an error (:class:`StoreMismatchError`) unless
    ``force=True``; finished work is never wiped silently.

Precision
    Tiles are stored as float32 (what extractors return); blending accumulates in
    float64. Where all tiles agree on a float32 value ``p``, the blend equals ``p`` to
    ~1e-16 relative error, far below the float32 spacing around any threshold, so the
    stitched mask equals the untiled mask exactly.

Memory
    The store's arrays are ``(n_tiles, tile_h, tile_w)`` with one tile per chunk, and
    finalise holds one output window plus one tile at a time: peak memory depends on
    the tile and window sizes, never on the scene size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.errors import OutputError
from pipeline.outputs.atomic import atomic_path, atomic_write_text, ensure_writable_dir
from pipeline.outputs.atomic import fsync_dir as _fsync_dir
from pipeline.outputs.cog import GDAL_ENV, MASK_NODATA, BandStyle, to_cog
from pipeline.tiling import Tile, TileGrid

STORE_FORMAT = 1
PROB_ARRAY = "probability"
VALID_ARRAY = "valid"
DONE_DIR = "finished"
INTERMEDIATE_BLOCK = 256


class StoreMismatchError(OutputError):
    """An existing tile store belongs to a different job (fingerprint or grid)."""


class IncompleteStoreError(OutputError):
    """Finalise was asked for while tiles are still missing or damaged."""


# --------------------------------------------------------------------------- weights


def raised_cosine_ramp(n: int) -> np.ndarray:
    """Increasing weights over ``n`` overlap pixels, strictly inside (0, 1)."""
    i = np.arange(n, dtype=np.float64)
    return np.sin(0.5 * np.pi * (i + 0.5) / n) ** 2


def axis_weight(length: int, before: int, after: int) -> np.ndarray:
    """1-D weight along one tile axis: ramps over the overlaps, 1.0 elsewhere."""
    w = np.ones(length, dtype=np.float64)
    if before:
        w[:before] *= raised_cosine_ramp(before)
    if after:
        w[length - after :] *= raised_cosine_ramp(after)[::-1]
    return w


def tile_weight(tile: Tile) -> np.ndarray:
    """float64 (height, width) blending weight of ``tile`` (see module docstring)."""
    wy = axis_weight(tile.height, tile.overlap_top, tile.overlap_bottom)
    wx = axis_weight(tile.width, tile.overlap_left, tile.overlap_right)
    return np.outer(wy, wx)


# ----------------------------------------------------------------------------- store


def _tile_checksum(probability: np.ndarray, valid: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(probability, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(valid, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _transform_list(transform: Affine | Sequence[float]) -> list[float]:
    t = transform if isinstance(transform, Affine) else Affine(*list(transform)[:6])
    return [float(v) for v in (t.a, t.b, t.c, t.d, t.e, t.f)]


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` (the chunk files of one tile).

    Another writer of the same tile (a retried task whose first try still runs) may
    rename its ``*.partial`` chunk into place while we walk: a file that vanished between
    listing and opening is not ours to sync, so it is skipped rather than fatal.
    """
    if not folder.exists():
        return
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".partial"):
                continue
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class TileStore:
    """On-disk per-tile probabilities plus a record of finished tiles.

    Create (or resume) with :meth:`create_or_open`; workers that only write tiles may use
    :meth:`open`. See the module docstring for the design.
    """

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        attrs = dict(group.attrs)
        self.fingerprint: str = attrs["fingerprint"]
        self.grid: TileGrid = TileGrid.from_description(attrs["grid"])
        self.crs: CRS = CRS.from_wkt(attrs["crs"])
        self.transform: Affine = Affine(*attrs["transform"])
        self._prob: zarr.Array = group[PROB_ARRAY]  # type: ignore[assignment]
        self._valid: zarr.Array = group[VALID_ARRAY]  # type: ignore[assignment]
        self._weights: dict[tuple[int, ...], np.ndarray] = {}

    # -- opening -------------------------------------------------------------------

    @classmethod
    def create_or_open(
        cls,
        path: str | os.PathLike[str],
        grid: TileGrid,
        crs: CRS | str,
        transform: Affine | Sequence[float],
        fingerprint: str,
        force: bool = False,
    ) -> TileStore:
        """Resume the store at ``path`` if it belongs to this job, else create it.

        A store with another fingerprint, grid, CRS or transform raises
        :class:`StoreMismatchError` (its finished work stays intact) unless ``force``,
        which discards it and starts afresh.
        """
        path = Path(path)
        crs_wkt = CRS.from_user_input(crs).to_wkt()
        attrs = {
            "spex_tile_store": STORE_FORMAT,
            "fingerprint": fingerprint,
            "grid": grid.describe(),
            "crs": crs_wkt,
            "transform": _transform_list(transform),
        }
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            try:
                existing = cls._read_attrs(path)
                problem = cls._mismatch(existing, attrs)
            except StoreMismatchError as exc:
                existing, problem = {}, str(exc)
            if problem is None:
                return cls(path, zarr.open_group(str(path), mode="r+"))
            if not force:
                n_done = len(list((path / DONE_DIR).glob("*.json"))) if path.is_dir() else 0
                raise StoreMismatchError(
                    f"tile store {path} belongs to another job ({problem}); it holds "
                    f"{n_done} finished tile(s), left untouched. Choose another --out, "
                    "or pass --force to discard it."
                )
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return cls._create(path, grid, attrs)

    @classmethod
    def open(cls, path: str | os.PathLike[str], fingerprint: str | None = None) -> TileStore:
        """Open an existing store (e.g. on a worker); check ``fingerprint`` if given."""
        path = Path(path)
        attrs = cls._read_attrs(path)
        if fingerprint is not None and attrs.get("fingerprint") != fingerprint:
            raise StoreMismatchError(
                f"tile store {path} has fingerprint {attrs.get('fingerprint')!r}, "
                f"expected {fingerprint!r}"
            )
        return cls(path, zarr.open_group(str(path), mode="r+"))

    @staticmethod
    def _read_attrs(path: Path) -> dict[str, Any]:
        try:
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
        except Exception as exc:  # zarr raises several types for "not a group"
            raise StoreMismatchError(f"{path} is not a SPEX tile store: {exc}") from exc
        if attrs.get("spex_tile_store") != STORE_FORMAT:
            raise StoreMismatchError(f"{path} is not a SPEX tile store (format marker absent)")
        return attrs

    @staticmethod
    def _mismatch(existing: dict[str, Any], wanted: dict[str, Any]) -> str | None:
        for key in ("fingerprint", "grid", "crs", "transform"):
            if existing.get(key) != wanted[key]:
                if key == "fingerprint":
                    return f"fingerprint {existing.get(key)!r} != {wanted[key]!r}"
                return f"same fingerprint but different {key}"
        return None

    @classmethod
    def _create(cls, path: Path, grid: TileGrid, attrs: dict[str, Any]) -> TileStore:
        """Build the store under a temp name, then rename: no half-made store is visible."""
        ensure_writable_dir(path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.spex-tmp-", dir=path.parent))
        try:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            shape = (len(grid), grid.tile_height, grid.tile_width)
            chunks = (1, grid.tile_height, grid.tile_width)
            group.create_array(
                PROB_ARRAY, shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan
            )
            group.create_array(
                VALID_ARRAY, shape=shape, chunks=chunks, dtype="bool", fill_value=False
            )
            group.attrs.update(attrs)
            (tmp / DONE_DIR).mkdir()
            with contextlib.suppress(FileNotFoundError):
                path.rmdir()  # an empty folder the caller made beforehand
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if path.exists():  # another process created it first: join it
                return cls.open(path, fingerprint=attrs["fingerprint"])
            raise
        _fsync_dir(path.parent)
        return cls(path, zarr.open_group(str(path), mode="r+"))

    # -- tiles ---------------------------------------------------------------------

    def _marker(self, index: int) -> Path:
        return self.path / DONE_DIR / f"{index:06d}.json"

    def finished(self) -> set[int]:
        """Indices of tiles whose data is durably in the store."""
        done = set()
        for p in (self.path / DONE_DIR).glob("[0-9]*.json"):
            with contextlib.suppress(ValueError):
                idx = int(p.stem)
                if 0 <= idx < len(self.grid):
                    done.add(idx)
        return done

    def missing(self) -> list[Tile]:
        """Tiles still to compute, in index order."""
        done = self.finished()
        return [t for t in self.grid if t.index not in done]

    def is_complete(self) -> bool:
        """True when every tile of the grid is finished."""
        return len(self.finished()) == len(self.grid)

    def _check_tile(self, tile: Tile) -> None:
        if not 0 <= tile.index < len(self.grid) or self.grid[tile.index] != tile:
            raise ValueError(f"tile {tile.key} is not part of the grid of store {self.path}")

    def write_tile(self, tile: Tile, probability: np.ndarray, valid: np.ndarray) -> None:
        """Store one tile's probability (float, (h, w)) and valid mask (bool, (h, w)).

        The tile is marked finished only after its chunks are written and fsynced.
        Rewriting a finished tile is allowed (same slot, same bytes for same data).
        """
        self._check_tile(tile)
        shape = (tile.height, tile.width)
        prob = np.asarray(probability, dtype=np.float32)
        ok = np.asarray(valid, dtype=bool)
        if prob.shape != shape or ok.shape != shape:
            raise ValueError(
                f"tile {tile.key}: expected probability and valid of shape {shape}, "
                f"got {prob.shape} and {ok.shape}"
            )
        self._marker(tile.index).unlink(missing_ok=True)
        self._prob[tile.index] = prob
        self._valid[tile.index] = ok
        for name in (PROB_ARRAY, VALID_ARRAY):
            _fsync_tree(self.path / name / "c" / str(tile.index))
        record = {"tile": tile.key, "checksum": _tile_checksum(prob, ok)}
        atomic_write_text(self._marker(tile.index), json.dumps(record, sort_keys=True))

    def write_batch(
        self, tiles: Sequence[Tile], probability: np.ndarray, valid: np.ndarray
    ) -> None:
        """Store a batch: ``probability`` (B, h, w) (``TileResult.probability``), ``valid``
        (B, h, w) (``TileBatch.valid``), in the order of ``tiles``."""
        if len(probability) != len(tiles) or len(valid) != len(tiles):
            raise ValueError(
                f"batch of {len(tiles)} tiles but {len(probability)} probabilities and "
                f"{len(valid)} valid masks"
            )
        for k, tile in enumerate(tiles):
            self.write_tile(tile, probability[k], valid[k])

    def read_tile(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """``(probability float32, valid bool)`` of one tile as stored."""
        self._check_tile(tile)
        return np.asarray(self._prob[tile.index]), np.asarray(self._valid[tile.index])

    def verify(self) -> list[int]:
        """Re-read finished tiles and drop the marker of any whose data does not match
        its checksum (e.g. a crash between data and marker on a lax filesystem).
        Returns the dropped indices, which then count as missing."""
        bad = []
        for idx in sorted(self.finished()):
            try:
                record = json.loads(self._marker(idx).read_text())
            except (OSError, ValueError):
                record = {}
            prob, ok = self.read_tile(self.grid[idx])
            if record.get("checksum") != _tile_checksum(prob, ok):
                self._marker(idx).unlink(missing_ok=True)
                bad.append(idx)
        return bad

    @property
    def chunk_shapes(self) -> dict[str, tuple[int, ...]]:
        """Chunk shape of every array in the store (one tile each)."""
        return {PROB_ARRAY: tuple(self._prob.chunks), VALID_ARRAY: tuple(self._valid.chunks)}

    # -- blending ------------------------------------------------------------------

    def _weight(self, tile: Tile) -> np.ndarray:
        key = (
            tile.height,
            tile.width,
            tile.overlap_top,
            tile.overlap_bottom,
            tile.overlap_left,
            tile.overlap_right,
        )
        if key not in self._weights:
            self._weights[key] = tile_weight(tile)
        return self._weights[key]

    def blend_window(self, rows: slice, cols: slice) -> np.ndarray:
        """Blended float64 probability of a scene window; NaN where no tile has data.

        Tiles are summed in index order, so the result never depends on write order.
        """
        h, w = rows.stop - rows.start, cols.stop - cols.start
        num = np.zeros((h, w), dtype=np.float64)
        den = np.zeros((h, w), dtype=np.float64)
        for t in self.grid.intersecting(rows, cols):
            r0, r1 = max(rows.start, t.row), min(rows.stop, t.row + t.height)
            c0, c1 = max(cols.start, t.col), min(cols.stop, t.col + t.width)
            tr, tc = slice(r0 - t.row, r1 - t.row), slice(c0 - t.col, c1 - t.col)
            out = (slice(r0 - rows.start, r1 - rows.start), slice(c0 - cols.start, c1 - cols.start))
            p = np.asarray(self._prob[t.index, tr, tc], dtype=np.float64)
            ok = np.asarray(self._valid[t.index, tr, tc]) & np.isfinite(p)
            wt = self._weight(t)[tr, tc]
            num[out] += np.where(ok, wt * np.where(ok, p, 0.0), 0.0)
            den[out] += np.where(ok, wt, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)

    def _windows(self, size: int) -> list[tuple[slice, slice]]:
        return [
            (slice(r, min(r + size, self.grid.height)), slice(c, min(c + size, self.grid.width)))
            for r in range(0, self.grid.height, size)
            for c in range(0, self.grid.width, size)
        ]

    # -- finalise ------------------------------------------------------------------

    def finalise(
        self,
        mask_path: str | os.PathLike[str],
        prob_path: str | os.PathLike[str] | None = None,
        threshold: float = 0.5,
        *,
        tags: dict[str, str] | None = None,
        window: int = 1024,
        blocksize: int = 512,
        overview_count: int | None = None,
        verify: bool = True,
        styles: dict[str, BandStyle] | None = None,
    ) -> tuple[Path, Path | None]:
        """Blend all tiles into a COG mask (uint8: 1 where probability >= ``threshold``,
        0 elsewhere, 255 nodata) and optionally a float32 probability COG (NaN nodata).

        Streams window by window into tiled GeoTIFFs inside the store, then converts them
        to COGs that appear atomically at their final paths. ``tags`` become GeoTIFF
        metadata tags; ``styles`` ('mask', 'probability') describe the bands for desktop
        GIS. Raises :class:`IncompleteStoreError` while tiles are missing and
        :class:`OutputError` (before writing anything) if an output folder is not writable.
        """
        if window < 1 or window % 16:
            raise ValueError(f"window must be a positive multiple of 16, got {window}")
        mask_path = Path(mask_path)
        prob_out = Path(prob_path) if prob_path is not None else None
        ensure_writable_dir(mask_path.parent)
        if prob_out is not None:
            ensure_writable_dir(prob_out.parent)
        dropped = self.verify() if verify else []
        missing = self.missing()
        if missing:
            shown = ", ".join(t.key for t in missing[:5])
            raise IncompleteStoreError(
                f"tile store {self.path}: {len(missing)} of {len(self.grid)} tiles not "
                f"finished (e.g. {shown})"
                + (f"; {len(dropped)} damaged tile(s) were dropped" if dropped else "")
                + ". Run the job again to compute them."
            )
        work = Path(tempfile.mkdtemp(prefix="finalise-", dir=self.path))
        try:
            mask_tif, prob_tif = work / "mask.tif", work / "probability.tif"
            self._write_intermediate(mask_tif, prob_tif if prob_out else None, threshold, window)
            with contextlib.ExitStack() as stack:
                mask_tmp = stack.enter_context(atomic_path(mask_path))
                prob_tmp = stack.enter_context(atomic_path(prob_out)) if prob_out else None
                cog_args: dict[str, Any] = {
                    "tags": tags,
                    "blocksize": blocksize,
                    "overview_count": overview_count,
                }
                styles = styles or {}
                to_cog(
                    mask_tif,
                    mask_tmp,
                    kind="mask",
                    nodata=MASK_NODATA,
                    style=styles.get("mask"),
                    **cog_args,
                )
                if prob_tmp is not None:
                    to_cog(
                        prob_tif,
                        prob_tmp,
                        kind="probability",
                        nodata=float("nan"),
                        style=styles.get("probability"),
                        **cog_args,
                    )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return mask_path, prob_out

    def _write_intermediate(
        self, mask_tif: Path, prob_tif: Path | None, threshold: float, window: int
    ) -> None:
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": self.grid.height,
            "width": self.grid.width,
            "count": 1,
            "crs": self.crs,
            "transform": self.transform,
            "tiled": True,
            "blockxsize": INTERMEDIATE_BLOCK,
            "blockysize": INTERMEDIATE_BLOCK,
            "compress": "deflate",
            "zlevel": 1,
            "bigtiff": "IF_SAFER",
        }
        with contextlib.ExitStack() as stack:
            stack.enter_context(rasterio.Env(**GDAL_ENV))
            mask_ds = stack.enter_context(
                rasterio.open(mask_tif, "w", dtype="uint8", nodata=MASK_NODATA, **profile)
            )
            prob_ds = None
            if prob_tif is not None:
                prob_ds = stack.enter_context(
                    rasterio.open(prob_tif, "w", dtype="float32", nodata=float("nan"), **profile)
                )
            for rows, cols in self._windows(window):
                p = self.blend_window(rows, cols)
                nodata = np.isnan(p)
                with np.errstate(invalid="ignore"):
                    mask = (p >= threshold).astype(np.uint8)
                mask[nodata] = MASK_NODATA
                win = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
                mask_ds.write(mask, 1, window=win)
                if prob_ds is not None:
                    prob_ds.write(p.astype(np.float32), 1, window=win)
