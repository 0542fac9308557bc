"""The assembled SPEX model: encoder -> MSAM -> LLM -> TCP -> SAM mask decoder.

``forward`` is the training pass (teacher-forced response: text CE + BCE + Dice, weights
from the config); ``infer`` is the paper's inference pass (generated response, then the
mask from its hidden states). The pipeline's extractor uses ``infer_mask`` (the mask from
a forced response in one prefill pass, as in training) and ``describe`` (text only).
Every path takes a response's final-layer hidden states into the TCP, so the mask branch
sees the same kind of input in training and at inference.

The input is the evidence stack of :mod:`model.evidence` (reflectance, indices, spectral
priors), and the mask is a learned *correction* of the target's spectral prior:

    logits = prior + gate * SAM(image, prompts = TCP + target token, dense = prior)
                   + spectral_head(evidence)

The SAM decoder gets the prior as its dense mask prompt, which SAM is built to refine;
the gate (a scalar) and the spectral head's last layer start at zero, so before
training, and wherever training taught nothing, the mask is index + Otsu's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from model.config import SpexConfig
from model.detail import DetailFusion
from model.encoder import VisionEncoder
from model.llm import GenerationSettings, LanguageModel, PackedPrompt
from model.msam import MSAM, visual_tokens
from model.sam_decoder import SpexMaskDecoder
from model.spectral_head import SpectralHead
from model.target_token import TargetTokens
from model.tcp import TokenCompressionProjector
from model.timing import stage_timer


@dataclass
class SpexOutput:
    """Training-pass result. Losses are None when their targets were not given."""

    loss: torch.Tensor
    text_loss: torch.Tensor | None
    bce_loss: torch.Tensor | None
    dice_loss: torch.Tensor | None
    mask_logits: torch.Tensor  # (B, H, W) at input size


@dataclass
class SpexPrediction:
    """Inference-pass result."""

    mask_logits: torch.Tensor  # (B, H, W) at input size
    texts: list[str]
    tokens: torch.Tensor  # (B, T)


class SpexModel(nn.Module):
    """SPEX. ``config`` records the resolved architecture (including the transformers
    configs of pretrained parts), which is what a checkpoint stores."""

    def __init__(self, cfg: SpexConfig, tokenizer=None) -> None:
        super().__init__()
        if not cfg.prompt_targets:
            raise ValueError("a SPEX model needs at least one target (prompt_targets)")
        self.encoder = VisionEncoder(cfg.encoder, cfg.input_channels)
        self.llm = LanguageModel(cfg.llm, tokenizer=tokenizer)
        d_llm = self.llm.hidden_size
        d_dec = cfg.decoder.transformer_dim
        self.msam = MSAM(self.encoder.channels, d_llm, d_dec)
        self.tcp = TokenCompressionProjector(d_llm, d_dec, cfg.tcp_tokens)
        dc = cfg.decoder
        self.decoder = SpexMaskDecoder(
            d_dec, dc.depth, dc.num_heads, dc.mlp_dim, dc.iou_head_hidden_dim
        )
        # The fine-detail path (HQ-SAM-style): SAM's upscaled features are dim/8 wide.
        self.detail = (
            DetailFusion(self.encoder.channels[:2], d_dec // 8) if dc.detail_features else None
        )
        self.target_tokens = TargetTokens(cfg.prompt_targets, d_dec)
        self.spectral = SpectralHead(cfg.input_channels, cfg.spectral_hidden, cfg.prompt_targets)
        # How much of SAM's correction reaches the mask; 0 at first (module docstring).
        self.mask_gate = nn.Parameter(torch.zeros(()))
        if dc.pretrained_path:
            self.decoder.load_sam_checkpoint(dc.pretrained_path)
        if cfg.encoder.pretrained_path:
            cfg = replace(cfg, encoder=replace(cfg.encoder, hf_config=self.encoder.hf_config()))
        if cfg.llm.pretrained_path:
            cfg = replace(cfg, llm=replace(cfg.llm, hf_config=self.llm.hf_config()))
        self.config = cfg

    # -- shared pieces ------------------------------------------------------------------
    def encode_maps(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(B, C, S, S) evidence -> (the encoder's 4 maps, fused stride-16 map)."""
        if pixels.shape[1] != self.config.input_channels:
            raise ValueError(
                f"model expects {self.config.input_channels} evidence channels "
                f"(model.evidence), got {pixels.shape[1]}"
            )
        maps = self.encoder(pixels)
        return maps, self.msam(maps)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> fused stride-16 map (B, D_llm, S/16, S/16)."""
        return self.encode_maps(pixels)[1]

    def decode_mask(
        self,
        maps: list[torch.Tensor],
        fused: torch.Tensor,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        evidence: torch.Tensor,
        targets: Sequence[str],
        prior: torch.Tensor,
        prior_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, S, S) mask logits: the prior plus SAM's and the spectral head's corrections.

        ``hidden``/``mask``: the response's hidden states and which are real tokens (TCP
        input); ``prior`` (B, S, S) the target's prior logits; ``prior_present`` (B,)
        whether each sample's prior comes from its index (else no dense prompt)."""
        if len(targets) != hidden.shape[0]:
            raise ValueError(
                f"pass one target per tile (one of {list(self.target_tokens.targets)})"
            )
        prompts = self.tcp(hidden, mask)
        prompts = torch.cat([prompts, self.target_tokens(targets).to(prompts.dtype)], 1)
        detail = self.detail(maps) if self.detail is not None else None
        size = evidence.shape[-2:]
        embedding = self.msam.decoder_embedding(fused)
        grid = (4 * embedding.shape[-2], 4 * embedding.shape[-1])
        dense = F.adaptive_avg_pool2d(prior[:, None].to(embedding.dtype), grid)
        sam = self.decoder(embedding, prompts, detail, dense, prior_present)
        sam = F.interpolate(sam, size=size, mode="bilinear", align_corners=False)[:, 0]
        spectral = self.spectral(evidence, targets)
        return prior.to(sam.dtype) + self.mask_gate.to(sam.dtype) * sam + spectral.to(sam.dtype)

    def _teacher_forced(
        self, fused: torch.Tensor, instructions: list[str], responses: list[str]
    ) -> tuple[PackedPrompt, torch.Tensor]:
        """Prompt and given responses through the LM in one pass: the packed prompt
        (labels, response mask) and the final-layer hidden states."""
        prompt = self.llm.pack(
            visual_tokens(fused, self.config.visual_token_budget),
            instructions,
            self.config.system_prompt,
            responses,
        )
        hidden, _ = self.llm.hidden_states(
            prompt.embeds, prompt.attention_mask, prompt.position_ids
        )
        return prompt, hidden

    # -- training -----------------------------------------------------------------------
    def forward(
        self,
        pixels: torch.Tensor,
        instructions: list[str],
        responses: list[str],
        masks: torch.Tensor | None = None,
        mask_valid: torch.Tensor | None = None,
        targets: Sequence[str] | None = None,
        prior: torch.Tensor | None = None,
        prior_present: torch.Tensor | None = None,
        text_grad: bool = True,
        bce_weight: torch.Tensor | None = None,
    ) -> SpexOutput:
        """Teacher-forced pass over evidence ``pixels`` (B, C, S, S). ``masks`` (B, S, S)
        in {0, 1}; ``mask_valid`` (B, S, S) bool excludes unlabelled pixels from BCE and
        Dice. Without ``masks`` only the text loss is computed (stage 1). ``targets``:
        the target each instruction names; ``prior``: its prior logits (B, S, S).
        ``text_grad=False`` runs the LM without gradients (the text loss is then only
        reported), which stage 2 uses to save the LM's backward pass. ``bce_weight``
        (B, S, S): per-pixel BCE weights (default: ``mask_valid``), e.g. class-balanced
        ones (model.training.data.balanced_weight)."""
        cfg = self.config
        b = pixels.shape[0]
        targets = list(targets) if targets is not None else []
        maps, fused = self.encode_maps(pixels)
        with torch.set_grad_enabled(text_grad and torch.is_grad_enabled()):
            prompt, hidden = self._teacher_forced(fused, instructions, responses)
            assert prompt.labels is not None and prompt.response_mask is not None
            text = self.llm.text_loss(hidden, prompt.labels)
        # A text loss without gradients only reports; it must not scale the mask losses.
        loss = cfg.loss_text * text if text_grad else torch.zeros_like(text)
        if masks is None:
            return SpexOutput(loss, text, None, None, pixels.new_zeros((b, *pixels.shape[-2:])))
        if prior is None:
            raise ValueError("mask training needs the target's prior logits (model.evidence)")
        logits = self.decode_mask(
            maps, fused, hidden, prompt.response_mask, pixels, targets, prior, prior_present
        )
        weight = mask_valid.float() if mask_valid is not None else torch.ones_like(logits)
        wb = bce_weight.float() if bce_weight is not None else weight
        target = masks.float()
        bce = (
            F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none") * wb
        ).sum() / wb.sum().clamp(min=1e-6)
        dice = dice_loss(logits.float(), target, weight)
        loss = loss + cfg.loss_bce * bce + cfg.loss_dice * dice
        return SpexOutput(loss, text, bce, dice, logits)

    # -- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def infer(
        self,
        pixels: torch.Tensor,
        instructions: list[str],
        settings: GenerationSettings | None = None,
        timings: dict[str, float] | None = None,
        targets: Sequence[str] | None = None,
        prior: torch.Tensor | None = None,
        prior_present: torch.Tensor | None = None,
        *,
        decode_text: bool = True,
        bad_words: list[list[list[int]]] | None = None,
    ) -> SpexPrediction:
        """Generate the descriptions, then decode one mask per tile from them. With
        ``decode_text`` False the tokens are generated all the same (the mask is decoded
        from their hidden states, so it is identical) but not turned into text.
        ``bad_words``: per tile, token sequences never to complete (see
        :meth:`model.llm.LanguageModel.generate`)."""
        cfg = self.config
        if targets is None or prior is None:
            raise ValueError("SPEX inference needs each tile's target and prior logits")
        settings = settings or GenerationSettings.for_model(cfg)
        with stage_timer(timings, "encoder", pixels):
            maps, fused = self.encode_maps(pixels)
            prompt = self.llm.pack(
                visual_tokens(fused, cfg.visual_token_budget), instructions, cfg.system_prompt
            )
        gen = self.llm.generate(
            prompt, settings, timings, decode_text=decode_text, bad_words=bad_words
        )
        with stage_timer(timings, "tcp_decoder", pixels):
            logits = self.decode_mask(
                maps, fused, gen.hidden, gen.mask, pixels, list(targets), prior, prior_present
            )
        return SpexPrediction(logits, gen.texts, gen.tokens)

    @torch.no_grad()
    def infer_mask(
        self,
        pixels: torch.Tensor,
        instructions: list[str],
        responses: list[str],
        targets: Sequence[str],
        prior: torch.Tensor,
        prior_present: torch.Tensor | None = None,
        timings: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """(B, S, S) mask logits from a forced response: one prefill pass over prompt and
        ``responses`` (the teacher-forced pass of training), no decoding loop. The
        extractor forces the writer's description of the APG's coarse mask
        (:mod:`model.responses`), so the mask never depends on generated text."""
        with stage_timer(timings, "encoder", pixels):
            maps, fused = self.encode_maps(pixels)
        with stage_timer(timings, "llm_prefill", pixels):
            prompt, hidden = self._teacher_forced(fused, instructions, responses)
        assert prompt.response_mask is not None
        with stage_timer(timings, "tcp_decoder", pixels):
            return self.decode_mask(
                maps,
                fused,
                hidden,
                prompt.response_mask,
                pixels,
                list(targets),
                prior,
                prior_present,
            )

    @torch.no_grad()
    def describe(
        self,
        pixels: torch.Tensor,
        instructions: list[str],
        settings: GenerationSettings | None = None,
        timings: dict[str, float] | None = None,
        bad_words: list[list[list[int]]] | None = None,
    ) -> list[str]:
        """Generate one description per image (no mask): the text pass of the extractor,
        whose instructions carry the final mask's regions."""
        cfg = self.config
        settings = settings or GenerationSettings.for_model(cfg)
        with stage_timer(timings, "encoder", pixels):
            _, fused = self.encode_maps(pixels)
            prompt = self.llm.pack(
                visual_tokens(fused, cfg.visual_token_budget), instructions, cfg.system_prompt
            )
        return self.llm.generate(prompt, settings, timings, bad_words=bad_words).texts


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Soft Dice per tile, averaged (smooth 1 so empty tiles with empty predictions
    score near zero loss)."""
    p = torch.sigmoid(logits) * weight
    t = target * weight
    inter = (p * t).flatten(1).sum(-1)
    denom = p.flatten(1).sum(-1) + t.flatten(1).sum(-1)
    return (1.0 - (2.0 * inter + 1.0) / (denom + 1.0)).mean()


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts per part (for reports and the benchmark)."""
    assert isinstance(model, SpexModel)
    parts = {
        "encoder": model.encoder,
        "msam": model.msam,
        "llm": model.llm,
        "tcp": model.tcp,
        "decoder": model.decoder,
        "detail": model.detail or nn.Identity(),
        "target_tokens": model.target_tokens,
        "spectral": model.spectral,
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    counts["lora"] = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
