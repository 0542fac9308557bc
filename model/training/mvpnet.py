"""Stage 0 and the MVPNet baseline: the SPEX encoder plus an UperNet-style head.

The paper pre-trains its visual encoder as a plain segmentation network before the
language stages; that network alone is the vision-only baseline ("MVPNet"). Here the
encoder is exactly SPEX's :class:`model.encoder.VisionEncoder` on the same evidence
input (:mod:`model.evidence`: reflectance, indices, spectral priors; same config, so its
weights move into SPEX unchanged), and the head is the UperNet recipe in small: a
pyramid-pooling module on the stride-32 map, a top-down feature pyramid with lateral
1x1 convolutions, every level upsampled to stride 4, concatenated and fused, then a
1x1 classifier over :func:`model.training.config.stage0_classes`. Unlike SPEX's mask, its
output is not a correction of the prior: it is the plain segmentation baseline. It reads
tiles in native-resolution windows like SPEX (:mod:`model.windows`).

Labels differ per data set (Gewata labels only vegetation), so the loss is the
partial-label cross-entropy ``-log sum_{k in allowed} p_k``: with one allowed class it
is the ordinary CE, with several it only says "one of these".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from model.checkpoint_files import check_bands, sha256_file
from model.config import SpexConfig
from model.encoder import VisionEncoder
from model.evidence import SceneStats, fit_scene_stats, stats_to_json, tile_inputs
from model.training.config import stage0_classes
from model.windows import blend, crop, plan_windows
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
    """Encoder + UperNet-style head; ``forward`` returns logits at input resolution.
    ``spex``: the SPEX architecture whose encoder and evidence this network shares."""

    def __init__(
        self, spex: SpexConfig, head_dim: int = 64, classes: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        classes = tuple(classes or stage0_classes())
        self.spex = spex.without_pretrained_paths()
        self.classes = classes
        self.head_dim = head_dim
        self.encoder = VisionEncoder(spex.encoder, spex.input_channels)
        self.head = UperHead(self.encoder.channels, head_dim, len(classes))

    @property
    def input_size(self) -> int:
        return self.spex.input_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encoder(pixels))
        return F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)

    def meta(self) -> dict[str, Any]:
        return {
            "format": "mvpnet/2",
            "classes": list(self.classes),
            "head_dim": self.head_dim,
            "spex": self.spex.to_dict(),
        }


def partial_label_ce(
    logits: torch.Tensor, allowed: torch.Tensor, balance: bool = False
) -> torch.Tensor:
    """Mean over pixels with any allowed class of ``-log sum_{allowed} softmax``.

    ``balance``: every pattern of allowed classes in the batch ("water", "not
    vegetation", ...) weighs the same, so how often a data set happens to label one
    class is not learnt as how likely that class is (see data.balanced_weight)."""
    logits = logits.float()
    used = allowed.any(dim=1)
    if not used.any():
        return logits.sum() * 0.0
    total = torch.logsumexp(logits, dim=1)
    inside = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=1)
    loss = (total - inside)[used]
    if not balance:
        return loss.mean()
    bits = 2 ** torch.arange(allowed.shape[1], device=allowed.device).reshape(1, -1, 1, 1)
    pattern = (allowed.long() * bits).sum(dim=1)[used]
    _, inverse, counts = torch.unique(pattern, return_inverse=True, return_counts=True)
    weight = 1.0 / (counts[inverse].float() * len(counts))
    return (loss * weight).sum()


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
    if meta.get("format") != "mvpnet/2":
        raise ValueError(f"{folder}: MVPNet weights of format {meta.get('format')!r}; retrain")
    model = MVPNet(SpexConfig.from_dict(meta["spex"]), meta["head_dim"], tuple(meta["classes"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval()


class MVPNetExtractor:
    """MVPNet behind :class:`pipeline.extractor.Extractor`: the target's softmax
    probability, on the evidence and native-resolution windows SPEX's extractor uses."""

    name = "mvpnet"

    def __init__(
        self, model: MVPNet, sha256: str | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sha256 = sha256
        self.stats: SceneStats | None = None

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu") -> MVPNetExtractor:
        return cls(load_mvpnet(folder, device), sha256_file(Path(folder) / WEIGHTS), device)

    def required_bands(self, target: str) -> tuple[str, ...]:
        return tuple(self.model.spex.inputs.required_bands)

    def fit_scene(self, scene: Any, target: str) -> None:
        self.stats = fit_scene_stats(scene, self.model.spex)

    @torch.no_grad()
    def predict(self, batch: TileBatch) -> TileResult:
        cfg = self.model.spex
        check_bands(tuple(cfg.inputs.required_bands), tuple(batch.bands))
        b, _, h, w = batch.pixels.shape
        size = cfg.input_size
        grid = plan_windows(h, w, size, cfg.inputs.window_overlap)
        k = self.model.classes.index(batch.target)
        out = np.zeros((b, h, w), dtype=np.float32)
        for i in range(b):
            raw = batch.pixels[i].astype(np.float32, copy=False)
            valid = batch.valid[i] & np.isfinite(raw).all(axis=0)
            ev, _, _ = tile_inputs(raw, batch.bands, valid, batch.target, self.stats, cfg)
            x = torch.from_numpy(np.stack([crop(ev, win, size, 0.0) for win in grid]))
            logits = self.model(x.to(self.device))
            prob = torch.softmax(logits.float(), dim=1)[:, k].cpu().numpy()
            out[i] = blend(grid, list(prob))
        out[~batch.valid] = 0.0
        return TileResult(probability=out, texts=(None,) * b)

    def provenance(self) -> dict[str, Any]:
        cfg = self.model.spex
        return {
            "extractor": self.name,
            "weights_sha256": self.sha256,
            "bands": list(cfg.bands),
            "input_size": cfg.input_size,
            "scene_index_stats": stats_to_json(self.stats) if self.stats is not None else None,
        }
