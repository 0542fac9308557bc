"""Torch's intra-op thread count for the length of a job, restored afterwards.

Training and evaluation choose their thread count (a recipe's ``threads``; one thread
per scene evaluation), and a library call must not leave the process changed. torch is
imported on entry, so callers that import this module stay light.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the ``with`` body with ``torch.set_num_threads(n)``, then restore the count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
