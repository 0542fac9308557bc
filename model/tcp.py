"""TCP, the token compression projector of the SPEX paper.

There is no [SEG] token: the mask is prompted by the whole description. The final-layer
hidden states of the response tokens (a variable number per tile) are average-pooled
over the token axis to K tokens (adaptive pooling keeps their order: the first prompt
token summarises the start of the answer), then an MLP maps them to the SAM decoder's
prompt width, where they act as K sparse prompt embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenCompressionProjector(nn.Module):
    """(B, T, D) hidden states + (B, T) response mask -> (B, K, decoder_dim)."""

    def __init__(self, llm_dim: int, decoder_dim: int, num_tokens: int = 4) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.mlp = nn.Sequential(
            nn.Linear(llm_dim, llm_dim),
            nn.GELU(),
            nn.Linear(llm_dim, decoder_dim),
        )

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = torch.stack(
            [pool_tokens(hidden[i][mask[i]], self.num_tokens) for i in range(hidden.shape[0])]
        )
        return self.mlp(pooled)


def pool_tokens(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(T, D) -> (K, D) adaptive average over the token axis (T < K repeats tokens;
    T == 0, an empty answer, gives zeros rather than failing)."""
    if tokens.shape[0] == 0:
        return tokens.new_zeros(k, tokens.shape[1])
    return F.adaptive_avg_pool1d(tokens.t().unsqueeze(0), k).squeeze(0).t()
