"""SPEX as a pipeline extractor: tiles -> evidence + APG instruction -> description + mask.

``fit_scene`` measures the scene-level statistics of the spectral indices (Otsu
threshold and spread from the pipeline's decimated read, :mod:`model.evidence`), as the
index extractor does, so every tile's prior is the scene's index + Otsu mask. Per batch:
each tile becomes its evidence stack (reflectance of the model's canonical bands, missing
ones zero-filled and flagged; indices; one prior per target) and its target's prior
logits, and is cut into windows of the model's input size at native resolution
(:mod:`model.windows`); the APG builds one instruction per window from the window's own
pixels (per-window Otsu, as in the training data); the model generates the descriptions
(KV cache, token budget, greedy by default, with the checkpoint's n-gram block; the tokens
are generated even when no text is wanted, ``TileBatch.describe`` False, because the
mask comes from their hidden states; only their decoding into text is skipped) and
decodes each window's mask as a correction of its prior; window probabilities are
blended back into the tile.

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

from model.checkpoint import (
    WEIGHTS,
    check_bands,
    load_checkpoint,
    read_training,
    sha256_file,
    sha256_state,
)
from model.evidence import SceneStats, fit_scene_stats, stats_to_json, tile_inputs
from model.llm import GenerationSettings
from model.responses import forced_response
from model.spex import SpexModel
from model.timing import stage_timer
from model.windows import blend, crop, plan_windows
from pipeline.errors import SpexInputError
from pipeline.extractor import TileBatch, TileResult
from pipeline.mask_codes import MASK_NODATA

# (window pixels (C, H, W) with NaN at nodata, band codes, target, valid (H, W)) ->
# (instruction, coarse mask in pipeline.mask_codes, or None where the index cannot run)
PromptFn = Callable[[np.ndarray, tuple[str, ...], str, np.ndarray], tuple[str, np.ndarray | None]]

VERSION = "3"  # 3: the mask from a forced response, text from the final mask

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


def apg_prompt(
    pixels: np.ndarray, bands: tuple[str, ...], target: str, valid: np.ndarray
) -> tuple[str, np.ndarray | None]:
    """The paper's instruction and coarse mask from the Attribute Prompt Generator; a
    window whose index needs a band the scene lacks gets the instruction without regions
    and no coarse mask (imported lazily so this module loads without the APG)."""
    from pipeline.apg import build_instruction, run_apg
    from pipeline.targets import load_target

    try:
        apg = run_apg(pixels, bands, target, valid=valid)
    except SpexInputError:
        return build_instruction(load_target(target).category, "[]"), None
    return apg.instruction, apg.mask


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
        prompt_fn: PromptFn = apg_prompt,
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
        self.prompt_fn = prompt_fn
        self.use_autocast = use_autocast
        self.stats: SceneStats | None = None
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
        """The bands without which the model cannot read a scene (its other canonical
        bands are zero-filled and flagged when absent; the APG uses any band present).
        Called when a job is planned, so a target the model was not trained for is
        refused before any output exists."""
        known = tuple(self.config.prompt_targets)
        if target not in known:
            raise SpexInputError(
                f"model {self.checkpoint or '(in memory)'} was trained for targets "
                f"{list(known)}, not {target!r}"
            )
        return tuple(self.config.inputs.required_bands)

    def fit_scene(self, scene: Any, target: str) -> None:
        """Scene-level index statistics (the priors' thresholds), from a decimated read."""
        self.stats = fit_scene_stats(scene, self.config)

    def predict(self, batch: TileBatch, timings: dict[str, float] | None = None) -> TileResult:
        """Probabilities and descriptions; ``timings`` (optional) accumulates seconds per
        stage ('apg', 'encoder', 'llm_prefill', 'llm_generate', 'tcp_decoder').

        Two passes. The mask: per window, the APG's instruction and the writer's
        description of its coarse mask forced as the response (one prefill, no decoding
        loop: :meth:`SpexModel.infer_mask`), the windows blended into the tile. The text,
        only when ``batch.describe``: per tile, the instruction filled with the regions
        of the tile's *final* mask, and the model's description generated from the whole
        tile (resized to the input size), so the text speaks of the mask it is checked
        against. The mask is the same with or without descriptions."""
        cfg = self.config
        check_bands(tuple(cfg.inputs.required_bands), tuple(batch.bands))
        bands = tuple(batch.bands)
        b, _, h, w = batch.pixels.shape
        size = cfg.input_size
        grid = plan_windows(h, w, size, cfg.inputs.window_overlap)
        tokenizer = self.model.llm.tokenizer
        jobs: list[tuple[np.ndarray, np.ndarray, bool, str, str]] = []
        tile_evidence: list[np.ndarray] = []
        valids: list[np.ndarray] = []
        for i in range(b):
            raw = batch.pixels[i].astype(np.float32, copy=False)
            valid = batch.valid[i] & np.isfinite(raw).all(axis=0)
            ev, prior, present = tile_inputs(raw, bands, valid, batch.target, self.stats, cfg)
            if batch.describe:  # the text pass reads them; without it, hold nothing more
                tile_evidence.append(ev)
                valids.append(valid)
            for window in grid:
                win_raw = crop(raw, window, size, np.nan)
                win_valid = crop(valid, window, size, False)
                with stage_timer(timings, "apg"):
                    instruction, coarse = self.prompt_fn(win_raw, bands, batch.target, win_valid)
                    win_prior = crop(prior, window, size, cfg.inputs.absent_prior_logit)
                    if coarse is None:  # no index for this window: the prior's mask stands in
                        coarse = np.where(win_valid, win_prior > 0, MASK_NODATA).astype(np.uint8)
                    response = forced_response(
                        coarse, win_raw, bands, batch.target, tokenizer, cfg.max_new_tokens
                    )
                jobs.append(
                    (
                        crop(ev, window, size, 0.0),
                        win_prior,
                        present,
                        instruction,
                        response,
                    )
                )
        window_probs: list[np.ndarray] = []
        for start in range(0, len(jobs), self.batch_size):
            window_probs.extend(
                self._mask(jobs[start : start + self.batch_size], batch.target, timings)
            )
        n = len(grid)
        probs = np.zeros((b, h, w), dtype=np.float32)
        for i in range(b):
            probs[i] = blend(grid, window_probs[i * n : (i + 1) * n])
        probs[~batch.valid] = 0.0
        if not batch.describe:
            return TileResult(probability=probs, texts=(None,) * b)
        texts = self._describe(tile_evidence, probs, valids, batch.target, timings)
        return TileResult(probability=probs, texts=tuple(texts))

    def _mask(
        self,
        chunk: list[tuple[np.ndarray, np.ndarray, bool, str, str]],
        target: str,
        timings: dict[str, float] | None = None,
    ) -> list[np.ndarray]:
        x = torch.from_numpy(np.stack([c[0] for c in chunk])).to(self.device)
        prior = torch.from_numpy(np.stack([c[1] for c in chunk])).to(self.device)
        present = torch.tensor([c[2] for c in chunk], device=self.device)
        with autocast_for(self.device, self.use_autocast):
            logits = self.model.infer_mask(
                x,
                [c[3] for c in chunk],
                [c[4] for c in chunk],
                [target] * len(chunk),
                prior,
                present,
                timings,
            )
        return list(torch.sigmoid(logits.float()).cpu().numpy().astype(np.float32))

    def _describe(
        self,
        evidence: list[np.ndarray],
        probs: np.ndarray,
        valids: list[np.ndarray],
        target: str,
        timings: dict[str, float] | None = None,
    ) -> list[str]:
        """One description per tile from its final mask's regions (see :meth:`predict`)."""
        from pipeline.apg import build_instruction, extract_regions
        from pipeline.targets import load_target

        category = load_target(target).category
        size = self.config.input_size
        instructions = []
        for p, valid in zip(probs, valids, strict=True):
            final = np.where(valid, (p >= 0.5).astype(np.uint8), MASK_NODATA)
            with stage_timer(timings, "apg"):
                regions, _ = extract_regions(final)
            instructions.append(build_instruction(category, regions))
        bad = None
        if self.settings.only_requested_target:
            if target not in self._bad_words:
                self._bad_words[target] = self._other_target_words(target)
            bad = [self._bad_words[target]] * len(evidence)
        texts: list[str] = []
        for start in range(0, len(evidence), self.batch_size):
            stop = min(len(evidence), start + self.batch_size)
            x = torch.stack(
                [
                    torch.nn.functional.interpolate(
                        torch.from_numpy(ev)[None], size=(size, size), mode="area"
                    )[0]
                    for ev in evidence[start:stop]
                ]
            ).to(self.device)
            with autocast_for(self.device, self.use_autocast):
                texts += self.model.describe(
                    x,
                    instructions[start:stop],
                    self.settings,
                    timings,
                    None if bad is None else bad[start:stop],
                )
        return texts

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
            "windows": f"{cfg.input_size} px at native resolution, "
            f"{cfg.inputs.window_overlap} px overlap",
            "scene_index_stats": stats_to_json(self.stats) if self.stats is not None else None,
            "visual_token_budget": cfg.visual_token_budget,
            "tcp_tokens": cfg.tcp_tokens,
            "generation": asdict(self.settings),
            "apg": "per-window Otsu (pipeline.apg); priors: scene-level Otsu (model.evidence)",
            "device": self.device.type,
            **({"training": self._training} if self._training is not None else {}),
        }
