"""`spex models`: list, show, register and promote versions in the model registry."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

models_app = typer.Typer(
    help="The model registry: versioned SPEX checkpoints and the promoted default.",
    no_args_is_help=True,
)
RootOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="Registry folder ($SPEX_MODEL_REGISTRY, else out/models)."),
]


def _registry(root: Path | None):
    from model.registry import ModelRegistry

    return ModelRegistry(root)


def _per_target(reg) -> dict[str, str]:
    """What ``--model default`` means for each target: 'index' or a checkpoint folder."""
    from pipeline.defaults import DEFAULT_MODEL
    from pipeline.targets import target_names

    return {t: str(reg.resolve(DEFAULT_MODEL, t)) for t in target_names()}


@models_app.command("list")
def list_models(registry: RootOpt = None) -> None:
    """Every version, with its weights hash and date; * marks the default."""
    reg = _registry(registry)
    default = reg.default_version()
    entries = reg.entries()
    if not entries:
        typer.echo(f"no registered model in {reg.root}; default resolves to {_per_target(reg)}")
        return
    for e in entries:
        mark = "*" if e.version == default else " "
        typer.echo(f"{mark} {e.version}  {e.weights_sha256[:12]}  {e.created}  {e.notes}")


@models_app.command("show")
def show(
    version: Annotated[str, typer.Argument(help="A version, or 'default'.")] = "default",
    registry: RootOpt = None,
) -> None:
    """The registry entry of a version as JSON (default: what 'default' resolves to)."""
    reg = _registry(registry)
    if version == "default":
        chosen = reg.default_version()
        if chosen is None:
            typer.echo(json.dumps({"default": _per_target(reg), "promoted": None}))
            return
        version = chosen
    typer.echo(json.dumps(asdict(reg.get(version)), indent=2, sort_keys=True))


@models_app.command("register")
def register(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder.")],
    notes: Annotated[str, typer.Option("--notes", help="Free text.")] = "",
    registry: RootOpt = None,
) -> None:
    """Copy a checkpoint folder into the registry as a new (not promoted) version."""
    entry = _registry(registry).register(checkpoint, notes=notes)
    typer.echo(entry.version)


@models_app.command("promote")
def promote(
    version: Annotated[str, typer.Argument(help="The version to make the default.")],
    registry: RootOpt = None,
) -> None:
    """Make VERSION the default model of the extract flows (weights re-hashed first)."""
    entry = _registry(registry).promote(version)
    typer.echo(f"default -> {entry.version}")
