"""Stage timers shared by inference and the benchmark, so the benchmark measures the
very code path the extractor runs (encoder, LLM prefill, generation, TCP + decoder)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def stage_timer(
    timings: dict[str, float] | None, name: str, ref: torch.Tensor | None = None
) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]`` (no-op when ``timings`` is
    None). CUDA work is asynchronous, so the device is synchronised at both ends."""
    if timings is None:
        yield
        return
    device = ref.device if ref is not None and ref.is_cuda else None
    if device is not None:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        if device is not None:
            torch.cuda.synchronize(device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
