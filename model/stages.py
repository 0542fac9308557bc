"""Training-stage freezing, as the SPEX paper trains the model.

Stage 1: encoder + MSAM trunk + LoRA learn from the text loss; the LLM base, the TCP,
the decoder projection and the mask decoder stay frozen (nothing trains them yet).
Stage 2: the LLM (base and LoRA) is frozen; encoder, MSAM (trunk and decoder
projection), TCP and mask decoder learn from text CE + BCE + Dice. The mask decoder's
parameters that the single-mask output never uses stay frozen, so that the trainable
set is exactly the set that receives gradients.
"""

from __future__ import annotations

from torch import nn

from model.spex import SpexModel


def set_stage(model: SpexModel, stage: int) -> list[nn.Parameter]:
    """Set ``requires_grad`` for ``stage`` (1 or 2); returns the trainable parameters."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    model.requires_grad_(False)
    model.encoder.requires_grad_(True)
    model.msam.trunk.requires_grad_(True)
    if stage == 1:
        for name, p in model.llm.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    else:
        model.msam.to_decoder.requires_grad_(True)
        model.tcp.requires_grad_(True)
        model.decoder.requires_grad_(True)
        for p in model.decoder.unused_parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def trainable_groups(model: SpexModel) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters split by the paper's learning rates: 'vision' (1e-4) for
    encoder/MSAM/TCP/decoder and 'llm' (1e-5) for LoRA."""
    groups: dict[str, list[nn.Parameter]] = {"vision": [], "llm": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["llm" if name.startswith("llm.") else "vision"].append(p)
    return groups
