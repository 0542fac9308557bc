"""The per-pixel spectral correction: a small 1x1-convolution network on the evidence.

Why beside the SAM decoder: SAM decodes its mask at stride 4 of the input and upsamples
it, so on its own it can shift the index's threshold only region by region. What
separates water from shadow or bare soil from built-up land is mostly the pixel's own
spectrum (reflectance level, the other indices), which a per-pixel function of the
evidence reads at full resolution. Its last layer starts at zero, so before training
(and wherever training taught it nothing) it adds nothing to the spectral prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SpectralHead(nn.Module):
    """(B, C, H, W) evidence -> (B, H, W) logit correction for each sample's target."""

    def __init__(self, in_channels: int, hidden: int, targets: Sequence[str]) -> None:
        super().__init__()
        self.targets = tuple(targets)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(hidden, len(self.targets), kernel_size=1),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, evidence: torch.Tensor, targets: Sequence[str]) -> torch.Tensor:
        out = self.net(evidence)
        ids = torch.tensor([self.targets.index(t) for t in targets], device=out.device)
        return out[torch.arange(out.shape[0], device=out.device), ids]
