"""The target token: one learned SAM prompt embedding per target the model was trained for.

Why it exists beside the TCP: the paper prompts SAM with the compressed description only,
which works with a pretrained 1.5 B Qwen. The tiny model's LLM is trained from scratch on
a few hundred descriptions; its response hidden states do carry the target (a linear probe
names it from the pooled TCP input on every train sample), but as a small shift on a large
shared component, and the mask decoder trained from them did not leave the constant-mask
plateau or fitted the teacher-forced description instead of the image (measured on
cached stage-1 features: val water IoU 0.01 with the TCP alone, 0.63 with this token
added; docs/evaluation.md). SAM itself tells prompts apart by learned type embeddings
(positive / negative point, box corner); this is the same idea for "which target": the
instruction names the target, so the token is known at training and at inference alike.
The TCP tokens stay in the prompt set, so the description still steers the mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TargetTokens(nn.Module):
    """Target names -> (B, 1, dim) prompt embeddings."""

    def __init__(self, targets: Sequence[str], dim: int) -> None:
        super().__init__()
        self.targets = tuple(targets)
        self.embed = nn.Embedding(len(self.targets), dim)

    def forward(self, targets: Sequence[str]) -> torch.Tensor:
        unknown = sorted({t for t in targets if t not in self.targets})
        if unknown:
            raise ValueError(
                f"this model was trained for targets {list(self.targets)}; got {unknown}"
            )
        ids = torch.tensor(
            [self.targets.index(t) for t in targets], device=self.embed.weight.device
        )
        return self.embed(ids)[:, None]
