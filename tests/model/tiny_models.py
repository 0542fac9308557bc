"""The small seeded SPEX models the model tests build (one definition for every file)."""

from __future__ import annotations

import torch

from model.config import tiny
from model.llm import GenerationSettings
from model.spex import SpexModel

BANDS4 = ("B", "G", "R", "N")
SIZE = 64
GEN = GenerationSettings(max_new_tokens=6)


def build(bands: tuple[str, ...] = BANDS4, **kw) -> SpexModel:
    """A tiny SPEX at 64 px windows, seeded so every test sees the same weights."""
    torch.manual_seed(0)
    return SpexModel(tiny(bands=bands, input_size=SIZE, **kw)).eval()


def random_inputs(model: SpexModel, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Evidence-shaped inputs and prior logits for shape and gradient plumbing tests
    (real imagery goes through model.evidence in the extractor tests)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, model.config.input_channels, SIZE, SIZE, generator=g)
    prior = 4 * torch.rand(n, SIZE, SIZE, generator=g) - 2
    return x, prior
