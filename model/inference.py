"""SPEX as a pipeline extractor: tiles -> APG instruction -> description + mask.

Per batch: the checkpoint's bands are picked (and reordered) from the tile's bands, NaN
and invalid pixels are zero-filled, each tile is resized to the model's input size with
aspect-preserving padding, the APG builds one instruction per tile from the full tile,
the model generates the descriptions (KV cache, token budget, greedy by default, with the
checkpoint's n-gram block) and decodes one mask per tile from their hidden states (the
tokens are generated even when no text is wanted, ``TileBatch.describe`` False, because
the mask comes from them; only their decoding into text is skipped), and the mask
logits are cropped, resized back to the tile and squashed to probabilities. The APG runs
per tile (its own Otsu threshold), as in the paper's training data, so ``fit_scene`` has
nothing to do.

Pickling: an extraction plan (and its extractor) is pickled when tile batches run as
Prefect tasks on Dask workers, and Prefect also pickles task inputs to hash them. An
extractor loaded with :meth:`SpexExtractor.from_checkpoint` therefore pickles to a few
hundred bytes (checkpoint folder, weights sha256, config and settings, never tensors)
and reloads its model lazily on first use, after checking that the weights still hash
to the recorded sha256; unpickled copies in one process share one loaded model (see
:func:`clear_model_cache`). An extractor built around an in-memory model refuses to be
pickled, with a message saying to save a checkpoint: shipping every tensor to every
task would be slow and memory-hungry at paper size, and a silent fallback would hide
that cost.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import (
    WEIGHTS,
    check_bands,
    load_checkpoint,
    read_training,
    sha256_file,
    sha256_state,
)
from model.llm import GenerationSettings
from model.spex import SpexModel
from model.timing import stage_timer
from pipeline.errors import SpexInputError
from pipeline.extractor import TileBatch, TileResult

# (tile pixels (C, H, W) with NaN at nodata, band codes, target, valid (H, W)) -> text
InstructionFn = Callable[[np.ndarray, tuple[str, ...], str, np.ndarray], str]

VERSION = "1"

# Models reloaded by unpickled extractors, keyed by (folder, weights sha256, device): a
# Dask worker deserialises the plan once per task, and each copy must not load its own.
_MODEL_CACHE: OrderedDict[tuple[str, str, str], SpexModel] = OrderedDict()
_MODEL_CACHE_SIZE = 2
_MODEL_CACHE_LOCK = threading.Lock()


def _shared_model(folder: Path, sha256: str, device: torch.device) -> SpexModel:
    """The checkpoint's model on ``device``, loaded (and sha256-checked) once per
    process; the lock also keeps concurrent tasks from loading it twice."""
    key = (str(folder.resolve()), sha256, str(device))
    with _MODEL_CACHE_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = load_checkpoint(folder, device, expected_sha256=sha256)
            _MODEL_CACHE[key] = model
            while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
                _MODEL_CACHE.popitem(last=False)
        _MODEL_CACHE.move_to_end(key)
        return model


def clear_model_cache() -> None:
    """Forget the models shared by unpickled extractors (tests; freeing memory)."""
    with _MODEL_CACHE_LOCK:
        _MODEL_CACHE.clear()


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
    """The SPEX model behind :class:`pipeline.extractor.Extractor` (picklable when
    loaded from a checkpoint; see the module docstring)."""

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
        checkpoint: str | Path | None = None,
    ) -> None:
        # The device as asked (None = best available), so an unpickled copy picks again
        # on the machine it lands on instead of insisting on the planner's GPU.
        self._device_request = None if device is None else str(device)
        self.device = pick_device(device)
        self._model: SpexModel | None = model.to(self.device).eval()
        self.config = model.config
        self.settings = settings or GenerationSettings.for_model(self.config)
        self.batch_size = batch_size
        self.instruction_fn = instruction_fn
        self.use_autocast = use_autocast
        self._sha256 = weights_sha256
        # Absolute, so a worker whose working directory differs still finds it.
        self._checkpoint = Path(checkpoint).resolve() if checkpoint is not None else None
        self._training = read_training(self._checkpoint) if self._checkpoint else None
        self._bad_words: dict[str, list[list[int]]] = {}  # per target, see _other_target_words
        if self._checkpoint is not None and weights_sha256 is None:
            raise ValueError("an extractor tied to a checkpoint needs its weights sha256")

    @classmethod
    def from_checkpoint(
        cls, folder: str | Path, device: str | torch.device | None = None, **kwargs: Any
    ) -> SpexExtractor:
        """Load a checkpoint folder (see :mod:`model.checkpoint`) eagerly, so a bad
        checkpoint fails when the job is planned, before any output is written."""
        folder = Path(folder)
        # Hashed before loading (load_checkpoint checks the folder itself), so the
        # recorded sha256 is never of newer bytes than the weights in memory.
        sha = sha256_file(folder / WEIGHTS) if (folder / WEIGHTS).is_file() else None
        model = load_checkpoint(folder, pick_device(device))
        return cls(model, device=device, weights_sha256=sha, checkpoint=folder, **kwargs)

    @property
    def model(self) -> SpexModel:
        """The model, reloaded from the checkpoint on first use after unpickling."""
        if self._model is None:
            assert self._checkpoint is not None and self._sha256 is not None
            self._model = _shared_model(self._checkpoint, self._sha256, self.device)
        return self._model

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint folder this extractor was loaded from (None: in-memory)."""
        return self._checkpoint

    def __getstate__(self) -> dict[str, Any]:
        if self._checkpoint is None:
            raise pickle.PicklingError(
                "a SpexExtractor built around an in-memory model cannot be pickled (it "
                "would ship every tensor to every task); save the model with "
                "model.checkpoint.save_checkpoint(model, folder) and use "
                "SpexExtractor.from_checkpoint(folder)"
            )
        state = dict(self.__dict__)
        state["_model"] = None
        state.pop("device")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.device = pick_device(self._device_request)

    # -- Extractor protocol -------------------------------------------------------------
    def required_bands(self, target: str) -> tuple[str, ...]:
        """The checkpoint's input bands (the APG may use further bands when present).
        Called when a job is planned, so a target the model has no prompt token for is
        refused before any output exists."""
        known = tuple(self.config.prompt_targets)
        if known and target not in known:
            raise SpexInputError(
                f"model {self.checkpoint or '(in memory)'} was trained for targets "
                f"{list(known)}, not {target!r}"
            )
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
            p, t = self._run(
                x, instructions[start:stop], batch.target, (h, w), timings, batch.describe
            )
            probs[start:stop] = p
            texts.extend(t)
        probs[~batch.valid] = 0.0
        if not batch.describe:
            return TileResult(probability=probs, texts=(None,) * b)
        return TileResult(probability=probs, texts=tuple(texts))

    def _run(
        self,
        x: torch.Tensor,
        instructions: list[str],
        target: str,
        out: tuple[int, int],
        timings: dict[str, float] | None = None,
        describe: bool = True,
    ) -> tuple[np.ndarray, list[str]]:
        padded, content = letterbox(x, self.config.input_size)
        bad = None
        if self.settings.only_requested_target:
            if target not in self._bad_words:
                self._bad_words[target] = self._other_target_words(target)
            bad = [self._bad_words[target]] * len(instructions)
        with autocast_for(self.device, self.use_autocast):
            pred = self.model.infer(
                padded,
                instructions,
                self.settings,
                timings,
                targets=[target] * len(instructions),
                decode_text=describe,
                bad_words=bad,
            )
        logits = unletterbox(pred.mask_logits.float(), content, out)
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32), pred.texts

    def _other_target_words(self, target: str) -> list[list[int]]:
        """Token sequences of the other targets' category words (as written at a
        sentence start or inside one, singular and plural), minus any that also begin
        the requested target's own words; categories come from catalogs/targets.yaml."""
        from pipeline.targets import load_target, load_targets

        tok = self.model.llm.tokenizer

        def variants(word: str) -> list[list[int]]:
            forms = {word, word.capitalize(), word + "s", word.capitalize() + "s"}
            forms |= {" " + f for f in forms}
            return [tok(f, add_special_tokens=False)["input_ids"] for f in sorted(forms)]

        own = variants(load_target(target).category)
        others = [
            seq
            for t in load_targets().values()
            if t.category != load_target(target).category
            for seq in variants(t.category)
        ]
        return [seq for seq in others if not any(o[: len(seq)] == seq for o in own)]

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
            **({"training": self._training} if self._training is not None else {}),
        }
