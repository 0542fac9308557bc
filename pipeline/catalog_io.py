"""Reading catalog YAML files: one safe path for every catalog the project has.

Sensors, indices, targets, data sets, regions and training configurations are data that
users edit by hand, so each is read the same way: the safe loader only (no Python
tags, no object construction), a mapping at the top level, and a :class:`CatalogError`
naming the file for anything else. The safe loader is libyaml's (``CSafeLoader``, the
same safe schema in C) where PyYAML was built with it: the pure-Python one took 0.2 s of
every job for the sensor and encoding catalogs; the tests load every catalog both ways.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from importlib.abc import Traversable
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import CatalogError

#: libyaml's safe loader when PyYAML has it, else the pure-Python one (same schema).
SAFE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def catalog_dir(kind: str) -> Path:
    """The folder of one kind of catalog entries (``sensors``, ``encodings``, ``datasets``)."""
    return Path(str(files("catalogs").joinpath(kind)))


def catalog_names(kind: str) -> list[str]:
    """Names of the ``kind`` catalog entries (their file names), sorted."""
    return sorted(p.stem for p in catalog_dir(kind).glob("*.yaml"))


def read_catalog_yaml(path: Path | Traversable, kind: str) -> dict[str, Any]:
    """The top-level mapping of the ``kind`` catalog file at ``path`` (e.g. 'sensor')."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{where}: cannot read {kind} catalog ({exc})") from exc
    try:
        raw = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict) or not raw:
        raise CatalogError(f"{where}: a {kind} catalog must be a non-empty mapping of keys")
    return raw


def check_keys(
    raw: Any,
    where: str,
    *,
    allowed: Collection[str],
    needed: Collection[str] = (),
    hint: str = "",
) -> Mapping[str, Any]:
    """``raw`` as a mapping, after checking that every key is ``allowed`` and every
    ``needed`` key is there: the one key check of every catalog (sensors, encodings,
    bands, targets, data sets, regions, training recipes), so a typo fails the same way,
    naming the file or entry (``where``), the key and what is allowed (``hint`` added)."""
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in set(raw) - set(allowed))
    if unknown:
        raise CatalogError(
            f"{where}: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}{hint}"
        )
    missing = sorted(k for k in needed if k not in raw)
    if missing:
        raise CatalogError(f"{where}: missing required key(s) {', '.join(map(repr, missing))}")
    return raw


def required(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    """``mapping[key]``, or a CatalogError naming the file and the missing key."""
    if mapping.get(key) is None:
        raise CatalogError(f"{where}: missing required key {key!r}")
    return mapping[key]


def number(value: Any, key: str, where: str) -> float | None:
    """A number (or None), or a CatalogError naming the key: YAML booleans are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"{where}: key {key!r} must be a number, got {value!r}")
    return float(value)


def check_entry(raw: dict[str, Any], path: Path, allowed: set[str], hint: str = "") -> str:
    """The entry's ``name`` after checking that it equals the file name and that every
    key is known (``hint`` is added to the unknown-key message)."""
    where = str(path)
    check_keys(raw, where, allowed=allowed, hint=hint)
    name = str(required(raw, "name", where))
    if name != path.stem:
        raise CatalogError(f"{where}: key 'name' is {name!r} but must equal the file name")
    return name
