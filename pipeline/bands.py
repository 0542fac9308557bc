"""The canonical band vocabulary, as ``catalogs/bands.yaml`` defines it.

Band codes (B, G, R, N, S1, S2, ... in the Awesome Spectral Indices convention) are the
language in which sensors, indices, training recipes and model configurations name
bands. They are defined once, in the catalog, so a sensor catalog cannot use a code the
indices do not know and two parts of the code cannot describe a band differently. Light
on purpose (the catalog reader only): the command line reads it while starting.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from pipeline.catalog_io import check_keys, read_catalog_yaml, required

__all__ = ["BandCode", "band_codes", "band_name", "band_short", "load_band_codes"]


@dataclass(frozen=True)
class BandCode:
    """One canonical code: ``name`` for messages and descriptions ('near infrared'),
    ``short`` with its approximate centre wavelength ('NIR ~0.84 um')."""

    code: str
    name: str
    short: str


@cache
def load_band_codes() -> dict[str, BandCode]:
    """Read and validate ``catalogs/bands.yaml`` once, in catalog order."""
    resource = files("catalogs").joinpath("bands.yaml")
    raw = read_catalog_yaml(resource, "band")
    codes: dict[str, BandCode] = {}
    for code, entry in raw.items():
        where = f"{resource} band {code}"
        check_keys(entry, where, allowed={"name", "short"}, needed={"name", "short"})
        codes[str(code)] = BandCode(
            str(code), str(required(entry, "name", where)), str(entry["short"])
        )
    return codes


def band_codes() -> list[str]:
    """Every canonical code, in catalog order."""
    return list(load_band_codes())


def band_name(code: str) -> str:
    """What messages call ``code`` ('near infrared'); an unknown code stands for itself."""
    entry = load_band_codes().get(code)
    return entry.name if entry else code


def band_short(code: str) -> str:
    """``code``'s compact description ('NIR ~0.84 um'), or 'band CODE' when unknown."""
    entry = load_band_codes().get(code)
    return entry.short if entry else f"band {code}"
