"""Stage 0 and the MVPNet baseline: the SPEX encoder plus an UperNet-style head.

The paper pre-trains its visual encoder as a plain segmentation network before the
language stages; that network alone is the vision-only baseline ("MVPNet"). Here the
encoder is exactly SPEX's :class:`model.encoder.VisionEncoder` (same config, so its
weights move into SPEX unchanged), and the head is the UperNet recipe in small: a
pyramid-pooling module on the stride-32 map, a top-down feature pyramid with lateral
1x1 convolutions, every level upsampled to stride 4, concatenated and fused, then a
1x1 classifier over :data:`model.training.config.CLASSES`.

Labels differ per data set (Gewata labels only vegetation), so the loss is the
partial-label cross-entropy ``-log sum_{k in allowed} p_k``: with one allowed class it
is the ordinary CE, with several it only says "one of these".
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from model.checkpoint import sha256_file
from model.config import EncoderConfig
from model.encoder import VisionEncoder
from model.inference import letterbox, unletterbox
from model.training.config import CLASSES
from pipeline.extractor import TileBatch, TileResult

WEIGHTS = "mvpnet.safetensors"
CONFIG = "mvpnet.json"


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.GroupNorm(8, cout), nn.ReLU()
    )


class UperHead(nn.Module):
    """PPM + FPN + fusion over the encoder's 4 maps -> class logits at stride 4."""

    def __init__(
        self,
        channels: tuple[int, ...],
        dim: int,
        n_classes: int,
        scales: tuple[int, ...] = (1, 2, 4),
    ) -> None:
        super().__init__()
        self.scales = scales
        self.ppm = nn.ModuleList(_conv(channels[-1], dim, 1) for _ in scales)
        self.ppm_out = _conv(channels[-1] + dim * len(scales), dim)
        self.lateral = nn.ModuleList(_conv(c, dim, 1) for c in channels[:-1])
        self.smooth = nn.ModuleList(_conv(dim, dim) for _ in channels[:-1])
        self.fuse = _conv(dim * len(channels), dim)
        self.classifier = nn.Conv2d(dim, n_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        pooled = [
            F.interpolate(
                conv(F.adaptive_avg_pool2d(top, s)),
                size=top.shape[-2:],
                mode="bilinear",
                align_corners=False,
            )
            for s, conv in zip(self.scales, self.ppm, strict=True)
        ]
        levels = [self.ppm_out(torch.cat([top, *pooled], dim=1))]
        for i in range(len(feats) - 2, -1, -1):  # top-down pathway
            lat = self.lateral[i](feats[i])
            up = F.interpolate(levels[0], size=lat.shape[-2:], mode="bilinear", align_corners=False)
            levels.insert(0, self.smooth[i](lat + up))
        size = levels[0].shape[-2:]
        fused = torch.cat(
            [levels[0]]
            + [
                F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                for x in levels[1:]
            ],
            dim=1,
        )
        return self.classifier(self.fuse(fused))


class MVPNet(nn.Module):
    """Encoder + UperNet-style head; ``forward`` returns logits at input resolution."""

    def __init__(
        self,
        encoder: EncoderConfig,
        bands: tuple[str, ...],
        input_size: int = 128,
        head_dim: int = 64,
        classes: tuple[str, ...] = CLASSES,
    ) -> None:
        super().__init__()
        self.bands = tuple(bands)
        self.classes = tuple(classes)
        self.input_size = input_size
        self.encoder_config = encoder
        self.head_dim = head_dim
        self.encoder = VisionEncoder(encoder, len(bands))
        self.head = UperHead(self.encoder.channels, head_dim, len(classes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encoder(pixels))
        return F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)

    def meta(self) -> dict[str, Any]:
        return {
            "format": "mvpnet/1",
            "bands": list(self.bands),
            "classes": list(self.classes),
            "input_size": self.input_size,
            "head_dim": self.head_dim,
            "encoder": asdict(self.encoder_config),
        }


def partial_label_ce(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean over pixels with any allowed class of ``-log sum_{allowed} softmax``."""
    logits = logits.float()
    used = allowed.any(dim=1)
    if not used.any():
        return logits.sum() * 0.0
    total = torch.logsumexp(logits, dim=1)
    inside = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=1)
    return (total - inside)[used].mean()


def save_mvpnet(model: MVPNet, folder: str | Path, training: dict[str, Any] | None = None) -> Path:
    """safetensors + JSON (no pickle), like SPEX checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(folder / WEIGHTS)
    meta = model.meta() | ({"training": training} if training else {})
    (folder / CONFIG).write_text(json.dumps(meta, indent=2))
    return folder / WEIGHTS


def load_mvpnet(folder: str | Path, device: str | torch.device = "cpu") -> MVPNet:
    folder = Path(folder)
    meta = json.loads((folder / CONFIG).read_text())
    enc = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["encoder"].items()}
    model = MVPNet(
        EncoderConfig(**enc),
        tuple(meta["bands"]),
        meta["input_size"],
        meta["head_dim"],
        tuple(meta["classes"]),
    )
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval()


class MVPNetExtractor:
    """MVPNet behind :class:`pipeline.extractor.Extractor`: the target's softmax
    probability, letterboxed exactly like SPEX's extractor."""

    name = "mvpnet"

    def __init__(
        self, model: MVPNet, sha256: str | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sha256 = sha256

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu") -> MVPNetExtractor:
        return cls(load_mvpnet(folder, device), sha256_file(Path(folder) / WEIGHTS), device)

    def required_bands(self, target: str) -> tuple[str, ...]:
        return self.model.bands

    def fit_scene(self, scene: Any, target: str) -> None:
        return None

    @torch.no_grad()
    def predict(self, batch: TileBatch) -> TileResult:
        idx = [batch.bands.index(code) for code in self.model.bands]
        px = batch.pixels[:, idx].astype(np.float32)
        px = np.where(batch.valid[:, None] & np.isfinite(px), px, 0.0).astype(np.float32)
        x, content = letterbox(torch.from_numpy(px).to(self.device), self.model.input_size)
        logits = self.model(x)
        k = self.model.classes.index(batch.target)
        prob = torch.softmax(logits.float(), dim=1)[:, k]
        prob = unletterbox(prob, content, tuple(batch.valid.shape[-2:]))
        out = prob.cpu().numpy().astype(np.float32)
        out[~batch.valid] = 0.0
        return TileResult(probability=out, texts=(None,) * out.shape[0])

    def provenance(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "weights_sha256": self.sha256,
            "bands": list(self.model.bands),
            "input_size": self.model.input_size,
        }
