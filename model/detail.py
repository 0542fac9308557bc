"""The fine-detail path of the mask decoder (after HQ-SAM's early-feature fusion).

Why: SAM's decoder upsamples its stride-16 image embedding 4x and takes the mask as the
dot product of those stride-4 features with one vector per output token. At the tiny
model's 128 px input the stride-16 grid is 8 x 8, and the MSAM map it comes from was
trained for text in stage 1: a balanced linear probe reads water from it at IoU 0.42,
against 0.78 from the encoder's own maps (docs/evaluation.md). Thin rivers and single
buildings are lost before the decoder ever sees them. HQ-SAM (Ke et al., NeurIPS 2023)
meets the same limit of SAM by adding early, high-resolution backbone features to the
upscaled mask features; here the encoder's stride-4 and stride-8 maps (pre-trained as
MVPNet in stage 0) are projected to the decoder's upscaled width and added the same way,
so the prompt tokens select among features that still carry pixel-level evidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DetailFusion(nn.Module):
    """Encoder maps at strides 4 and 8 -> (B, out_dim, H/4, W/4) to add to SAM's
    upscaled mask features."""

    def __init__(self, in_channels: Sequence[int], out_dim: int) -> None:
        """``in_channels``: widths of the stride-4 and stride-8 maps (the first two)."""
        super().__init__()
        hidden = max(2 * out_dim, 16)
        self.fine = nn.Conv2d(in_channels[0], hidden, kernel_size=1)
        self.coarse = nn.Conv2d(in_channels[1], hidden, kernel_size=1)
        self.fuse = nn.Sequential(
            nn.GroupNorm(1, hidden),
            nn.GELU(),
            nn.Conv2d(hidden, out_dim, kernel_size=3, padding=1),
        )

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        fine, coarse = maps[0], maps[1]
        up = F.interpolate(
            self.coarse(coarse), size=fine.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.fuse(self.fine(fine) + up)
