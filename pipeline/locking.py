"""Output locks: two runs writing the same output never interleave their writes.

Why a lock at all, when every final file already appears atomically? Atomic renames keep
each *file* whole, but a job is several files plus a tile store: a second run started
with ``--force`` deletes the store another run is writing into, two finalise passes
race on the done record, two regional runs rewrite the same run folder. The lock makes
such runs take turns: the second one waits (up to a timeout) and then either proceeds
on a consistent folder or fails with a message that says who holds the output.

Why ``fcntl.flock`` on a lock file: the kernel releases it when the holder dies, even on
SIGKILL, so a crashed run never leaves a stale lock behind (unlike "lock file exists"
schemes), it works across processes and threads (each acquisition opens its own file
description), and it is honoured on local filesystems and NFSv4. Lock files live in
``<out>/.spex-work/locks/`` and are never deleted: unlinking a lock file that another
process is blocked on would let a third process lock a different inode.

Shared versus exclusive: tile batches of one job write disjoint tile slots and may run
concurrently (threads, Dask workers), so they take the lock *shared*; planning (which
may discard a store) and finalising (which writes the final files) take it *exclusive*.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pipeline.errors import OutputError

LOCK_DIR = Path(".spex-work") / "locks"
#: Seconds a run waits for a busy output before failing; ``SPEX_LOCK_TIMEOUT`` overrides.
DEFAULT_TIMEOUT_S = 600.0
POLL_S = 0.1

Mode = Literal["exclusive", "shared"]


class OutputLockedError(OutputError):
    """Another run holds the output for longer than this run was willing to wait."""


def default_timeout() -> float:
    """The wait limit from ``SPEX_LOCK_TIMEOUT`` (seconds), else :data:`DEFAULT_TIMEOUT_S`."""
    value = os.environ.get("SPEX_LOCK_TIMEOUT")
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        return max(0.0, float(value))
    except ValueError as exc:
        raise OutputError(f"SPEX_LOCK_TIMEOUT must be a number of seconds, got {value!r}") from exc


def lock_path(out_dir: str | os.PathLike[str], name: str) -> Path:
    """Lock file of output ``name`` (e.g. a job stem) inside ``out_dir``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "output"
    return Path(out_dir) / LOCK_DIR / f"{safe}.lock"


def _holder(fd: int) -> str:
    """Best-effort description of the current exclusive holder (written when it locked)."""
    with contextlib.suppress(OSError, ValueError):
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if raw:
            info = json.loads(raw)
            return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
    return "another run"


def _record_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)


@contextlib.contextmanager
def output_lock(
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    mode: Mode = "exclusive",
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the lock of output ``name`` in ``out_dir`` for the ``with`` body.

    Waits up to ``timeout`` seconds (default :func:`default_timeout`; 0 = try once) and
    raises :class:`OutputLockedError` naming the holder when the output stays busy;
    ``on_wait`` is told once, with the holder's description, when the lock is busy (so a
    command line can say why it pauses). Yields the lock file's path. Released on exit,
    and by the kernel if the process dies.
    """
    path = lock_path(out_dir, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot create lock file {path}: {exc.strerror or exc}") from exc
    limit = default_timeout() if timeout is None else timeout
    op = fcntl.LOCK_EX if mode == "exclusive" else fcntl.LOCK_SH
    deadline = time.monotonic() + limit
    held = False
    told = False
    try:
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise OutputError(f"cannot lock {path}: {exc.strerror or exc}") from exc
                if time.monotonic() >= deadline:
                    raise OutputLockedError(
                        f"output {Path(out_dir) / name} is being written by {_holder(fd)} "
                        f"(lock {path}); gave up after {limit:g} s. Wait for that run to "
                        "finish, or raise SPEX_LOCK_TIMEOUT."
                    ) from None
                if on_wait is not None and not told and limit > 0:
                    on_wait(_holder(fd))
                    told = True
                time.sleep(POLL_S)
        held = True
        if mode == "exclusive":
            _record_holder(fd)
        yield path
    finally:
        if held and mode == "exclusive":
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale holder description for the next waiter
        os.close(fd)  # closing the last descriptor releases the flock
