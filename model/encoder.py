"""Hierarchical vision encoder: 4 feature maps at strides 4, 8, 16, 32, any band count.

The paper's InternImage-L needs custom CUDA operators and timm/torchvision do not work
beside the CPU torch here, so the backbone is a ``transformers`` ``*Backbone`` (ConvNeXt
by default), which runs on CPU and GPU and loads local pretrained weights. A pretrained
backbone usually has an RGB stem; :func:`adapt_stem` widens it to the scene's bands.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoBackbone, AutoConfig, ConvNextBackbone, ConvNextConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

from model.config import EncoderConfig

OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
STRIDES = (4, 8, 16, 32)


class VisionEncoder(nn.Module):
    """(B, C, H, W) -> 4 maps [(B, c_i, H/s_i, W/s_i) for s_i in 4, 8, 16, 32]."""

    def __init__(self, cfg: EncoderConfig, num_bands: int) -> None:
        super().__init__()
        # A transformers backbone: its config and stage widths are dynamic attributes.
        backbone: Any
        if cfg.pretrained_path:
            backbone = load_local_backbone(cfg.pretrained_path)
            adapt_stem(backbone, num_bands)
        elif cfg.hf_config is not None:
            # Rebuilding a checkpoint whose backbone came from a pretrained folder.
            d = dict(cfg.hf_config)
            config = AutoConfig.for_model(d.pop("model_type"), **d)
            config.num_channels = num_bands
            backbone = AutoBackbone.from_config(config)
        else:
            config = ConvNextConfig(
                num_channels=num_bands,
                hidden_sizes=list(cfg.hidden_sizes),
                depths=list(cfg.depths),
                drop_path_rate=cfg.drop_path_rate,
                out_features=OUT_FEATURES,  # type: ignore[call-arg]  # a **kwargs of v5 configs
            )
            backbone = ConvNextBackbone(config)
        self.backbone: Any = backbone
        self.num_bands = num_bands
        self.channels: tuple[int, ...] = tuple(backbone.num_features[-4:])

    def hf_config(self) -> dict:
        """The backbone's transformers config (stored in checkpoints of pretrained runs)."""
        return self.backbone.config.to_dict()

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(pixel_values=pixels).feature_maps)


def load_local_backbone(path: str) -> Any:
    """A saved ``transformers`` backbone folder, loaded offline with 4 output stages.

    ``AutoBackbone.from_pretrained`` first asks the Hub whether the name is a timm model,
    which fails offline (and timm is unusable here), so the concrete backbone class is
    looked up from the folder's config instead.
    """
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        cls: Any = MODEL_FOR_BACKBONE_MAPPING[type(config)]  # a backbone class
    except KeyError as exc:
        raise ValueError(f"{path}: '{config.model_type}' is not a transformers backbone") from exc
    return cls.from_pretrained(path, out_features=OUT_FEATURES, local_files_only=True)


def adapt_stem(backbone: Any, num_bands: int) -> None:
    """Make a pretrained backbone accept ``num_bands`` channels.

    The first convolution's kernel is replaced by the mean over its input channels,
    repeated per band and scaled by ``c_old / num_bands`` so the activation scale of a
    flat input is kept (a common way to reuse RGB weights for multispectral inputs).
    """
    conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == num_bands:
        return
    old = conv.weight.data
    new_w = old.mean(dim=1, keepdim=True).repeat(1, num_bands, 1, 1) * (old.shape[1] / num_bands)
    conv.in_channels = num_bands
    conv.weight = nn.Parameter(new_w.contiguous())
    backbone.config.num_channels = num_bands
    # transformers' embedding modules check the channel count they were built with.
    for module in backbone.modules():
        _set_num_channels(module, num_bands)


def _set_num_channels(module: Any, num_bands: int) -> None:
    """``module.num_channels = num_bands`` where a transformers module keeps that count."""
    if isinstance(getattr(module, "num_channels", None), int):
        module.num_channels = num_bands
