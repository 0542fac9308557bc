"""The SPEX model (arXiv 2508.05202), one concept per module.

config (tiny / paper sizes), tokenizer (offline byte-level BPE, ChatML), encoder
(hierarchical backbone), msam (multiscale aggregation), llm (Qwen2 + LoRA, generation),
tcp (token compression projector), target_token (per-target prompt), detail (fine-detail
path), sam_decoder (SAM mask decoder), spex (assembly and losses), stages (training-stage
freezing), checkpoint (weights I/O), inference (the pipeline Extractor). Nothing is
imported here, so ``import model.config`` stays cheap.
"""
