"""SPEX weights I/O: one folder = ``model.safetensors`` + ``config.json`` + ``tokenizer/``.

Why a folder of plain formats: safetensors cannot execute code on load (unlike pickle),
JSON keeps the architecture readable and diffable, and the tokenizer must travel with
the weights (its ids index the embedding table). Loading rebuilds the architecture from
the JSON alone (no pretrained folders needed) and checks every tensor name and shape
before copying, so a wrong checkpoint fails with a message naming the tensor, and a band
mismatch is reported in band terms. Pickled ``.pth`` files (SAM) are only ever read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.checkpoint_files import (
    CONFIG,
    FORMAT_VERSION,
    TOKENIZER,
    TRAINING,
    WEIGHTS,
    CheckpointError,
    check_bands,
    check_state_dict,
    read_config,
    read_training,
    sha256_file,
)
from model.spex import SpexModel
from model.tokenizer import load_tokenizer

__all__ = [
    "CONFIG",
    "TOKENIZER",
    "TRAINING",
    "WEIGHTS",
    "CheckpointError",
    "check_bands",
    "check_state_dict",
    "load_checkpoint",
    "load_weights",
    "read_config",
    "read_training",
    "save_checkpoint",
    "sha256_file",
    "sha256_state",
]


def _dedup(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors sharing memory (tied embeddings): keep the first name
    and record the others as aliases."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t.detach().cpu().contiguous()
    return unique, aliases


def save_checkpoint(
    model: SpexModel, folder: str | Path, training: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` (a :class:`model.spex.SpexModel`) to ``folder``; returns the
    weights path. Pretrained paths are dropped from the stored config: the folder is
    self-contained. ``training`` (JSON-ready) is stored as ``training.json`` and shows
    up in the extractor's provenance, so outputs say what kind of weights made them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unique, aliases = _dedup(dict(model.state_dict()))
    weights = folder / WEIGHTS
    tmp = weights.with_suffix(".tmp")
    save_file(unique, str(tmp), metadata={"aliases": json.dumps(aliases), "format": "spex"})
    tmp.replace(weights)
    cfg = model.config.without_pretrained_paths().to_dict()
    (folder / CONFIG).write_text(
        json.dumps({"format_version": FORMAT_VERSION, "spex": cfg}, indent=2)
    )
    model.llm.tokenizer.save_pretrained(str(folder / TOKENIZER))
    record = folder / TRAINING
    if training is not None:
        record.write_text(json.dumps(dict(training), indent=2, sort_keys=True))
    else:
        record.unlink(missing_ok=True)  # a stale record would describe other weights
    return weights


def load_checkpoint(
    folder: str | Path,
    device: str | torch.device = "cpu",
    *,
    expected_sha256: str | None = None,
):
    """Rebuild the model from ``config.json`` and ``tokenizer/``, check and load the
    weights; returns the model in eval mode on ``device``.

    ``expected_sha256``: the weights file must still hash to this (a worker reloading a
    checkpoint named in a job plan must not silently pick up retrained weights). The
    hash is taken just before loading, not over the very bytes loaded: a file replaced
    within those milliseconds is not caught, which is acceptable for this purpose and
    avoids holding the file twice in memory at paper size.
    """
    folder = Path(folder)
    cfg = read_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS}")
    if expected_sha256 is not None:
        got = sha256_file(weights)
        if got != expected_sha256:
            raise CheckpointError(
                f"{weights}: weights changed since the extractor was created "
                f"(sha256 {got[:12]}..., expected {expected_sha256[:12]}...); "
                "re-plan the job with the new weights"
            )
    tokenizer = load_tokenizer(str(folder / TOKENIZER)) if (folder / TOKENIZER).is_dir() else None
    model = SpexModel(cfg, tokenizer=tokenizer)
    load_weights(model, weights)
    return model.to(device).eval()


def load_weights(model, weights: str | Path) -> None:
    """Load a SPEX safetensors file into ``model`` after checking names and shapes."""
    try:
        state = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from exc
    aliases: dict[str, str] = json.loads(meta.get("aliases", "{}"))
    for alias, name in aliases.items():
        if name in state:
            state[alias] = state[name]
    expected = model.state_dict()
    stem = _stem_key(expected)
    if stem and stem in state and state[stem].shape[1] != expected[stem].shape[1]:
        n = state[stem].shape[1]
        raise CheckpointError(
            f"{weights}: weights take {n} input channels but the config makes "
            f"{expected[stem].shape[1]} (evidence of bands {','.join(model.config.bands)})"
        )
    check_state_dict(expected, state, source=str(weights))
    model.load_state_dict(state, strict=True)


def _stem_key(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first convolution of the encoder (its input-channel axis = bands)."""
    for name, t in state.items():
        if name.startswith("encoder.") and t.ndim == 4:
            return name
    return None


def sha256_state(model) -> str:
    """Hex sha256 over names, shapes and bytes of a model's tensors (provenance of an
    in-memory model that was never saved)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()
