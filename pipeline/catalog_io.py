"""Reading catalog YAML files: one safe path for every catalog the project has.

Sensors, indices, targets, data sets, regions and training configurations are data that
users edit by hand, so each is read the same way: ``yaml.safe_load`` only (no Python
tags, no object construction), a mapping at the top level, and a :class:`CatalogError`
naming the file for anything else.
"""

from __future__ import annotations

from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import CatalogError


def read_catalog_yaml(path: Path | Traversable, kind: str) -> dict[str, Any]:
    """The top-level mapping of the ``kind`` catalog file at ``path`` (e.g. 'sensor')."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{where}: cannot read {kind} catalog ({exc})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict) or not raw:
        raise CatalogError(f"{where}: a {kind} catalog must be a non-empty mapping of keys")
    return raw
