"""MSAM, the multiscale aggregation module of the SPEX paper.

The 4 encoder maps are resized to the stride-16 grid (the finer maps are average-pooled,
the coarsest is upsampled bilinearly), concatenated, then 3x3 conv, ReLU, 1x1 conv, ReLU
to the LLM's hidden size. That one map feeds both consumers: flattened, it is the LLM's
visual tokens; through a small projection, it is the SAM decoder's image embedding, so
the mask decoder sees the same multiscale evidence the description was written from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MSAM(nn.Module):
    """Fuse 4 maps at strides 4/8/16/32 into one stride-16 map of ``llm_dim`` channels."""

    def __init__(self, in_channels: tuple[int, ...], llm_dim: int, decoder_dim: int) -> None:
        super().__init__()
        total = sum(in_channels)
        self.trunk = nn.Sequential(
            nn.Conv2d(total, llm_dim, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(llm_dim, llm_dim, kernel_size=1),
            nn.ReLU(inplace=True),
        )
        # The small projection to the decoder's image-embedding width (used only by the
        # mask branch, hence trained only in stage 2).
        self.to_decoder = nn.Sequential(
            nn.Conv2d(llm_dim, decoder_dim, kernel_size=1),
            nn.GroupNorm(1, decoder_dim),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Returns the fused (B, llm_dim, H/16, W/16) map."""
        target = (int(features[2].shape[-2]), int(features[2].shape[-1]))
        resized = []
        for f in features:
            if f.shape[-2:] == target:
                resized.append(f)
            elif f.shape[-2] > target[0]:
                resized.append(F.adaptive_avg_pool2d(f, target))
            else:
                resized.append(F.interpolate(f, size=target, mode="bilinear", align_corners=False))
        return self.trunk(torch.cat(resized, dim=1))

    def decoder_embedding(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, llm_dim, h, w) -> (B, decoder_dim, h, w) image embedding for SAM."""
        return self.to_decoder(fused)


def visual_tokens(fused: torch.Tensor, budget: int) -> torch.Tensor:
    """Flatten the fused map to (B, N, D) tokens, average-pooled to at most ``budget``.

    Pooling keeps the grid's aspect: the side lengths shrink by the same factor until
    h * w <= budget, so a 512 px tile at stride 16 (1024 tokens) fits any budget.
    """
    _, _, h, w = fused.shape
    if h * w > budget:
        factor = (h * w / budget) ** 0.5
        nh, nw = max(1, int(h / factor)), max(1, int(w / factor))
        while nh * nw > budget:
            nh, nw = max(1, nh - 1), max(1, nw - 1)
        fused = F.adaptive_avg_pool2d(fused, (nh, nw))
    return fused.flatten(2).transpose(1, 2)
