"""Give memory that numpy freed back to the operating system between batches.

A job allocates and frees the same tile-sized arrays thousands of times, from several
threads (reader, model, writer). glibc's allocator then raises its mmap threshold to the
largest block it has freed (up to 32 MB), so those arrays come from per-thread heaps,
whose free pieces are reused only partly: the process's resident memory creeps up with
the number of batches (measured: +73 MB over the batches of a 1.08 Gpx scene against
+39 MB on a 10.8 Mpx one), although what is alive at any time is bounded by the tile.
``malloc_trim`` after each batch hands the free pages back (about 2 ms a call), which
keeps peak memory flat in the scene's area. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim(0)``); a no-op elsewhere."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
