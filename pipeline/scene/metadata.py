"""Product metadata that says what a file is: platform, level, baseline, sensing date,
per-band scale/offset, and the Landsat MTL calibration.

Sources, in the order a provider would expect them to win: STAC item properties and
``raster:bands``; GDAL tags (``PRODUCT_TYPE``, ``PROCESSING_BASELINE``,
``SPACECRAFT_NAME`` ...) and band scale/offset; Landsat ``*_MTL.txt`` / ``*_MTL.json``
next to the data; Sentinel-2 SAFE names (``_N0400_``) and ``MTD_MSIL*.xml``; file names
(sensing dates such as ``_20170216T102101`` or ``_20200831``). Everything found is kept
with where it came from, because the provenance of every output names it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.errors import SceneError

_MTL_SUFFIXES = ("_MTL.txt", "_MTL.json")


@dataclass
class ProductFacts:
    """What the metadata of one source states (each value with its source)."""

    platform: tuple[str, str] | None = None  # (value, source)
    levels: list[tuple[str, str]] = field(default_factory=list)  # stated level values
    baseline: tuple[str, str] | None = None
    sensed: tuple[date, str] | None = None
    mtl: dict[str, str] | None = None
    mtl_path: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for the provenance."""
        return {
            "platform": list(self.platform) if self.platform else None,
            "levels": [list(v) for v in self.levels],
            "baseline": list(self.baseline) if self.baseline else None,
            "mtl": self.mtl_path,
        }


def _date_in(text: str) -> date | None:
    m = re.match(r"(\d{4})-(\d{2})-(\d{2})", text.strip())
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def sensing_date_from_names(paths: list[str]) -> tuple[date, str] | None:
    """A sensing date in a file name: Sentinel-2 style (_20170216T102101) first, then a
    plain _YYYYMMDD field as NAIP (m_4709963_se_14_1_20200831) and Landsat ids carry it."""
    for pattern in (r"_(\d{4})(\d{2})(\d{2})T\d{6}", r"_(\d{4})(\d{2})(\d{2})(?=[_.]|$)"):
        for p in paths:
            m = re.search(pattern, Path(p).name)
            if m:
                try:
                    sensed = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
                except ValueError:  # eight digits that are not a date
                    continue
                return sensed, f"file name {Path(p).name}"
    return None


def facts_from_tags(tags: dict[str, str], facts: ProductFacts) -> None:
    """GDAL dataset tags (as the SAFE driver and our own samples write them)."""
    for key in ("SPACECRAFT_NAME", "SPACECRAFT_ID", "SPACECRAFT", "PLATFORM"):
        if tags.get(key) and facts.platform is None:
            facts.platform = (tags[key], f"tag {key}")
    for key in ("PRODUCT_TYPE", "PROCESSING_LEVEL", "product_type", "processing_level"):
        if tags.get(key):
            facts.levels.append((tags[key], f"tag {key}"))
    for key in ("PROCESSING_BASELINE", "processing_baseline"):
        if tags.get(key) and facts.baseline is None:
            facts.baseline = (tags[key], f"tag {key}")
    for key in ("SENSING_DATE", "SENSING_TIME", "DATATAKE_SENSING_START", "DATE_ACQUIRED"):
        sensed = _date_in(tags.get(key) or "")
        if sensed and facts.sensed is None:
            facts.sensed = (sensed, f"tag {key}")


def facts_from_names(paths: list[str], facts: ProductFacts) -> None:
    """SAFE names (baseline N0400, level MSIL2A), MTD xml files, sensing dates."""
    if facts.baseline is None:
        for p in paths:
            m = re.search(r"_N(\d{2})(\d{2})_", p)
            if m:
                facts.baseline = (f"{m.group(1)}.{m.group(2)}", f"SAFE name in {p}")
                break
    if facts.baseline is None:
        facts.baseline = _baseline_from_mtd(paths)
    if facts.sensed is None:
        facts.sensed = sensing_date_from_names(paths)


def _baseline_from_mtd(paths: list[str]) -> tuple[str, str] | None:
    for p in paths:
        for parent in list(Path(p).resolve().parents)[:5]:
            for mtd in ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml"):
                f = parent / mtd
                if f.is_file():
                    text = f.read_text(errors="ignore")
                    m = re.search(r"<PROCESSING_BASELINE>\s*([\d.]+)\s*<", text)
                    if m:
                        return m.group(1), str(f)
    return None


# ------------------------------------------------------------------ Landsat MTL


def find_mtl(paths: list[str]) -> Path | None:
    """The MTL file of a Landsat product: ``<product id>_MTL.txt|json`` beside the data,
    whose product id starts the data's file name, or the one MTL of a band-file folder."""
    folders = {Path(p).parent for p in paths}
    for folder in sorted(folders):
        mtls = sorted(q for q in folder.iterdir() if q.is_file() and q.name.endswith(_MTL_SUFFIXES))
        for mtl in mtls:
            product = mtl.name.rsplit("_MTL", 1)[0]
            if any(Path(p).name.startswith(product) for p in paths):
                return mtl
        if len(mtls) == 1 and len(paths) > 1:
            return mtls[0]
    return None


def parse_mtl(path: Path) -> dict[str, str]:
    """Flat KEY -> value of a Landsat MTL file (ODL text or JSON)."""
    text = path.read_text(errors="ignore")
    out: dict[str, str] = {}
    if path.suffix.lower() == ".json":
        try:
            tree = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SceneError(f"{path}: not valid JSON ({exc})") from exc

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    if isinstance(v, dict | list):
                        walk(v)
                    else:
                        out[str(k)] = str(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(tree)
        return out
    for line in text.splitlines():
        m = re.match(r"\s*([A-Z0-9_]+)\s*=\s*(.+?)\s*$", line)
        if m and m.group(1) not in ("GROUP", "END_GROUP"):
            out[m.group(1)] = m.group(2).strip('"')
    return out


def facts_from_mtl(paths: list[str], facts: ProductFacts) -> None:
    mtl_path = find_mtl(paths)
    if mtl_path is None:
        return
    mtl = parse_mtl(mtl_path)
    facts.mtl, facts.mtl_path = mtl, str(mtl_path)
    where = f"MTL {mtl_path.name}"
    if mtl.get("SPACECRAFT_ID") and facts.platform is None:
        facts.platform = (mtl["SPACECRAFT_ID"], where)
    if mtl.get("PROCESSING_LEVEL"):
        facts.levels.append((mtl["PROCESSING_LEVEL"], where))
    sensed = _date_in(mtl.get("DATE_ACQUIRED", ""))
    if sensed and facts.sensed is None:
        facts.sensed = (sensed, where)


# ------------------------------------------------------------------ STAC items


def facts_from_stac(properties: dict[str, Any], where: str, facts: ProductFacts) -> None:
    """Item properties: platform, levels, Sentinel-2 baseline, datetime."""
    if properties.get("platform"):
        facts.platform = (str(properties["platform"]), f"STAC platform in {where}")
    for key in ("s2:product_type", "processing:level", "landsat:correction"):
        if properties.get(key):
            facts.levels.append((str(properties[key]), f"STAC {key} in {where}"))
    for key in ("s2:processing_baseline", "processing:baseline"):
        if properties.get(key):
            facts.baseline = (str(properties[key]), f"STAC {key} in {where}")
            break
    sensed = _date_in(str(properties.get("datetime") or properties.get("start_datetime") or ""))
    if sensed:
        facts.sensed = (sensed, f"STAC datetime in {where}")
