"""Stitching tile probabilities into whole-scene outputs, with resume.

Blending window
    Each tile gets a weight that is exactly 1.0 in its interior and along the scene's
    outer edges, and ramps with a raised cosine (``sin²``) only across the overlaps it
    really shares with a neighbour. Sampled at pixel centres, ``(i + 0.5) / n``, the ramp
    is strictly inside (0, 1), so every pixel keeps a positive total weight, and the two
    ramps of neighbouring tiles are complementary (``sin² + cos² = 1``). A raised cosine
    rather than a linear ramp because its slope is zero where the ramp meets the flat
    part, so disagreeing neighbours blend without a visible kink at the overlap's border.

Per-pixel extractors need no blending
    An extractor whose value at a pixel depends on that pixel alone (the spectral index
    with one scene threshold) gives every tile the same value there, so blending would
    only average equal numbers. The job plans such extractors on a grid without overlap
    and :meth:`TileStore.finalise` (``per_pixel=True``) writes each pixel once, from the
    first tile that covers it. The only overlaps left are those of the last row and
    column of tiles, which are shifted inward rather than padded (see
    :mod:`pipeline.tiling`). The mask is the same as the blended one (a blend of equal
    values returns the value), and each tile is read once.

Store layout and concurrency (why one file per tile)
    The store does *not* accumulate ``probability * weight`` into scene-sized arrays
    while tiles arrive: two workers adding into the same overlap would race, and float
    sums in arrival order would make the bytes depend on scheduling. Instead every
    finished tile is one file ``tiles/<index>.tile`` (probability, valid mask and a
    checksum; :mod:`pipeline.tile_record`), written under a temporary name and renamed.
    Workers (threads, processes or Dask workers on a shared filesystem) therefore write
    disjoint files and never touch each other's data. Only the single
    :meth:`TileStore.finalise` pass blends, window by window, summing the tiles that
    cover each window *in tile-index order*; the result is independent of write order,
    worker count and resume history, byte for byte.

Resume
    A tile is finished exactly when its file exists; a tile without one is recomputed.
    Files are not fsynced one by one (a process that is killed loses nothing the kernel
    already holds); a file damaged by a power cut fails its checksum when finalise reads
    it, is dropped, and the next run computes that tile again. The store records the job
    ``fingerprint``; reopening with a different one is an error
    (:class:`StoreMismatchError`) unless ``force=True``; finished work is never wiped
    silently.

Precision
    Tiles are stored as float32 (what extractors return); blending accumulates in
    float64. Where all tiles agree on a float32 value ``p``, the blend equals ``p`` to
    ~1e-16 relative error, far below the float32 spacing around any threshold, so the
    stitched mask equals the untiled mask exactly.

Memory
    Each tile is its own file, and finalise holds one output window plus the tiles that
    cover it (tiles shared with the next window are kept, the rest dropped): peak memory
    depends on the tile and window sizes, never on the scene size.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.errors import OutputError
from pipeline.mask_codes import MASK_NODATA
from pipeline.outputs.atomic import (
    TEMP_MARK,
    atomic_path,
    ensure_writable_dir,
    temp_path_for,
)
from pipeline.outputs.atomic import fsync_dir as _fsync_dir
from pipeline.outputs.cog import COG_BLOCKSIZE, GDAL_ENV, BandStyle, to_cog
from pipeline.tile_record import DamagedTileError, decode_tile, encode_tile
from pipeline.tiling import Tile, TileGrid

STORE_FORMAT = 2
ATTRS_FILE = "store.json"
TILES_DIR = "tiles"
INTERMEDIATE_BLOCK = 256
_TILE_NAME = re.compile(r"(\d+)\.tile")

TileData = tuple[np.ndarray, np.ndarray]


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


def _transform_list(transform: Affine | Sequence[float]) -> list[float]:
    t = transform if isinstance(transform, Affine) else Affine(*list(transform)[:6])
    return [float(v) for v in (t.a, t.b, t.c, t.d, t.e, t.f)]


def owned_span(offsets: Sequence[int], k: int, size: int, length: int) -> tuple[int, int]:
    """Pixels [start, stop) along one axis that tile ``k`` writes when each pixel is taken
    from the first tile covering it (offsets in grid order, tiles ``size`` long)."""
    start = offsets[k] if k == 0 else max(offsets[k], offsets[k - 1] + size)
    return start, min(offsets[k] + size, length)


class TileStore:
    """On-disk per-tile probabilities, one file per finished tile.

    Create (or resume) with :meth:`create_or_open`; workers that only write tiles may use
    :meth:`open`. See the module docstring for the design.
    """

    def __init__(self, path: Path, attrs: dict[str, Any]) -> None:
        self.path = path
        self.fingerprint: str = attrs["fingerprint"]
        self.grid: TileGrid = TileGrid.from_description(attrs["grid"])
        self.crs: CRS = CRS.from_wkt(attrs["crs"])
        self.transform: Affine = Affine(*attrs["transform"])
        self._tiles = path / TILES_DIR
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
        attrs = {
            "spex_tile_store": STORE_FORMAT,
            "fingerprint": fingerprint,
            "grid": grid.describe(),
            "crs": CRS.from_user_input(crs).to_wkt(),
            "transform": _transform_list(transform),
        }
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            try:
                existing = cls._read_attrs(path)
                problem = cls._mismatch(existing, attrs)
            except StoreMismatchError as exc:
                existing, problem = {}, str(exc)
            if problem is None:
                return cls(path, existing)
            if not force:
                n_done = len(cls._finished_in(path / TILES_DIR)) if path.is_dir() else 0
                raise StoreMismatchError(
                    f"tile store {path} belongs to another job ({problem}); it holds "
                    f"{n_done} finished tile(s), left untouched. Choose another --out, "
                    "or pass --force to discard it."
                )
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return cls._create(path, attrs)

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
        return cls(path, attrs)

    @staticmethod
    def _read_attrs(path: Path) -> dict[str, Any]:
        try:
            attrs = json.loads((path / ATTRS_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise StoreMismatchError(f"{path} is not a SPEX tile store: {exc}") from exc
        if not isinstance(attrs, dict) or attrs.get("spex_tile_store") != STORE_FORMAT:
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
    def _create(cls, path: Path, attrs: dict[str, Any]) -> TileStore:
        """Build the store under a temp name, then rename: no half-made store is visible."""
        ensure_writable_dir(path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent))
        try:
            (tmp / TILES_DIR).mkdir()
            (tmp / ATTRS_FILE).write_text(json.dumps(attrs, sort_keys=True))
            with contextlib.suppress(FileNotFoundError):
                path.rmdir()  # an empty folder the caller made beforehand
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if path.exists():  # another process created it first: join it
                return cls.open(path, fingerprint=attrs["fingerprint"])
            raise
        _fsync_dir(path.parent)
        return cls(path, attrs)

    @staticmethod
    def leftover_temps(path: str | os.PathLike[str]) -> list[Path]:
        """Temporary tile files that a killed writer left in the store at ``path`` (remove
        them only while no batch of the job runs, e.g. under the job's lock)."""
        return sorted((Path(path) / TILES_DIR).glob(f".*{TEMP_MARK}*"))

    # -- tiles ---------------------------------------------------------------------

    def _tile_path(self, index: int) -> Path:
        return self._tiles / f"{index:06d}.tile"

    @staticmethod
    def _finished_in(folder: Path) -> set[int]:
        done = set()
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(folder):
                m = _TILE_NAME.fullmatch(name)
                if m:
                    done.add(int(m.group(1)))
        return done

    def finished(self) -> set[int]:
        """Indices of tiles whose file is in the store."""
        return {i for i in self._finished_in(self._tiles) if 0 <= i < len(self.grid)}

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

        The tile counts as finished once its file is renamed into place, whole.
        Rewriting a finished tile is allowed (same file, same bytes for same data).
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
        data = encode_tile(prob, ok)
        final = self._tile_path(tile.index)
        tmp = temp_path_for(final)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

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

    def read_tile(self, tile: Tile) -> TileData:
        """``(probability float32, valid bool)`` of one tile as stored; DamagedTileError
        when its file is not whole."""
        self._check_tile(tile)
        data = self._tile_path(tile.index).read_bytes()
        return decode_tile(data, (tile.height, tile.width))

    def _read_checked(self, tile: Tile) -> TileData:
        """A tile for finalise: a damaged one is dropped (so the next run computes it)
        and reported as :class:`IncompleteStoreError`."""
        try:
            return self.read_tile(tile)
        except (DamagedTileError, FileNotFoundError) as exc:
            self._tile_path(tile.index).unlink(missing_ok=True)
            raise IncompleteStoreError(
                f"tile store {self.path}: 1 damaged tile(s) were dropped ({tile.key}: {exc}). "
                "Run the job again to compute them."
            ) from exc

    def verify(self) -> list[int]:
        """Re-read finished tiles and drop any whose file is not whole (e.g. blocks lost
        in a power cut). Returns the dropped indices, which then count as missing."""
        bad = []
        for idx in sorted(self.finished()):
            try:
                self.read_tile(self.grid[idx])
            except (DamagedTileError, FileNotFoundError):
                self._tile_path(idx).unlink(missing_ok=True)
                bad.append(idx)
        return bad

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

    def blend_window(
        self, rows: slice, cols: slice, read: Callable[[Tile], TileData] | None = None
    ) -> np.ndarray:
        """Blended float64 probability of a scene window; NaN where no tile has data.

        Tiles are summed in index order, so the result never depends on write order.
        ``read`` returns a tile's data (default: read its file).
        """
        read = read or self.read_tile
        h, w = rows.stop - rows.start, cols.stop - cols.start
        num = np.zeros((h, w), dtype=np.float64)
        den = np.zeros((h, w), dtype=np.float64)
        for t in self.grid.intersecting(rows, cols):
            r0, r1 = max(rows.start, t.row), min(rows.stop, t.row + t.height)
            c0, c1 = max(cols.start, t.col), min(cols.stop, t.col + t.width)
            tr, tc = slice(r0 - t.row, r1 - t.row), slice(c0 - t.col, c1 - t.col)
            out = (slice(r0 - rows.start, r1 - rows.start), slice(c0 - cols.start, c1 - cols.start))
            prob, valid = read(t)
            p = prob[tr, tc].astype(np.float64)
            ok = valid[tr, tc] & np.isfinite(p)
            wt = self._weight(t)[tr, tc]
            if not ok.all():  # else the same sums, without the masking
                wt = np.where(ok, wt, 0.0)
                p = np.where(ok, p, 0.0)
            num[out] += wt * p
            den[out] += wt
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)

    def _windows(self, size: int) -> list[tuple[slice, slice]]:
        return [
            (slice(r, min(r + size, self.grid.height)), slice(c, min(c + size, self.grid.width)))
            for r in range(0, self.grid.height, size)
            for c in range(0, self.grid.width, size)
        ]

    def _blended_pieces(self, window: int) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """Windows in row-major order with their blended probability (float64, NaN at
        nodata). Tiles shared by the next window are kept for it, so a tile is read
        once per row of windows it spans instead of once per window."""
        windows = self._windows(window)
        kept: dict[int, TileData] = {}

        def read(tile: Tile) -> TileData:
            if tile.index not in kept:
                kept[tile.index] = self._read_checked(tile)
            return kept[tile.index]

        for k, (rows, cols) in enumerate(windows):
            yield rows, cols, self.blend_window(rows, cols, read)
            following = self.grid.intersecting(*windows[k + 1]) if k + 1 < len(windows) else []
            keep = {t.index for t in following}
            for index in [i for i in kept if i not in keep]:
                del kept[index]

    def _per_pixel_pieces(self) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """Each tile's own pixels (those no earlier tile covers), read once, as float32
        probability with NaN at nodata (see "Per-pixel extractors" above)."""
        g = self.grid
        for t in g:
            r0, r1 = owned_span(g.row_offsets, t.grid_row, g.tile_height, g.height)
            c0, c1 = owned_span(g.col_offsets, t.grid_col, g.tile_width, g.width)
            if r1 <= r0 or c1 <= c0:
                continue
            prob, valid = self._read_checked(t)
            p = prob[r0 - t.row : r1 - t.row, c0 - t.col : c1 - t.col]
            ok = valid[r0 - t.row : r1 - t.row, c0 - t.col : c1 - t.col] & np.isfinite(p)
            yield slice(r0, r1), slice(c0, c1), np.where(ok, p, np.float32(np.nan))

    # -- finalise ------------------------------------------------------------------

    def finalise(
        self,
        mask_path: str | os.PathLike[str],
        prob_path: str | os.PathLike[str] | None = None,
        threshold: float = 0.5,
        *,
        tags: dict[str, str] | None = None,
        window: int = 1024,
        blocksize: int = COG_BLOCKSIZE,
        overview_count: int | None = None,
        styles: dict[str, BandStyle] | None = None,
        per_pixel: bool = False,
    ) -> tuple[Path, Path | None]:
        """Blend all tiles into a COG mask (uint8 mask codes: target where probability >=
        ``threshold``, other elsewhere, nodata) and optionally a float32 probability COG
        (NaN nodata).

        Streams window by window into tiled GeoTIFFs inside the store, then converts them
        to COGs that appear atomically at their final paths. ``tags`` become GeoTIFF
        metadata tags; ``styles`` ('mask', 'probability') describe the bands for desktop
        GIS; ``per_pixel`` takes each pixel from the first tile covering it instead of
        blending (for per-pixel extractors; see the module docstring). Raises
        :class:`IncompleteStoreError` while tiles are missing or when one is damaged
        (that tile is dropped) and :class:`OutputError` (before writing anything) if an
        output folder is not writable.
        """
        if window < 1 or window % 16:
            raise ValueError(f"window must be a positive multiple of 16, got {window}")
        mask_path = Path(mask_path)
        prob_out = Path(prob_path) if prob_path is not None else None
        ensure_writable_dir(mask_path.parent)
        if prob_out is not None:
            ensure_writable_dir(prob_out.parent)
        missing = self.missing()
        if missing:
            shown = ", ".join(t.key for t in missing[:5])
            raise IncompleteStoreError(
                f"tile store {self.path}: {len(missing)} of {len(self.grid)} tiles not "
                f"finished (e.g. {shown}). Run the job again to compute them."
            )
        pieces = self._per_pixel_pieces() if per_pixel else self._blended_pieces(window)
        work = Path(tempfile.mkdtemp(prefix="finalise-", dir=self.path))
        try:
            mask_tif, prob_tif = work / "mask.tif", work / "probability.tif"
            self._write_intermediate(mask_tif, prob_tif if prob_out else None, threshold, pieces)
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
        self,
        mask_tif: Path,
        prob_tif: Path | None,
        threshold: float,
        pieces: Iterator[tuple[slice, slice, np.ndarray]],
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
            for rows, cols, p in pieces:
                nodata = np.isnan(p)
                with np.errstate(invalid="ignore"):
                    # float64, as the blend: a float32 probability meets the threshold
                    # exactly as its blended (equal) value would
                    mask = (p.astype(np.float64, copy=False) >= threshold).astype(np.uint8)
                mask[nodata] = MASK_NODATA
                win = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
                mask_ds.write(mask, 1, window=win)
                if prob_ds is not None:
                    prob_ds.write(p.astype(np.float32, copy=False), 1, window=win)
