"""Dataclass configurations of the SPEX model.

Sizes are configuration, not code: the same modules build a CPU-sized ``tiny`` model
(trained by this project on the data it has) and the ``paper`` model (Qwen2.5-1.5B, SAM
ViT-B decoder widths, a large hierarchical backbone). Every pretrained part has an
optional local path; nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pipeline.targets import target_names

#: Canonical bands (catalogs/bands.yaml) of the input evidence of a new model; training
#: recipes default to the same (model.training.config.TrainConfig).
DEFAULT_BANDS: tuple[str, ...] = ("B", "G", "R", "N", "S1", "S2")
#: Normalised-difference indices fed to the model as evidence (catalogs/indices.yaml).
DEFAULT_INDICES: tuple[str, ...] = ("NDVI", "NDWI", "MNDWI", "NDBI")

SYSTEM_PROMPT = (
    "You are a remote sensing assistant. You describe land-cover regions in "
    "multispectral satellite images."
)


@dataclass(frozen=True)
class EncoderConfig:
    """Hierarchical ConvNeXt-style backbone (4 stages, strides 4/8/16/32).

    pretrained_path: a folder written by ``<Backbone>.save_pretrained`` (any
    ``transformers`` backbone with 4 stages); its stem is adapted to the band count.
    """

    hidden_sizes: tuple[int, int, int, int] = (16, 32, 64, 128)
    depths: tuple[int, int, int, int] = (1, 1, 1, 1)
    drop_path_rate: float = 0.0
    pretrained_path: str | None = None
    # Filled when a pretrained backbone was loaded: its full transformers config, so a
    # saved SPEX checkpoint rebuilds the same architecture (ConvNeXt, Swin, ...).
    hf_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class LLMConfig:
    """Qwen2-family causal LM. ``pretrained_path``: a local Qwen2/Qwen2.5 folder (its
    tokenizer is used too); otherwise a randomly initialised model of these sizes with
    the project's own byte-level BPE tokenizer of ``vocab_size`` entries."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 2048
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    pretrained_path: str | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    # Filled when a local Qwen folder was loaded (its full Qwen2Config), see EncoderConfig.
    hf_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class DecoderConfig:
    """SAM mask decoder widths. ``pretrained_path``: a SAM ``.pth`` checkpoint whose
    decoder keys start with ``mask_decoder.`` (ViT-B/L/H all use width 256)."""

    transformer_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 256
    iou_head_hidden_dim: int = 64
    pretrained_path: str | None = None
    # Add the encoder's stride-4/8 maps to the upscaled mask features (model/detail.py).
    # Off by default so that checkpoints written before it existed load unchanged.
    detail_features: bool = False


@dataclass(frozen=True)
class InputConfig:
    """How a tile becomes the model's input evidence (model/evidence.py).

    Every constant is physical or a priori, never fitted to the training scenes, so one
    model serves every sensor: reflectance is shifted and scaled by fixed values, indices
    are unitless, and the spectral priors are in units of the scene's own index spread.
    ``required_bands``: a scene without one of these cannot be read at all; the other
    bands of ``SpexConfig.bands`` are zero-filled and flagged when absent.
    """

    indices: tuple[str, ...] = DEFAULT_INDICES
    required_bands: tuple[str, ...] = ("G", "R", "N")
    reflectance_centre: float = 0.15
    reflectance_scale: float = 0.15
    # Prior of a target = prior_logit_scale * clip(z, -prior_clip, prior_clip), z the
    # index's distance from the scene's Otsu threshold in spreads (target side > 0).
    prior_clip: float = 3.0
    prior_logit_scale: float = 2.0
    # The prior where the target's index cannot be computed (no SWIR for NDBI): "not the
    # target" with little confidence, so an untrained correction marks nothing.
    absent_prior_logit: float = -2.0
    # Windows of input_size px cut from a tile overlap by this much and are blended.
    window_overlap: int = 32


@dataclass(frozen=True)
class SpexConfig:
    """The whole model. ``bands`` are the canonical bands of the input evidence (missing
    ones zero-filled and flagged); ``prompt_targets`` the targets it extracts."""

    name: str = "tiny"
    bands: tuple[str, ...] = DEFAULT_BANDS
    input_size: int = 128
    visual_token_budget: int = 64
    tcp_tokens: int = 4
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    inputs: InputConfig = field(default_factory=InputConfig)
    # Width of the per-pixel spectral correction head (model/spectral_head.py).
    spectral_hidden: int = 32
    system_prompt: str = SYSTEM_PROMPT
    max_new_tokens: int = 32
    # Greedy decoding never completes an n-gram it already generated (0: off, as in
    # checkpoints written before it existed), nor names another target than the one
    # asked for; see model.llm.GenerationSettings.
    no_repeat_ngram_size: int = 0
    only_requested_target: bool = False
    # The targets the model extracts: one learned SAM prompt token each
    # (model/target_token.py), one spectral prior channel each (model/evidence.py). A new
    # model takes every target of catalogs/targets.yaml; a checkpoint keeps its own.
    prompt_targets: tuple[str, ...] = field(default_factory=lambda: tuple(target_names()))
    loss_text: float = 1.0
    loss_bce: float = 2.0
    loss_dice: float = 1.0

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def input_channels(self) -> int:
        """Evidence channels: bands, band-present flags, indices, one prior per target."""
        return 2 * len(self.bands) + len(self.inputs.indices) + len(self.prompt_targets)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpexConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, so a newer checkpoint
        format fails loudly instead of silently dropping a setting."""
        sub = {
            "encoder": EncoderConfig,
            "llm": LLMConfig,
            "decoder": DecoderConfig,
            "inputs": InputConfig,
        }
        kwargs: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SPEX config keys: {sorted(unknown)}")
        if "inputs" not in data:
            raise ValueError(
                "checkpoint predates evidence inputs (spectral priors, native resolution); "
                "retrain it with 'spex train'"
            )
        for key, value in data.items():
            if key in sub:
                kwargs[key] = sub[key](**_tuples(value))
            elif isinstance(value, list):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def without_pretrained_paths(self) -> SpexConfig:
        """The same architecture with no external files: a saved checkpoint carries all
        weights itself, so rebuilding it must not need the original folders."""
        return replace(
            self,
            encoder=replace(self.encoder, pretrained_path=None),
            llm=replace(self.llm, pretrained_path=None),
            decoder=replace(self.decoder, pretrained_path=None),
        )


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def tiny(bands: tuple[str, ...] = DEFAULT_BANDS, **overrides: Any) -> SpexConfig:
    """CPU default: a small ConvNeXt (widths 16-128), a ~1.5M-parameter Qwen2, a SAM
    decoder of width 64 with the fine-detail path and target tokens, 128 px windows at
    native resolution, greedy decoding that never repeats an 8-token n-gram nor names
    another target. Trains and runs on 2 cores."""
    cfg = SpexConfig(
        name="tiny",
        bands=tuple(bands),
        decoder=DecoderConfig(detail_features=True),
        no_repeat_ngram_size=8,
        only_requested_target=True,
    )
    return replace(cfg, **overrides)


def paper(
    bands: tuple[str, ...] = DEFAULT_BANDS,
    *,
    qwen_path: str | None = None,
    sam_checkpoint: str | None = None,
    backbone_path: str | None = None,
    **overrides: Any,
) -> SpexConfig:
    """The paper's sizes: Qwen2.5-1.5B dims, SAM ViT-B decoder (width 256), a
    ConvNeXt-Large backbone, 512 px inputs, 1024 visual tokens (32 x 32 at stride 16)."""
    cfg = SpexConfig(
        name="paper",
        bands=tuple(bands),
        input_size=512,
        visual_token_budget=1024,
        encoder=EncoderConfig(
            hidden_sizes=(192, 384, 768, 1536),
            depths=(3, 3, 27, 3),
            drop_path_rate=0.1,
            pretrained_path=backbone_path,
        ),
        llm=LLMConfig(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            pretrained_path=qwen_path,
        ),
        decoder=DecoderConfig(
            transformer_dim=256,
            depth=2,
            num_heads=8,
            mlp_dim=2048,
            iou_head_hidden_dim=256,
            pretrained_path=sam_checkpoint,
        ),
        max_new_tokens=128,
    )
    return replace(cfg, **overrides)


CONFIGS = {"tiny": tiny, "paper": paper}
