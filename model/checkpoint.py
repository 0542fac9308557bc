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

from pipeline.errors import SpexInputError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer"
# Optional: how the weights were made (e.g. the smoke-level brief training), so that
# provenance can say so next to every mask produced with them.
TRAINING = "training.json"
FORMAT_VERSION = 1


class CheckpointError(SpexInputError):
    """A checkpoint is missing, malformed, or does not fit the model or the scene."""


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    got: Mapping[str, torch.Tensor],
    *,
    source: str,
    prefix: str = "",
) -> None:
    """Raise :class:`CheckpointError` naming the first missing, unexpected or
    wrong-shaped tensor (names shown with ``prefix`` as they appear in the file)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        raise CheckpointError(
            f"{source}: missing tensor '{prefix}{missing[0]}'"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor '{prefix}{unexpected[0]}'"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    for name, tensor in expected.items():
        if tuple(got[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor '{prefix}{name}' has shape {tuple(got[name].shape)}, "
                f"the model expects {tuple(tensor.shape)}"
            )


def check_bands(required: tuple[str, ...], scene_bands: tuple[str, ...]) -> None:
    """The scene must hold every band the checkpoint requires (its other input bands are
    zero-filled and flagged when absent; extra bands go to the APG only)."""
    missing = [b for b in required if b not in scene_bands]
    if missing:
        raise CheckpointError(
            f"checkpoint requires bands {','.join(required)}, scene has "
            f"{','.join(scene_bands)}; missing {','.join(missing)}"
        )


def _dedup(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors sharing memory (tied embeddings): keep the first name
    and record the others as aliases."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t.detach().cpu().contiguous()
    return unique, aliases


def save_checkpoint(model, folder: str | Path, training: Mapping[str, Any] | None = None) -> Path:
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


def read_training(folder: str | Path) -> dict[str, Any] | None:
    """The ``training.json`` record of a checkpoint folder, or None when absent."""
    path = Path(folder) / TRAINING
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: malformed training record ({exc})") from exc


def read_config(folder: str | Path):
    """The :class:`model.config.SpexConfig` stored in a checkpoint folder."""
    from model.config import SpexConfig

    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a SPEX checkpoint (no {CONFIG})")
    try:
        data = json.loads(path.read_text())
        return SpexConfig.from_dict(data["spex"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed SPEX config ({exc})") from exc


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
    from model.spex import SpexModel
    from model.tokenizer import load_tokenizer

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


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (weights provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_state(model) -> str:
    """Hex sha256 over names, shapes and bytes of a model's tensors (provenance of an
    in-memory model that was never saved)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()
