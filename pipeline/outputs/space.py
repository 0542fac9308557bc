"""A full disk (or a file-size limit) as one message an operator can act on.

GDAL, zarr and the OS report a full disk in different ways (``OSError`` with ``ENOSPC``,
a rasterio I/O error whose text says "No space left on device", ``EFBIG`` under
``ulimit -f``). An operator needs the same three facts each time: which file could not
be written, how much space is free there, and how much the job needs, so
:func:`storage_error` turns any of them into one :class:`OutputError` saying exactly that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from pipeline.errors import OutputError

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_STORAGE_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) says the storage is full or capped."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return True
        if any(text in str(current) for text in _STORAGE_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def probe_storage(folder: str | os.PathLike[str], nbytes: int = 1 << 20) -> OSError | None:
    """Write and remove ``nbytes`` in ``folder``; the storage error it hits, if any.

    Some writers (GDAL's GeoPackage driver through pyogrio) report a full disk only as
    "failed to commit transaction"; a probe of the same folder tells whether the storage
    is the cause, so the operator still gets the file-and-space message.
    """
    path = Path(folder) / f".spex-space-probe-{os.getpid()}"
    try:
        with open(path, "wb") as handle:
            handle.write(b"\0" * nbytes)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return exc if exc.errno in STORAGE_ERRNOS else None
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    return None


def _reason(exc: BaseException) -> str:
    for text in _STORAGE_TEXTS:
        if text in str(exc) or (exc.__cause__ is not None and text in str(exc.__cause__)):
            return text
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "the storage is full"


def human_bytes(n: float) -> str:
    """``1.5 MB``-style sizes (decimal units, as ``df -H`` prints them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(folder: str | os.PathLike[str]) -> int | None:
    """Free bytes for this user on the filesystem holding ``folder`` (None if unknown)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def storage_error(
    exc: BaseException, file: str | os.PathLike[str], needed: int, what: str
) -> OutputError:
    """One clear error for a full disk while writing ``file`` (part of ``what``).

    ``needed`` is the job's estimate of the space it needs there (an upper bound).
    """
    folder = Path(file).parent
    free = free_bytes(folder)
    free_text = "unknown space" if free is None else human_bytes(free)
    return OutputError(
        f"cannot write {file} ({what}): {_reason(exc)}; {free_text} free in {folder}, "
        f"the job needs up to {human_bytes(needed)} there. Free some space (or lift the "
        "file-size limit) and rerun the same command to resume, or choose another --out."
    )
