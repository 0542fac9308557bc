"""Output locks across processes: a busy output makes the next run wait or fail clearly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.locking import OutputLockedError, output_lock


def _holder(out: Path, name: str, seconds: float, mode: str = "exclusive") -> subprocess.Popen:
    """Another process that holds the lock for ``seconds`` and says when it has it."""
    code = textwrap.dedent(f"""
        import sys, time
        from pipeline.locking import output_lock
        with output_lock({str(out)!r}, {name!r}, mode={mode!r}):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_busy_output_fails_clearly_after_the_timeout(tmp_path: Path) -> None:
    proc = _holder(tmp_path, "scene_water", 30)
    try:
        start = time.monotonic()
        with (
            pytest.raises(OutputLockedError, match=rf"pid {proc.pid} .*gave up after 0.5 s"),
            output_lock(tmp_path, "scene_water", timeout=0.5),
        ):
            pass
        assert time.monotonic() - start < 5
    finally:
        proc.kill()
        proc.wait()
    with output_lock(tmp_path, "scene_water", timeout=0):  # the kernel freed it on SIGKILL
        pass


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path: Path) -> None:
    proc = _holder(tmp_path, "scene_water", 1.0)
    start = time.monotonic()
    with output_lock(tmp_path, "scene_water", timeout=30):
        waited = time.monotonic() - start
    proc.wait()
    assert 0.3 < waited < 10


def test_shared_holders_coexist_but_exclude_a_writer(tmp_path: Path) -> None:
    proc = _holder(tmp_path, "job", 30, mode="shared")
    try:
        with output_lock(tmp_path, "job", mode="shared", timeout=0):
            pass
        with (
            pytest.raises(OutputLockedError),
            output_lock(tmp_path, "job", mode="exclusive", timeout=0.2),
        ):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_other_outputs_are_independent(tmp_path: Path) -> None:
    proc = _holder(tmp_path, "a", 30)
    try:
        with output_lock(tmp_path, "b", timeout=0):
            pass
    finally:
        proc.kill()
        proc.wait()
