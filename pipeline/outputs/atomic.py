"""Final files appear whole or not at all.

Every final output is first written under a temporary name in the *same* folder (so the
final ``os.replace`` is an atomic rename on one filesystem), then renamed. A crash or an
error leaves no half-written file under the final name: an analyst who sees
``scene_water.tif`` can trust it, and a rerun simply overwrites the temp leftovers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import OutputError

TEMP_MARK = ".spex-tmp-"


def ensure_writable_dir(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and prove it is writable by creating a probe file.

    ``os.access`` alone lies on some network and read-only filesystems (and for root), so
    a real file is created and removed. Raises :class:`OutputError` naming the folder.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TEMP_MARK + "probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"output folder {path} is not writable: {exc.strerror or exc}") from exc
    return path


def temp_path_for(final: str | os.PathLike[str]) -> Path:
    """A unique temp name next to ``final``, keeping its suffix (drivers look at it)."""
    final = Path(final)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return final.with_name(f".{final.stem}{TEMP_MARK}{token}{final.suffix}")


def _remove_with_sidecars(path: Path) -> None:
    """Remove ``path`` and anything GDAL may have put next to it (.aux.xml, .ovr, ...)."""
    for p in path.parent.glob(path.name + "*"):
        with contextlib.suppress(OSError):
            if p.is_file() or p.is_symlink():
                p.unlink()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort: not all filesystems allow it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``final``; rename it to ``final`` on success.

    On any exception the temp file (and GDAL sidecars) are removed and the exception
    propagates; an existing ``final`` is left untouched. The body must create the file.
    """
    final = Path(final)
    ensure_writable_dir(final.parent)
    tmp = temp_path_for(final)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"nothing was written for {final}")
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        _remove_with_sidecars(tmp)
        raise
    _remove_with_sidecars(tmp)  # GDAL sidecars of the temp name, if any
    fsync_dir(final.parent)


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically; returns the final path."""
    final = Path(final)
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return final


def atomic_write_text(final: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``final`` atomically; returns the final path."""
    return atomic_write_bytes(final, text.encode("utf-8"))
