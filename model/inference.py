"""SPEX as a pipeline extractor: tiles -> APG instruction -> description + mask.

Per batch: the checkpoint's bands are picked (and reordered) from the tile's bands, NaN
and invalid pixels are zero-filled, each tile is resized to the model's input size with
aspect-preserving padding, the APG builds one instruction per tile from the full tile,
the model generates the descriptions (KV cache, token budget, greedy by default) and
decodes one mask per tile from their hidden states, and the mask logits are cropped,
resized back to the tile and squashed to probabilities. The APG runs per tile (its own
Otsu threshold), as in the paper's training data, so ``fit_scene`` has nothing to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import WEIGHTS, check_bands, load_checkpoint, sha256_file, sha256_state
from model.llm import GenerationSettings
from model.spex import SpexModel
from model.timing import stage_timer
from pipeline.extractor import TileBatch, TileResult

# (tile pixels (C, H, W) with NaN at nodata, band codes, target, valid (H, W)) -> text
InstructionFn = Callable[[np.ndarray, tuple[str, ...], str, np.ndarray], str]

VERSION = "1"


def apg_instruction(
    pixels: np.ndarray, bands: tuple[str, ...], target: str, valid: np.ndarray
) -> str:
    """The paper's instruction from the Attribute Prompt Generator (imported lazily so
    this module loads without it)."""
    from pipeline.apg import run_apg

    return run_apg(pixels, bands, target, valid=valid).instruction


def pick_device(device: str | torch.device | None) -> torch.device:
    """CUDA when available (and not overridden), CPU otherwise."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); nothing on CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def letterbox(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize (B, C, H, W) so the longer side is ``size``, pad bottom/right with zeros;
    returns the padded batch and the (h, w) of the resized content."""
    _, _, h, w = x.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(
            x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1
        )
    return F.pad(x, (0, size - nw, 0, size - nh)), (nh, nw)


def unletterbox(
    logits: torch.Tensor, content: tuple[int, int], out: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`letterbox` for (B, S, S) logits -> (B, H, W)."""
    crop = logits[:, None, : content[0], : content[1]]
    if crop.shape[-2:] != out:
        crop = F.interpolate(crop, size=out, mode="bilinear", align_corners=False)
    return crop[:, 0]


class SpexExtractor:
    """The SPEX model behind :class:`pipeline.extractor.Extractor`."""

    name = "spex"

    def __init__(
        self,
        model: SpexModel,
        *,
        device: str | torch.device | None = None,
        settings: GenerationSettings | None = None,
        batch_size: int = 8,
        weights_sha256: str | None = None,
        instruction_fn: InstructionFn = apg_instruction,
        use_autocast: bool = True,
    ) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.settings = settings or GenerationSettings(max_new_tokens=self.config.max_new_tokens)
        self.batch_size = batch_size
        self.instruction_fn = instruction_fn
        self.use_autocast = use_autocast
        self._sha256 = weights_sha256

    @classmethod
    def from_checkpoint(
        cls, folder: str | Path, device: str | torch.device | None = None, **kwargs: Any
    ) -> SpexExtractor:
        """Load a checkpoint folder (see :mod:`model.checkpoint`)."""
        dev = pick_device(device)
        model = load_checkpoint(folder, dev)
        return cls(model, device=dev, weights_sha256=sha256_file(Path(folder) / WEIGHTS), **kwargs)

    # -- Extractor protocol -------------------------------------------------------------
    def required_bands(self, target: str) -> tuple[str, ...]:
        """The checkpoint's input bands (the APG may use further bands when present)."""
        return tuple(self.config.bands)

    def fit_scene(self, scene: Any, target: str) -> None:
        """Nothing scene-level: the APG thresholds each tile, as in training."""
        return None

    def predict(self, batch: TileBatch, timings: dict[str, float] | None = None) -> TileResult:
        """Probabilities and descriptions; ``timings`` (optional) accumulates seconds per
        stage ('apg', 'encoder', 'llm_prefill', 'llm_generate', 'tcp_decoder')."""
        check_bands(tuple(self.config.bands), tuple(batch.bands))
        b, _, h, w = batch.pixels.shape
        with stage_timer(timings, "apg"):
            instructions = [
                self.instruction_fn(
                    batch.pixels[i], tuple(batch.bands), batch.target, batch.valid[i]
                )
                for i in range(b)
            ]
        idx = [batch.bands.index(code) for code in self.config.bands]
        pixels = batch.pixels[:, idx].astype(np.float32, copy=False)
        ok = batch.valid[:, None] & np.isfinite(pixels)
        pixels = np.where(ok, pixels, 0.0).astype(np.float32)
        probs = np.zeros((b, h, w), dtype=np.float32)
        texts: list[str] = []
        for start in range(0, b, self.batch_size):
            stop = min(b, start + self.batch_size)
            x = torch.from_numpy(pixels[start:stop]).to(self.device)
            p, t = self._run(x, instructions[start:stop], (h, w), timings)
            probs[start:stop] = p
            texts.extend(t)
        probs[~batch.valid] = 0.0
        return TileResult(probability=probs, texts=tuple(texts))

    def _run(
        self,
        x: torch.Tensor,
        instructions: list[str],
        out: tuple[int, int],
        timings: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        padded, content = letterbox(x, self.config.input_size)
        with autocast_for(self.device, self.use_autocast):
            pred = self.model.infer(padded, instructions, self.settings, timings)
        logits = unletterbox(pred.mask_logits.float(), content, out)
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32), pred.texts

    def provenance(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = sha256_state(self.model)
        cfg = self.config
        return {
            "extractor": self.name,
            "version": VERSION,
            "config": cfg.name,
            "weights_sha256": self._sha256,
            "bands": list(cfg.bands),
            "input_size": cfg.input_size,
            "visual_token_budget": cfg.visual_token_budget,
            "tcp_tokens": cfg.tcp_tokens,
            "generation": asdict(self.settings),
            "apg": "per-tile Otsu (pipeline.apg)",
            "device": self.device.type,
        }
