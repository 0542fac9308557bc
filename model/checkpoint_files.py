"""A SPEX checkpoint folder's layout and the checks every weights loader shares.

Torch-free on purpose, and below every module that loads weights: the checkpoint I/O
(:mod:`model.checkpoint`), the SAM decoder's ``.pth`` loader (:mod:`model.sam_decoder`)
and the model registry (:mod:`model.registry`) all need :class:`CheckpointError` and
the tensor-name/shape check, and the registry must resolve ``--model default`` to the
spectral index without importing torch. Tensors are only annotated here, never built.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import SpexConfig
from pipeline.errors import SpexInputError

if TYPE_CHECKING:
    import torch

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


def read_training(folder: str | Path) -> dict[str, Any] | None:
    """The ``training.json`` record of a checkpoint folder, or None when absent."""
    path = Path(folder) / TRAINING
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: malformed training record ({exc})") from exc


def read_config(folder: str | Path) -> SpexConfig:
    """The :class:`model.config.SpexConfig` stored in a checkpoint folder."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a SPEX checkpoint (no {CONFIG})")
    try:
        data = json.loads(path.read_text())
        return SpexConfig.from_dict(data["spex"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed SPEX config ({exc})") from exc


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (weights provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
