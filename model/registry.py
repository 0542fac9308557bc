"""The model registry: versioned SPEX checkpoints and which one is the default.

Extraction flows ask for a model by name (``default`` or a version); retraining adds
versions and promotes one only when it does not regress. One JSON index holds the facts
an operator needs to trust a version (weights sha256, the hashes of the SPIE subsets it
was trained on, its configuration, its evaluation table, the date) so that promotion and
rollback are a matter of moving one pointer.

Layout of a registry folder::

    registry.json              {"default": "v0002-1a2b3c4d", "models": {version: entry}}
    v0001-0f1e2d3c/            a checkpoint folder (model.safetensors, config.json, tokenizer/)
    v0002-1a2b3c4d/

Default per target: a checkpoint folder may hold ``default_for.json`` (``{"targets":
[...], "basis": "...", "evidence": {...}}``), written by leave-one-scene-out training
(model/training/loso.py) from the promotion rule of :mod:`model.promotion`: the targets
for which the model beat the spectral index on held-out scenes. For any other target
``default`` means ``index``, because a model is only worth using where it does better.
A promoted version records the targets it was promoted for (``default_for`` in the
index). Without a promoted version, ``default`` falls back to the weights shipped with
the project (``model/weights/default``) for the targets they serve, else to ``index``:
a fresh clone always has a working default.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from model.checkpoint_files import WEIGHTS, CheckpointError, read_config, sha256_file
from pipeline.defaults import DEFAULT_MODEL
from pipeline.errors import CatalogError
from pipeline.locking import output_lock
from pipeline.outputs.atomic import atomic_write_text, ensure_writable_dir

INDEX_FILE = "registry.json"
SHIPPED_DEFAULT = Path(__file__).resolve().parent / "weights" / "default"
DEFAULT_FOR = "default_for.json"
#: ``--model spex``: the shipped SPEX weights for every target.
SHIPPED_NAME = "spex"
#: ``--model`` names of the spectral-index extractor: one Otsu threshold per scene (or
#: as the job's threshold mode says), or one per tile.
INDEX_NAME = "index"
INDEX_TILE_NAME = "index-tile"
DEFAULT_ROOT_ENV = "SPEX_MODEL_REGISTRY"


def default_root() -> Path:
    """The registry folder: ``$SPEX_MODEL_REGISTRY``, else ``<project>/out/models``."""
    env = os.environ.get(DEFAULT_ROOT_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "out" / "models"


@dataclass(frozen=True)
class ModelRef:
    """What a ``--model`` name resolved to: the spectral index (``kind`` 'index',
    ``threshold_mode`` 'tile' for per-tile Otsu, None for the job's own mode) or a SPEX
    checkpoint folder (``kind`` 'checkpoint', ``path``)."""

    kind: Literal["index", "checkpoint"]
    path: Path | None = None
    threshold_mode: Literal["scene", "tile"] | None = None

    @classmethod
    def index(cls, threshold_mode: Literal["scene", "tile"] | None = None) -> ModelRef:
        return cls("index", threshold_mode=threshold_mode)

    @classmethod
    def checkpoint(cls, path: str | Path) -> ModelRef:
        return cls("checkpoint", path=Path(path))

    @property
    def is_index(self) -> bool:
        return self.kind == "index"

    def __str__(self) -> str:
        """The ``--model`` value that names the same thing: 'index', 'index-tile' or the
        checkpoint folder."""
        if self.path is not None:
            return str(self.path)
        return INDEX_TILE_NAME if self.threshold_mode == "tile" else INDEX_NAME


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one version."""

    version: str
    path: str
    weights_sha256: str
    config: dict[str, Any]
    training_data: dict[str, str] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    notes: str = ""


def default_for_targets(folder: str | Path) -> tuple[str, ...] | None:
    """The targets a checkpoint folder's ``default_for.json`` lists (None: no file, so
    nothing restricts it)."""
    path = Path(folder) / DEFAULT_FOR
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return tuple(str(t) for t in data["targets"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CatalogError(f"{path}: expected {{'targets': [...]}} ({exc})") from exc


def shipped_default_targets(folder: Path = SHIPPED_DEFAULT) -> tuple[str, ...] | None:
    """The targets the shipped weights are the default for (None: every target)."""
    return default_for_targets(folder)


def write_default_for(checkpoint: str | Path, decisions: Any, command: str) -> Path:
    """Write ``default_for.json`` next to a checkpoint from per-target promotion
    decisions (:class:`model.promotion.TargetDecision`): the targets it serves, why,
    and the per-scene evidence."""
    from model.promotion import served_targets

    path = Path(checkpoint) / DEFAULT_FOR
    payload = {
        "targets": served_targets(decisions),
        "basis": "leave-one-scene-out promotion rule (model/promotion.py): "
        + "; ".join(d.reason for d in decisions.values()),
        "command": command,
        "evidence": {t: d.as_dict() for t, d in decisions.items()},
    }
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
    return path


class ModelRegistry:
    """A folder of versioned checkpoints plus the ``default`` pointer; see module doc."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    # -- reading -------------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        path = self.root / INDEX_FILE
        if not path.is_file():
            return {"default": None, "models": {}}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CatalogError(f"model registry index {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise CatalogError(f"model registry index {path} lacks a 'models' mapping")
        return data

    def entries(self) -> list[ModelEntry]:
        """Every registered version, oldest first."""
        return [ModelEntry(**e) for _, e in sorted(self._index()["models"].items())]

    def get(self, version: str) -> ModelEntry:
        models = self._index()["models"]
        if version not in models:
            known = ", ".join(sorted(models)) or "none"
            raise CatalogError(f"no model version {version!r} in {self.root}; known: {known}")
        return ModelEntry(**models[version])

    def default_version(self) -> str | None:
        return self._index().get("default")

    def default_targets(self) -> tuple[str, ...] | None:
        """The targets the promoted version serves (None: every target)."""
        targets = self._index().get("default_for")
        return None if targets is None else tuple(targets)

    def resolve(self, name: str = DEFAULT_MODEL, target: str | None = None) -> ModelRef:
        """What ``--model NAME`` means for ``target``.

        ``index`` / ``index-tile``: the spectral index (scene / per-tile Otsu); an
        existing folder: that checkpoint; ``default``: the promoted version for the
        targets it was promoted for (index for the others), else the shipped weights for
        the targets their ``default_for.json`` lists, else the index; ``spex``: the
        shipped weights for any target, whether or not the promotion rule made them a
        default; anything else: a registered version (CatalogError when there is none).
        """
        if name == INDEX_NAME:
            return ModelRef.index()
        if name == INDEX_TILE_NAME:
            return ModelRef.index("tile")
        if name != DEFAULT_MODEL and Path(name).exists():
            return ModelRef.checkpoint(name)
        if name == SHIPPED_NAME:
            if not (SHIPPED_DEFAULT / WEIGHTS).is_file():
                raise CatalogError(f"no SPEX weights are shipped in {SHIPPED_DEFAULT}")
            return ModelRef.checkpoint(SHIPPED_DEFAULT)
        if name != DEFAULT_MODEL:
            return ModelRef.checkpoint(self.get(name).path)
        version = self.default_version()
        if version is not None:
            serves = self.default_targets()
            if target is None or serves is None or target in serves:
                return ModelRef.checkpoint(self.get(version).path)
            return ModelRef.index()
        if (SHIPPED_DEFAULT / WEIGHTS).is_file():
            serves = shipped_default_targets()
            if target is None or serves is None or target in serves:
                return ModelRef.checkpoint(SHIPPED_DEFAULT)
        return ModelRef.index()

    # -- writing -------------------------------------------------------------------

    def register(
        self,
        checkpoint: str | Path,
        *,
        training_data: dict[str, str] | None = None,
        evaluation: dict[str, Any] | None = None,
        notes: str = "",
    ) -> ModelEntry:
        """Copy a checkpoint folder into the registry as a new version (not promoted)."""
        source = Path(checkpoint)
        if not (source / WEIGHTS).is_file():
            raise CheckpointError(f"{source} is not a checkpoint folder (no {WEIGHTS})")
        config = read_config(source)
        sha = sha256_file(source / WEIGHTS)
        ensure_writable_dir(self.root)
        with output_lock(self.root, "registry"):
            index = self._index()
            number = len(index["models"]) + 1
            version = f"v{number:04d}-{sha[:8]}"
            target = self.root / version
            staging = self.root / f".{version}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging)
            if sha256_file(staging / WEIGHTS) != sha:
                shutil.rmtree(staging, ignore_errors=True)
                raise CheckpointError(f"weights of {source} changed while being registered")
            staging.rename(target)
            entry = ModelEntry(
                version=version,
                path=str(target.resolve()),
                weights_sha256=sha,
                config=config.to_dict(),
                training_data=dict(training_data or {}),
                evaluation=dict(evaluation or {}),
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                notes=notes,
            )
            index["models"][version] = asdict(entry)
            self._write(index)
        return entry

    def promote(self, version: str, targets: Sequence[str] | None = None) -> ModelEntry:
        """Make ``version`` the default for ``targets`` (None: those its
        ``default_for.json`` lists, or every target without one); its weights are
        re-hashed first."""
        entry = self.get(version)
        if targets is None:
            targets = default_for_targets(entry.path)
        actual = sha256_file(Path(entry.path) / WEIGHTS)
        if actual != entry.weights_sha256:
            raise CheckpointError(
                f"model {version} at {entry.path} has weights sha256 {actual[:12]}..., the "
                f"registry recorded {entry.weights_sha256[:12]}...: refusing to promote"
            )
        with output_lock(self.root, "registry"):
            index = self._index()
            index["default"] = version
            index["default_for"] = None if targets is None else sorted(targets)
            self._write(index)
        return entry

    def _write(self, index: dict[str, Any]) -> None:
        atomic_write_text(self.root / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True))
