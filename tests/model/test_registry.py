"""The model registry: versions, promotion, tamper refusal, and what 'default' means."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, save_checkpoint
from model.config import tiny
from model.registry import SHIPPED_DEFAULT, WEIGHTS, ModelRef, ModelRegistry
from model.spex import SpexModel
from pipeline.errors import CatalogError

SPEX = Path(sys.executable).with_name("spex")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(SpexModel(tiny()), folder)
    return folder


def test_register_promote_resolve(checkpoint: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    before = reg.resolve("default")
    shipped = (SHIPPED_DEFAULT / WEIGHTS).is_file()
    assert before == (ModelRef.checkpoint(SHIPPED_DEFAULT) if shipped else ModelRef.index())
    first = reg.register(checkpoint, training_data={"s2-l1c-berlin": "abc"}, notes="first")
    second = reg.register(checkpoint, evaluation={"water": {"iou": 0.5}})
    assert first.version.startswith("v0001-") and second.version.startswith("v0002-")
    assert first.weights_sha256 == second.weights_sha256
    assert reg.resolve("default") == before  # registering does not promote
    reg.promote(second.version)
    assert reg.default_version() == second.version
    assert reg.resolve("default") == ModelRef.checkpoint(second.path)
    assert reg.resolve(first.version) == ModelRef.checkpoint(first.path)
    assert [e.version for e in reg.entries()] == [first.version, second.version]
    assert reg.get(first.version).training_data == {"s2-l1c-berlin": "abc"}

    # Promoted for some targets only (the promotion rule's verdict): the index serves
    # the others, whatever the shipped weights would.
    reg.promote(first.version, targets=["water"])
    assert reg.default_targets() == ("water",)
    assert reg.resolve("default", "water") == ModelRef.checkpoint(first.path)
    assert reg.resolve("default", "building") == ModelRef.index()
    # A checkpoint that carries default_for.json is promoted for the targets it lists.
    from model.registry import DEFAULT_FOR

    third_dir = tmp_path / "with-default-for"
    save_checkpoint(SpexModel(tiny()), third_dir)
    (third_dir / DEFAULT_FOR).write_text(json.dumps({"targets": ["vegetation"]}))
    third = reg.register(third_dir)
    reg.promote(third.version)
    assert reg.default_targets() == ("vegetation",)
    assert reg.resolve("default", "vegetation") == ModelRef.checkpoint(third.path)
    assert reg.resolve("default", "water") == ModelRef.index()


def test_shipped_default_serves_only_its_listed_targets(tmp_path: Path) -> None:
    """'default' without a promoted version: the shipped weights for the targets their
    default_for.json lists, the spectral index for the others; the real shipped folder
    names only targets of the catalog."""
    from model.registry import DEFAULT_FOR, shipped_default_targets
    from pipeline.targets import target_names

    reg = ModelRegistry(tmp_path / "registry")
    if (SHIPPED_DEFAULT / WEIGHTS).is_file():
        serves = shipped_default_targets()
        assert serves is None or set(serves) <= set(target_names())
        for target in target_names():
            served = serves is None or target in serves
            want = ModelRef.checkpoint(SHIPPED_DEFAULT) if served else ModelRef.index()
            assert reg.resolve("default", target) == want

    folder = tmp_path / "shipped"
    folder.mkdir()
    assert shipped_default_targets(folder) is None  # no file: every target
    (folder / DEFAULT_FOR).write_text(json.dumps({"targets": ["water"], "basis": "val"}))
    assert shipped_default_targets(folder) == ("water",)
    (folder / DEFAULT_FOR).write_text("{not json")
    with pytest.raises(CatalogError, match=DEFAULT_FOR):
        shipped_default_targets(folder)


def test_promotion_refuses_tampered_weights(checkpoint: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    entry = reg.register(checkpoint)
    weights = Path(entry.path) / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(CheckpointError, match="refusing to promote"):
        reg.promote(entry.version)
    assert reg.default_version() is None


def test_unknown_version_and_bad_checkpoint(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    with pytest.raises(CatalogError, match="no model version 'v9'"):
        reg.get("v9")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        reg.register(tmp_path)


def test_cli_register_list_promote(checkpoint: Path, tmp_path: Path) -> None:
    root = str(tmp_path / "registry")

    def spex(*args: str) -> str:
        run = subprocess.run(
            [str(SPEX), "models", *args, "--registry", root], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    version = spex("register", str(checkpoint), "--notes", "cli").strip()
    spex("promote", version)
    assert spex("list").startswith(f"* {version}")
    assert json.loads(spex("show"))["version"] == version
