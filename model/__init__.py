"""The SPEX model (arXiv 2508.05202), one concept per module.

config (tiny / paper sizes), evidence (the input channels and the spectral priors),
windows (native-resolution windows of a tile), tokenizer (offline byte-level BPE,
ChatML), encoder (hierarchical backbone), msam (multiscale aggregation), llm (Qwen2 +
LoRA, generation), tcp (token compression projector), target_token (per-target prompt),
detail (fine-detail path), sam_decoder (SAM mask decoder and mask prompt),
spectral_head (per-pixel correction), spex (assembly: the mask as a correction of the
prior, losses), stages (training-stage freezing), checkpoint (weights I/O), inference
(the pipeline Extractor), registry (versions and the default per target), promotion
(the leave-one-scene-out rule). Nothing is imported here, so ``import model.config``
stays cheap.
"""
