"""Training-stage freezing, as the SPEX paper trains the model.

Stage 1: encoder + MSAM trunk + LoRA learn from the text loss; the LLM base, the TCP,
the decoder projection and the mask decoder stay frozen (nothing trains them yet).
Stage 2: the LLM (base and LoRA) is frozen; encoder, MSAM (trunk and decoder
projection), TCP, target tokens, mask decoder (with its mask-prompt encoder), its
fine-detail path, the spectral head and the correction gate learn from text CE + BCE +
Dice. The mask decoder's parameters that the single-mask output never uses
stay frozen, so that the trainable set is exactly the set that receives gradients.
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
        model.mask_gate.requires_grad_(True)
        for part in (model.detail, model.target_tokens, model.spectral):
            if part is not None:
                part.requires_grad_(True)
        for p in model.decoder.unused_parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


#: Parameter-name prefixes of the mask branch (stage 2's new parts).
MASK_BRANCH = (
    "msam.to_decoder.",
    "tcp.",
    "decoder.",
    "detail.",
    "target_tokens.",
    "spectral.",
    "mask_gate",
)


def trainable_groups(model: SpexModel) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters split by learning rate: 'vision' (the paper's 1e-4) for the
    encoder and MSAM trunk, 'decoder' for the mask branch (MSAM decoder projection, TCP,
    mask decoder) and 'llm' (1e-5) for LoRA.

    Why the mask branch has a group of its own: in stage 2 it starts from scratch (its
    output is a product of two near-zero factors) while the encoder and MSAM trunk are
    already trained. One learning rate for both is either too small for the new branch
    or, as measured on the tiny model at 1e-3, large enough to kill 40 % of the MSAM
    trunk's ReLU channels and wipe the spatial information out of the image embedding,
    after which the decoder can only output a constant mask."""
    groups: dict[str, list[nn.Parameter]] = {"vision": [], "decoder": [], "llm": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("llm."):
            groups["llm"].append(p)
        elif name.startswith(MASK_BRANCH):
            groups["decoder"].append(p)
        else:
            groups["vision"].append(p)
    return groups
