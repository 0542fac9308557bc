"""Strided samples of raster files: their step, their reading, a cache, and a head start.

Scene-level statistics (the per-scene percentile scale, the validity check, one Otsu
threshold for all tiles, the quicklook) come from one strided sample of at most
:data:`DECIMATED_PIXELS` pixels: rows and columns 0, step, 2 step ... Reading it decodes
every block of the file once (so a corrupt block fails before anything is written), in
windows aligned with the blocks; :mod:`pipeline.scene.windows` does that for an opened
scene and keeps the native values here, per file, for every later caller.

The head start: ``spex extract`` spends its first second importing xarray, pandas and
dask on one core, while the file's blocks wait. :func:`start_prefetch` reads the sample
of a plain GeoTIFF or VRT in a thread during those imports, with nothing but rasterio
(this module imports neither dask nor xarray), through the same GDAL options as the
block reader. The result is used only if it is for the same file (path, size,
modification time), bands and step; a prefetch that fails or is not needed changes
nothing, the job reads as it would have.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

#: Pixels read at most by decimated statistics (percentile fallback, nodata share, Otsu).
DECIMATED_PIXELS = 1_000_000
#: Target size of one window of a strided read (file blocks are decoded once each).
WINDOW_PIXELS = 1024 * 1024
#: Bytes of native samples kept per process (least recently used beyond are dropped):
#: enough for every file of a 13-band scene at 16 bit (~26 MB), bounded for any scene.
SAMPLES_BYTES = 64 * 2**20
#: Files the head start reads: formats whose blocks the block reader reads as they are.
PREFETCH_SUFFIXES = (".tif", ".tiff", ".vrt")

Window4 = tuple[int, int, int, int]  # row0, row1, col0, col1
Key = tuple[Any, ...]

_samples: OrderedDict[Key, np.ndarray] = OrderedDict()
_pending: dict[Key, Future[np.ndarray | None]] = {}
_lock = threading.Lock()


def sample_step(height: int, width: int, max_pixels: int = DECIMATED_PIXELS) -> int:
    """The stride that keeps a sample of a height x width raster within ``max_pixels``."""
    return max(1, math.ceil(math.sqrt(height * width / max_pixels)))


def block_windows(
    height: int, width: int, block: tuple[int, int], itemsize: int, bands: int
) -> list[Window4]:
    """Windows of about WINDOW_PIXELS that cover the raster, aligned with its blocks.

    Tiled files: whole blocks up to ~1024 px a side. Striped files (a block spans the
    width): whole strips across the full width, as many rows as fit in ~4 MB."""
    bh, bw = max(1, block[0]), max(1, block[1])
    side = int(math.sqrt(WINDOW_PIXELS))
    if bw >= width:
        rows = max(1, (4 * WINDOW_PIXELS) // max(1, width * itemsize * bands) // bh) * bh
        cols = width
    else:
        rows, cols = max(1, side // bh) * bh, max(1, side // bw) * bw
    return [
        (r, min(height, r + rows), c, min(width, c + cols))
        for r in range(0, height, rows)
        for c in range(0, width, cols)
    ]


def strided_read(
    read: Callable[[Window4], np.ndarray],
    windows: Sequence[Window4],
    shape: tuple[int, int, int],
    dtype: Any,
    step: int,
    threads: int = 1,
    stop: threading.Event | None = None,
) -> np.ndarray | None:
    """Rows and columns 0, step, 2 step ... of a (bands, h, w) raster, window by window.

    ``read`` returns a window's (bands, rows, cols) values; ``threads`` windows are read
    at once (GDAL decodes without the GIL). Returns None if ``stop`` is set midway."""
    out = np.empty((shape[0], -(-shape[1] // step), -(-shape[2] // step)), dtype=dtype)

    def take(part: Window4) -> None:
        if stop is not None and stop.is_set():
            return
        r0, _, c0, _ = part
        block = read(part)
        rs, cs = (-r0) % step, (-c0) % step
        picked = block[:, rs::step, cs::step]
        y, x = (r0 + rs) // step, (c0 + cs) // step
        out[:, y : y + picked.shape[1], x : x + picked.shape[2]] = picked

    if threads <= 1 or len(windows) == 1:
        for part in windows:
            take(part)
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="spex-sample") as pool:
            list(pool.map(take, windows))  # re-raises the first read error
    if stop is not None and stop.is_set():
        return None
    out.flags.writeable = False  # shared by every caller of this sample
    return out


def file_key(path: str, indexes: Sequence[int], step: int) -> Key:
    """What a file's native sample depends on: the file (resolved path, size, mtime),
    its bands and the step."""
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, tuple(indexes), step)


def recall(key: Key) -> np.ndarray | None:
    """A kept sample, waiting for a head start of it that is still reading."""
    with _lock:
        pending = _pending.get(key)
    if pending is not None:
        pending.result()  # the prefetch stores what it read (or nothing) before it ends
    with _lock:
        found = _samples.get(key)
        if found is not None:
            _samples.move_to_end(key)
        return found


def remember(key: Key, sample: np.ndarray) -> None:
    with _lock:
        _samples[key] = sample
        _samples.move_to_end(key)
        while len(_samples) > 1 and sum(a.nbytes for a in _samples.values()) > SAMPLES_BYTES:
            _samples.popitem(last=False)


def forget() -> None:
    """Drop the kept samples (tests; memory)."""
    with _lock:
        _samples.clear()


class Prefetch:
    """A head start on one file's sample (see the module docstring); :meth:`stop` ends it
    early when the job did not need it."""

    def __init__(self, path: Path) -> None:
        self._stop = threading.Event()
        self._key: Key | None = None
        self._future: Future[np.ndarray | None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(path,), name="spex-prefetch", daemon=True
        )
        self._thread.start()

    def _run(self, path: Path) -> None:
        sample = None
        try:
            sample = self._read(path)
        except Exception:  # the job's own read reports any problem, naming the file
            sample = None
        finally:
            if self._key is not None:
                with _lock:
                    _pending.pop(self._key, None)
            self._future.set_result(sample)

    def _read(self, path: Path) -> np.ndarray | None:
        import rasterio
        from rasterio.windows import Window

        # the block reader's options (pipeline.scene.reader.READ_OPTIONS), read in place
        # here: that module's package imports dask. A scene without georeferencing is
        # skipped quietly: the job's own check refuses it with one error line.
        with rasterio.Env(GDAL_NUM_THREADS="1"), _quiet_open(path) as src:
            if src.crs is None or src.transform.is_identity:
                return None
            indexes = list(range(1, src.count + 1))
            step = sample_step(src.height, src.width)
            key = file_key(str(path), indexes, step)
            with _lock:
                if key in _samples or key in _pending:
                    return None
                _pending[key] = self._future
                self._key = key
            dtype = np.result_type(*src.dtypes)
            windows = block_windows(
                src.height, src.width, src.block_shapes[0], dtype.itemsize, src.count
            )

            def read(part: Window4) -> np.ndarray:
                r0, r1, c0, c1 = part
                return src.read(indexes, window=Window(c0, r0, c1 - c0, r1 - r0))

            shape = (src.count, src.height, src.width)
            sample = strided_read(read, windows, shape, dtype, step, stop=self._stop)
        if sample is not None:
            remember(key, sample)
        return sample

    def stop(self) -> None:
        """End the read at the next window and wait for the thread."""
        self._stop.set()
        self._thread.join()


def start_prefetch(scene: str | Path) -> Prefetch | None:
    """A head start on the sample of ``scene`` when it is a single GeoTIFF/VRT file."""
    path = Path(scene)
    if path.suffix.lower() not in PREFETCH_SUFFIXES or not path.is_file():
        return None
    return Prefetch(path)


def _quiet_open(path: Path) -> Any:
    """``rasterio.open`` without rasterio's NotGeoreferencedWarning on stderr."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)
