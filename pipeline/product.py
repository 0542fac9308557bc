"""Which product a scene comes from: the name its outputs carry, and when it was acquired.

Outputs are named ``<scene>_<target>.*``. Naming a scene after its file or folder breaks
where providers use the same name in every product: every Sentinel-2 granule keeps its
band files in a folder called ``IMG_DATA``, so two granules written into one output
folder would claim the same files. The product itself says who it is (the tile id and
sensing time in its band file names or metadata tags, a STAC item's id), so the name
comes from there. The first rule that gives a name wins:

1. A STAC item given as the scene: the item's id (and its datetime as the acquisition).
2. One file whose stem already carries a date (``..._20170216``): its stem. A provider or
   an analyst named that file after the acquisition; renaming it would only surprise.
3. The sensor catalog's ``product_name`` pattern (``catalogs/sensors/*.yaml``), searched in
   the band file names, then the folders above them, then the file's metadata tags: the
   matched text, e.g. ``T33UUU_20170216T102101`` for a Sentinel-2 granule.
4. The file stem or folder name, with the sensing date from the metadata appended when
   the name lacks one (``scene`` -> ``scene_20170216``).

Two different products can still end with the same name (rule 4, or a reprocessed
granule under rule 3); :func:`pipeline.extract` then keeps them apart with a short hash
of the source paths, so a second product never takes over the first one's outputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pipeline.errors import SceneError

#: An eight-digit date field (YYYYMMDD) in a name, as providers write acquisition dates.
_DATE_IN_NAME = re.compile(r"(?<!\d)(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
#: Folders above band files searched for a product name (granule, then product folder).
_PARENT_LEVELS = 3


@dataclass(frozen=True)
class ProductIdentity:
    """The output name of a scene, where it came from, and the acquisition date if known."""

    name: str
    named_by: str
    acquired: date | None = None


def _safe(name: str) -> str:
    """A name usable in file names on every platform (no separators, no odd characters)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "scene"


def is_stac_item(path: str | Path) -> bool:
    """Whether ``path`` is a JSON file holding a STAC Item (cheap: parses it)."""
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    try:
        payload = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and payload.get("type") == "Feature" and "assets" in payload


def stac_identity(path: str | Path) -> ProductIdentity:
    """The name of a STAC item given as the scene: its id, and its datetime (rule 1).

    The scene opener reads the item's assets and their ``raster:bands`` radiometry
    (:mod:`pipeline.scene.sources`); only the item's identity is needed here.
    """
    import pystac

    p = Path(path)
    try:
        item = pystac.Item.from_file(str(p))
    except Exception as exc:  # pystac raises several types for malformed items
        raise SceneError(f"cannot read STAC item {p}: {exc}") from exc
    when = item.datetime or item.common_metadata.start_datetime
    return ProductIdentity(_safe(item.id), f"STAC item {p.name}", when.date() if when else None)


def _date_in(text: str) -> date | None:
    m = _DATE_IN_NAME.search(text)
    if not m:
        return None
    digits = m.group(0)
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def identify_product(
    source: str | list[str],
    *,
    pattern: str | None,
    tags: dict[str, str] | None = None,
    sensed: date | None = None,
) -> ProductIdentity:
    """The output name of ``source`` (rules 2-4 of the module docstring).

    ``pattern`` is the sensor catalog's ``product_name`` regex (None when the sensor has
    none), ``tags`` the metadata tags of a single-file source, ``sensed`` the sensing date
    the scene opener found.
    """
    paths = [Path(source)] if isinstance(source, str) else [Path(s) for s in source]
    first = paths[0]
    single_file = isinstance(source, str) and not first.is_dir()
    base = (
        first.stem.removesuffix(".zarr")
        if single_file
        else (first.name if isinstance(source, str) else first.parent.name or first.stem)
    )
    if single_file and _date_in(first.stem):
        return ProductIdentity(_safe(base), "file name", _date_in(first.stem))
    if pattern:
        regex = re.compile(pattern)
        files = (
            sorted(q for q in first.iterdir() if q.is_file())
            if isinstance(source, str) and first.is_dir()
            else paths
        )
        candidates = [(f.name, "band file names") for f in files]
        parents = list(files[0].resolve().parents)[:_PARENT_LEVELS] if files else []
        candidates += [(p.name, f"folder {p.name}") for p in parents]
        candidates += [(str(v), f"metadata tag {k}") for k, v in sorted((tags or {}).items())]
        for text, where in candidates:
            m = regex.search(text)
            if m:
                return ProductIdentity(_safe(m.group(0)), where, _date_in(m.group(0)) or sensed)
    if sensed is not None and _date_in(base) is None:
        return ProductIdentity(
            _safe(f"{base}_{sensed:%Y%m%d}"), "file name and sensing date", sensed
        )
    return ProductIdentity(_safe(base), "file name" if single_file else "folder name", sensed)
